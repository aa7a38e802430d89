"""The demo's token check (issue 19 part 5) beyond its one planted case: every stage, category and budget.

``encred demo`` checks one claim (``planted.TOKEN_CHECK``: fusion stage, keep25, OCR questions): the
scored selection beats a seeded random selection of the same size.  This script runs the very same
check (:func:`vlmeval_encred.demo.token_check.run_token_check`, same wrapper hook, same paired
bootstrap) for both training-free stages (``fusion``; ``llm`` after the base's default layer, K=1 for the
demo's 2-layer language model), all three
demo categories and several budgets, so a reader can see whether a miss of the planted case is a
property of the selection method, of the stage, of the category or of the budget.  Nothing here
counts toward ``encred demo``'s exit status; docs/tokens.md reports the figures of a 300-question run.

With ``--diagnose``, the planted case (fusion, keep25, OCR) is also answered with forced selections of
the same size through the same hook -- the coloured distractor's cells, the digit's cells, cells avoiding
the distractor (each filled up with the seeded random control's order), one encoder's L2 norm alone, and
the scored ranking reversed -- to locate what the scored selection keeps that misleads the model.

CPU only (the demo model); 2 x n answers per cell; 46 s for the default 12 cells of 300 questions (one
torch thread, 2-core machine, 2026-12-04).

Usage: python benchmarks/token_check_grid.py [--n 300] [--n-boot 1000] [--keeps 25 50]
       [--stages fusion llm] [--kinds OCR Vision General] [--png token_check_grid.png]
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="questions per category (the demo's default: 300)")
    ap.add_argument("--n-boot", type=int, default=1000, help="paired bootstrap resamples per cell")
    ap.add_argument("--keeps", type=int, nargs="+", default=[25, 50], help="percent of the 16 tokens kept")
    ap.add_argument("--stages", nargs="+", default=["fusion", "llm"], choices=["fusion", "llm"])
    ap.add_argument("--kinds", nargs="+", default=["OCR", "Vision", "General"], choices=["OCR", "Vision", "General"])
    ap.add_argument("--png", type=Path, default=Path("token_check_grid.png"),
                    help="figure of every cell's paired difference with its interval (refuses to overwrite)")
    ap.add_argument("--force", action="store_true", help="overwrite --png if it exists")
    ap.add_argument("--diagnose", action="store_true", help="also answer the planted case with forced selections")
    a = ap.parse_args(argv)
    if a.png.exists() and not a.force:
        ap.error(f"{a.png} exists; pass --force to overwrite it or choose another --png")

    import torch
    from tqdm import tqdm

    from vlmeval_encred.demo.data import DATASETS
    from vlmeval_encred.demo.planted import TOKEN_CHECK
    from vlmeval_encred.demo.token_check import run_token_check
    from vlmeval_encred.model_wrappers.encred_tiny.modeling import EncredTiny

    torch.set_num_threads(1)
    category = {d.kind: d.category for d in DATASETS}
    cells = [(st, keep, kind) for st in a.stages for keep in a.keeps for kind in a.kinds]
    rows = []
    t0 = time.perf_counter()
    for st, keep, kind in tqdm(cells, desc="token check cells", unit="cell"):
        check = dataclasses.replace(TOKEN_CHECK, kind=kind, category=category[kind], keep=keep, stage=st)
        rows.append(run_token_check(EncredTiny, "encred_tiny", a.n, a.n_boot, check=check))
    planted = (TOKEN_CHECK.stage, TOKEN_CHECK.keep, TOKEN_CHECK.kind)
    print(f"\n{a.n} questions per cell, {a.n_boot} paired resamples; * = the planted claim of `encred demo`\n")
    print("| stage | keep | category | scored | seeded random | scored - random [95 % CI] | verdict |"
          " digit cell kept (scored / random) | distractor cell kept (scored / random) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        star = " *" if (r.stage, r.keep, r.kind) == planted else ""
        ci = "" if r.lo is None else f" [{r.lo:+.1f}, {r.hi:+.1f}]"
        cov = (f"{r.digit_kept_scored:.0f} % / {r.digit_kept_random:.0f} %" if r.digit_kept_scored is not None else "")
        shp = (f"{r.shape_kept_scored:.0f} % / {r.shape_kept_random:.0f} %" if r.shape_kept_scored is not None else "")
        print(f"| {r.stage}{star} | {r.keep} | {r.kind} | {r.acc_scored:.1f} | {r.acc_random:.1f} | "
              f"{r.diff:+.1f}{ci} | {r.verdict} | {cov} | {shp} |")
    if a.diagnose:
        _diagnose(a.n)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    _figure(rows, a.png, planted)
    print(f"figure: {a.png}")
    return 0


def _diagnose(n: int) -> None:
    """The planted case answered with forced selections of the same size (see the module docstring)."""
    import torch

    from vlmeval_encred.demo import data
    from vlmeval_encred.demo.model import sample_message
    from vlmeval_encred.demo.planted import TOKEN_CHECK
    from vlmeval_encred.demo.token_check import control_positions, digit_cells, shape_cells
    from vlmeval_encred.model_wrappers.encred_tiny.modeling import EncredTiny
    from vlmeval_encred.registry import parse_entry_name
    from vlmeval_encred.tokens import TokenSpec, top_positions

    spec = TokenSpec(TOKEN_CHECK.keep)
    w = EncredTiny(**parse_entry_name("encred_tiny" + spec.suffix()).kwargs())
    t = w.model.config.n_image_tokens
    k = spec.budget(t)
    grid = w.model.config.grid

    def fill(first: list[int], order: list[int]) -> torch.Tensor:
        """``first`` (at most k of them, in order), then the control's order, k in all."""
        out = list(dict.fromkeys(first))[:k]
        out += [c for c in order if c not in out][:k - len(out)]
        return torch.tensor(sorted(out), dtype=torch.long)

    # Each forced selection is f(scored selection, (digit cells, distractor cells), control order).
    forced = {
        "scored (as shipped)": None,
        "seeded random (the control)": lambda sel, c, o: torch.tensor(sorted(o[:k])),
        "scored ranking reversed (k lowest)": lambda sel, c, o: top_positions(-sel.importance, k),
        "distractor cells first, then random": lambda sel, c, o: fill(sorted(c[1]), o),
        "random avoiding distractor cells": lambda sel, c, o: fill([x for x in o if x not in c[1]], o),
        "digit cells (not distractor) first, then random avoiding distractor":
            lambda sel, c, o: fill(sorted(c[0] - c[1]) + [x for x in o if x not in c[1]], o),
        **{f"L2 norm of {e} alone": (lambda sel, c, o, e=e: top_positions(sel.scores[e], k))
           for e in w.model.encoder_names},
    }
    samples = data.generate(TOKEN_CHECK.kind, n)
    cells = {s.index: (digit_cells(s.image, grid), shape_cells(s.image, grid)) for s in samples}
    # The control's random order of all t positions; its first k are the control's kept set.
    orders = {s.index: random.Random(f"{TOKEN_CHECK.control_seed}:{s.index}").sample(range(t), t) for s in samples}
    assert all(sorted(o[:k]) == control_positions(t, k, TOKEN_CHECK.control_seed, i) for i, o in orders.items())
    print(f"\nDiagnosis of the planted case (fusion, keep{TOKEN_CHECK.keep}: {k} of {t} tokens, {n} OCR questions)\n")
    print("| forced selection | accuracy | keeps a distractor cell | keeps a digit cell |")
    print("|---|---|---|---|")
    for label, fn in forced.items():
        ok = dis = dig = 0
        for s in samples:
            c, o = cells[s.index], orders[s.index]
            w.token_select = None if fn is None else (lambda sel, c=c, o=o, fn=fn: fn(sel, c, o))
            ok += w.generate_inner(sample_message(s)) == s.answer
            kept = set(w.token_report["kept"])
            dig += bool(kept & c[0])
            dis += bool(kept & c[1])
        print(f"| {label} | {100 * ok / n:.1f} % | {100 * dis / n:.0f} % | {100 * dig / n:.0f} % |")
    w.token_select = None


def _figure(rows: list, png: Path, planted: tuple) -> None:
    """Every cell's paired difference with its interval, drawn by the report's interval figure."""
    import io

    from vlmeval_encred.report.writers import fig_intervals
    from vlmeval_encred.safe_files import atomic_write_bytes

    marks = [{"subject": f"{r.stage} keep{r.keep}", "level": r.kind, "estimate": r.diff, "lo": r.lo, "hi": r.hi,
              "distinguishable": r.verdict != "no difference",
              "mark": "(planted)" if (r.stage, r.keep, r.kind) == planted else ""} for r in rows]
    buf = io.BytesIO()
    fig_intervals(buf, marks, f"Scored vs random token selection ({rows[0].n} q/row)",
                  xlabel="scored - random accuracy (points), 95% CI")
    atomic_write_bytes(png, buf.getvalue())


if __name__ == "__main__":
    sys.exit(main())
