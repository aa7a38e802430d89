"""Demo-level accuracy of the token-budget variants of the CPU demo model (docs/tokens.md).

Runs the trained demo model (``encred_tiny``) and its token-budget variants on freshly
generated demo questions (the same generator and seed as ``encred demo``), calling each
variant's VLMEvalKit wrapper (``generate_inner`` with VLMEvalKit's MCQ prompt text) directly --
not VLMEvalKit's inference loop -- and scoring exact letter matches.  CPU only.

Usage: python benchmarks/tokens_demo.py [--n 60] [--variants encred_tiny_keep25 ...]
"""

from __future__ import annotations

import argparse
import sys
import time

DEFAULT = ["encred_tiny", "encred_tiny_keep75", "encred_tiny_keep50", "encred_tiny_keep25",
           "encred_tiny_keep75_llm", "encred_tiny_keep50_llm", "encred_tiny_keep25_llm"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60, help="questions per category")
    ap.add_argument("--variants", nargs="+", default=DEFAULT)
    args = ap.parse_args(argv)

    import torch

    from vlmeval_encred.demo import data
    from vlmeval_encred.demo.model import sample_message
    from vlmeval_encred.model_wrappers.encred_tiny.modeling import EncredTiny
    from vlmeval_encred.registry import parse_entry_name

    torch.set_num_threads(1)
    kinds = ["General", "OCR", "Vision"]
    samples = {k: data.generate(k, args.n) for k in kinds}
    print(f"{'variant':32}" + "".join(f"{k:>10}" for k in kinds) + f"{'mean':>10}{'s':>8}")
    for v in args.variants:
        w = EncredTiny(**parse_entry_name(v).kwargs())
        t0 = time.time()
        accs = []
        for k in kinds:
            ok = 0
            for s in samples[k]:
                ok += w.generate_inner(sample_message(s)) == s.answer
            accs.append(100 * ok / len(samples[k]))
        print(f"{v:32}" + "".join(f"{a:10.1f}" for a in accs) + f"{sum(accs) / 3:10.1f}{time.time() - t0:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
