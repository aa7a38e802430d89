"""Shared-prefix decoding (sweep.decoding.greedy_subsets) vs one ``generate`` over all subsets.  Prints figures.

Model: the five-encoder stand-in (tests/standins/concat5.py; 30 template tokens before the
image, 32 subsets, fp32, CPU).  Per sample, both decoding paths of its SweepSupport run on the
same fused features, alternately, ``--repeats`` times; the minimum time of each is kept (robust
to other load on a shared machine).  Also: answers equal or not, prompt positions prefilled.
A CPU figure of a tiny model: it says nothing about a GPU (see `encred profile --plan`).

Usage: python benchmarks/sweep_decoding.py [--samples 4] [--repeats 5]
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    from PIL import Image

    from standins import concat5

    concat5.register()
    from vlmeval_encred.sweep.decoding import collect
    from vlmeval_encred.sweep.protocol import support_for

    wrapper = concat5.Concat5Standin()
    support = support_for(wrapper)
    names = list(concat5.TOWERS)
    subsets = [c for k in range(len(names) + 1) for c in itertools.combinations(names, k)]
    tmp = tempfile.mkdtemp(prefix="encred_dec_")
    best = {True: 0.0, False: 0.0}
    same = total = 0
    with collect() as stats:
        for i in range(args.samples):
            path = os.path.join(tmp, f"{i}.png")
            Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
            msg = [{"type": "image", "value": path}, {"type": "text", "value": f"Question {i}: A. red B. blue?"}]
            inputs = support.prepare(wrapper, msg, None)
            feats = support.encode(wrapper, inputs, names)
            per = [{n: None if n in s else feats[n] for n in names} for s in subsets]
            times = {True: [], False: []}
            answers = {}
            for _ in range(args.repeats):
                for shared in (True, False):
                    support.shared_decoding = shared
                    t = time.perf_counter()
                    answers[shared] = support.fuse_and_generate(wrapper, inputs, per, "zero")
                    times[shared].append(time.perf_counter() - t)
            support.shared_decoding = True
            for k in best:
                best[k] += min(times[k])
            same += sum(a == b for a, b in zip(answers[True], answers[False]))
            total += len(subsets)
    print(f"concat5_standin, {len(subsets)} subsets, {args.samples} samples, min of {args.repeats} alternating runs")
    print(f"  greedy_subsets (shared prefix, finished rows dropped)  {1000 * best[True] / args.samples:8.1f} ms/sample")
    print(f"  one generate over all subsets                          {1000 * best[False] / args.samples:8.1f} ms/sample")
    print(f"  ratio                                                  {best[False] / best[True]:8.2f} x")
    print(f"  answers equal: {same}/{total}; prompt positions prefilled {stats.prefilled_tokens} of "
          f"{stats.prompt_tokens} ({stats.prefix_runs} prefix runs); rows dropped early {stats.rows_dropped_early}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
