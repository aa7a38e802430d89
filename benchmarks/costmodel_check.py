"""The cost model's FLOP formulas against FlopCounterMode on the real classes (meta device).  Prints figures.

For every tower and language model of vlmeval_encred/sweep/costdata.yaml that a transformers or
timm class here can build (see vlmeval_encred/sweep/costcheck.py): the formula's FLOPs, the
counted FLOPs and their ratio.  No weights, no memory: the models live on the meta device.

Usage: python benchmarks/costmodel_check.py
"""

from __future__ import annotations

import sys


def main() -> int:
    from vlmeval_encred.sweep.costcheck import all_checks

    print(f"{'component':34} {'formula TFLOPs':>15} {'counted TFLOPs':>15} {'ratio':>7}  counted on")
    for c in all_checks():
        print(f"{c.name:34} {c.analytic / 1e12:15.4f} {c.counted / 1e12:15.4f} {c.ratio:7.3f}  {c.what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
