"""One process versus N (torchrun, samples split) for `encred sweep` on the demo model.  Prints figures.

**CPU figures here do not predict GPU scaling.**  On the CPU the processes share the machine's
cores (and here other jobs' too), the demo model is tiny, so interpreter start-up and imports
(~10 s per process) weigh as much as the sweep itself.  On GPUs each rank has a device of its
own and the samples' work (towers, prefill, decoding) dominates; the ranks share nothing but the
end-of-dataset barrier, so expect close to N-fold minus the slowest rank's imbalance and model
loading -- measure it there.

Each repetition runs both commands, alternating which goes first (so drift in the machine's load
hits both alike), into fresh work dirs; the minimum over the repetitions is reported, for
* ``wall``: the whole command, start-up and imports included (what a user waits for), and
* ``sweep``: the sweep's own seconds per dataset as it prints them (rank 0's, which include
  waiting at the barrier for the other ranks: the parallel section's wall time), summed.

Usage: python benchmarks/sweep_parallel.py [--samples 40] [--repeats 3] [--nproc 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ["EncredDemo_General", "EncredDemo_OCR", "EncredDemo_Vision"]


def run(nproc: int, lmu: Path, work: Path, threads: int) -> tuple[float, float]:
    env = dict(os.environ, LMUData=str(lmu), HF_HUB_OFFLINE="1", PRED_FORMAT="tsv", OMP_NUM_THREADS=str(threads),
               TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "vlmeval_encred.cli", "sweep", "--model", "encred_tiny", "--data", *DATASETS,
           "--work-dir", str(work), "--no-progress"] + (["--gpus", str(nproc)] if nproc > 1 else [])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    secs = [float(m) for m in re.findall(r"; ([0-9.]+) s(?: \(|$)", proc.stdout, flags=re.M)]
    if len(secs) != len(DATASETS):
        raise SystemExit(f"could not read the per-dataset seconds from:\n{proc.stdout}")
    return wall, sum(secs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=40, help="demo samples per category (default 40)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS per process (default 1)")
    args = ap.parse_args()

    from vlmeval_encred.demo import data

    tmp = Path(tempfile.mkdtemp(prefix="encred-bench-parallel-"))
    try:
        lmu = tmp / "LMUData"
        written = data.write_datasets(lmu, samples_per_category=args.samples)
        n = sum(w.n for w in written)
        times: dict[int, list[tuple[float, float]]] = {1: [], args.nproc: []}
        for r in range(args.repeats):
            order = [1, args.nproc] if r % 2 == 0 else [args.nproc, 1]
            for k in order:
                work = tmp / f"w{r}_{k}"
                times[k].append(run(k, lmu, work, args.threads))
                shutil.rmtree(work, ignore_errors=True)
                print(f"  repetition {r + 1}, {k} process(es): wall {times[k][-1][0]:.1f} s, "
                      f"sweep {times[k][-1][1]:.1f} s", flush=True)
        w1, s1 = min(t[0] for t in times[1]), min(t[1] for t in times[1])
        wn, sn = min(t[0] for t in times[args.nproc]), min(t[1] for t in times[args.nproc])
        print(f"\nencred_tiny, 8 variants, {', '.join(DATASETS)} ({n} samples), OMP_NUM_THREADS={args.threads}, "
              f"{os.cpu_count()} CPUs, min of {args.repeats}:")
        print(f"| processes | wall s | sweep s |\n|---|---|---|\n| 1 | {w1:.1f} | {s1:.1f} |\n"
              f"| {args.nproc} | {wn:.1f} | {sn:.1f} |")
        print(f"speed-up with {args.nproc} processes: wall {w1 / wn:.2f}x, sweep {s1 / sn:.2f}x")
        print("CPU figures: processes share the cores and start-up dominates; they do not predict GPU scaling.")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
