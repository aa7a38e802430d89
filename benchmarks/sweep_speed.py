"""Sweep vs one-by-one VLMEvalKit inference, and vision cost vs its floor.  Prints figures.

Models (CPU, fp32):
* ``concat5_standin`` (tests/standins/concat5.py): five channel-concatenated towers with
  Eagle-X5-like vision-FLOP shares; its full 32-subset lattice.
* ``encred_tiny`` (the CPU demo model, three towers, 8 subsets) when its trained checkpoint is
  installed (skipped otherwise).

Baseline: VLMEvalKit's own ``infer_data_job`` once per variant, **in this one process** --
so the ~14 s ``import vlmeval`` is paid once, not 32 times as separate ``python run.py``
invocations would pay it; the baseline is therefore optimistic for VLMEvalKit.  It does
build the model once per variant, as run.py does.  Sweep time includes loading the model once.

Vision cost: FLOPs of the encoder calls actually made (FlopCounterMode, per encoder, per
image) relative to the floor "each encoder once per image"; one-by-one runs pay each
encoder once per variant that keeps it.

Usage: python benchmarks/sweep_speed.py [--samples 8] [--models concat5_standin encred_tiny]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--models", nargs="+", default=["concat5_standin", "encred_tiny"])
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="encred_bench_"))
    from conftest import write_mcq_tsv

    lmu = tmp / "LMUData"
    lmu.mkdir()
    ds = "EncredBench_MCQ"
    write_mcq_tsv(lmu / f"{ds}.tsv", n=args.samples)
    os.environ.update(LMUData=str(lmu), PRED_FORMAT="xlsx", HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    from standins import concat5

    concat5.register()
    import vlmeval.config  # noqa: F401
    from vlmeval.dataset import build_dataset
    from vlmeval.inference import infer_data_job

    from vlmeval_encred.registry import get_base
    from vlmeval_encred.sweep.engine import run_sweep
    from vlmeval_encred.sweep.profile import encoder_flops, synthetic_messages
    from vlmeval_encred.sweep.selection import select_entries

    print(f"import vlmeval (paid once here; each separate run.py process pays it again): "
          f"{time.perf_counter() - t0:.1f} s")
    for name in args.models:
        base = get_base(name)
        entries = select_entries(base, "all")
        try:
            enc = encoder_flops(base, synthetic_messages(1, str(tmp)))
        except Exception as exc:  # e.g. demo checkpoint not trained/installed yet
            print(f"\n{name}: skipped ({type(exc).__name__}: {exc})")
            continue
        work = tmp / f"sweep_{name}"
        t = time.perf_counter()
        rep = run_sweep(base, entries, [ds], str(work), progress=False).datasets[0]
        sweep_s = time.perf_counter() - t
        ref = tmp / f"ref_{name}"
        t = time.perf_counter()
        for e in entries:
            (ref / e.name).mkdir(parents=True, exist_ok=True)
            infer_data_job(e.name, work_dir=str(ref / e.name), model_name=e.name, dataset=build_dataset(ds))
        ref_s = time.perf_counter() - t
        floor = sum(enc.values()) * args.samples
        sweep_vision = sum(enc[x] * n for x, n in rep.encoder_calls.items())
        ref_vision = sum(enc[x] for e in entries for x in e.kept) * args.samples
        shares = ", ".join(f"{x} {v / sum(enc.values()):.0%}" for x, v in enc.items())
        print(f"\n{name}: {len(base.encoders)} encoders, {len(entries)} variants, {args.samples} samples "
              f"(vision FLOP shares: {shares})")
        print(f"  sweep            {sweep_s:8.1f} s  ({rep.decode_calls} batched generate calls)")
        print(f"  one by one       {ref_s:8.1f} s  ({len(entries)} x infer_data_job, one process)")
        print(f"  speed-up         {ref_s / sweep_s:8.1f} x")
        print(f"  vision FLOPs     sweep / floor = {sweep_vision / floor:.2f}, "
              f"one-by-one / floor = {ref_vision / floor:.2f}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
