"""``encred demo``'s token-budget check (issue 19 part 5; :data:`.planted.TOKEN_CHECK`, docs/tokens.md).

Does the scored selection (the fusion stage's :func:`vlmeval_encred.tokens.fusion_select`, or the llm
stage's attention ranking) keep the tokens that matter?  On the demo's OCR questions (same generator and
seed as the benchmark), the demo model at ``keep25`` answers every question twice -- once with the
scored selection, once with a control that keeps the same number of positions chosen at random with a
fixed seed per question -- and the two accuracies are compared with a paired bootstrap over questions (the resampling of the report,
:func:`vlmeval_encred.report.bootstrap.part_resamples`).

The control is internal to this check, not a model name: a random selection answers no user's
question, and a name would have to be defined for every family.  It enters through the demo wrapper's
``token_select`` hook (at the llm stage: after layer K, where the scored tokens would be chosen), so both
answers come from the same code path (VLMEvalKit's MCQ prompt text,
the wrapper's ``generate_inner``); only the kept positions differ.

As a diagnosis the check also counts, on OCR questions, how often each selection keeps a grid cell that
holds ink of the digit, and how often one that holds the coloured distractor shape (the digit is drawn in
grey, the shape in colour, so the cells are read off the image).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

from .planted import TOKEN_CHECK, TokenCheck


@dataclass
class TokenCheckResult:
    """Accuracies in %, their paired difference (scored - random) with its 95 % interval."""

    n: int
    keep: int
    k: int
    """Tokens kept of ``t``."""
    t: int
    acc_scored: float
    acc_random: float
    lo: float | None
    hi: float | None
    n_boot: int
    digit_kept_scored: float | None
    """% of questions whose kept set includes a cell with digit ink (OCR questions; else None)."""
    digit_kept_random: float | None
    seconds: float
    kind: str = "OCR"
    stage: str = "fusion"
    shape_kept_scored: float | None = None
    """% of questions whose kept set includes a cell of the coloured distractor shape (OCR; else None)."""
    shape_kept_random: float | None = None

    @property
    def diff(self) -> float:
        return self.acc_scored - self.acc_random

    @property
    def ok(self) -> bool:
        """The claim: the interval of (scored - random) lies above zero."""
        return self.lo is not None and self.lo > 0

    @property
    def verdict(self) -> str:
        """Which selection the interval favours: "scored wins", "random wins" or "no difference"."""
        if self.ok:
            return "scored wins"
        return "random wins" if self.hi is not None and self.hi < 0 else "no difference"

    def describe(self) -> str:
        ci = "no interval" if self.lo is None else f"95% CI [{self.lo:+.1f}, {self.hi:+.1f}]"
        where = "" if self.stage == "fusion" else f", {self.stage} stage"
        out = (f"keep{self.keep}{where} ({self.k} of {self.t} tokens), {self.n} {self.kind} questions: scored "
               f"selection {self.acc_scored:.1f}%, seeded random {self.acc_random:.1f}%, difference "
               f"{self.diff:+.1f} points, {ci} ({self.n_boot} paired resamples)")
        if self.digit_kept_scored is not None:
            out += (f"; a cell with digit ink kept: scored {self.digit_kept_scored:.0f}%, random "
                    f"{self.digit_kept_random:.0f}%; one with the coloured distractor: scored "
                    f"{self.shape_kept_scored:.0f}%, random {self.shape_kept_random:.0f}%")
        return out + " (expected: scored > random)"


def control_positions(n: int, k: int, seed: int, index: int) -> list[int]:
    """The control's kept positions for question ``index``: ``k`` of ``range(n)``, uniformly at random,
    seeded per question (Python's ``random``: the same on every platform), ascending."""
    return sorted(random.Random(f"{seed}:{index}").sample(range(n), k))


def _cells(mask: Any, grid: int) -> set[int]:
    """Grid cells (row-major, as the fusion's token order) holding any True pixel of ``mask`` (H, W)."""
    import numpy as np

    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    return {int(y * grid // h) * grid + int(x * grid // w) for y, x in zip(ys, xs)}


def digit_cells(image: Any, grid: int) -> set[int]:
    """Grid cells holding ink of the demo's grey digit."""
    import numpy as np

    a = np.asarray(image.convert("RGB"), dtype=np.int16)
    return _cells((a.max(axis=2) == a.min(axis=2)) & (a.max(axis=2) <= 100), grid)


def shape_cells(image: Any, grid: int) -> set[int]:
    """Grid cells holding the demo's coloured shape (any pixel whose channels differ)."""
    import numpy as np

    a = np.asarray(image.convert("RGB"), dtype=np.int16)
    return _cells(a.max(axis=2) != a.min(axis=2), grid)


def run_token_check(wrapper_cls: Any, base: str, n: int, n_boot: int, seed: int = 0,
                    check: TokenCheck = TOKEN_CHECK) -> TokenCheckResult:
    """Answer ``n`` demo questions of ``check.kind`` with the scored and the control selection, at
    ``check.stage`` (the llm stage after the base's default layer K: 1 for the demo's 2-layer LM)."""
    import numpy as np
    import torch

    from ..registry import get_base, parse_entry_name
    from ..report.bootstrap import BootInput, _ci, part_resamples
    from ..report.scores import Units
    from ..tokens import TokenSpec
    from . import data
    from .model import sample_message

    t0 = time.perf_counter()
    layer = get_base(base).llm_layer  # the llm stage prunes after the base's default layer K
    spec = TokenSpec(check.keep, check.stage, None if check.stage == "fusion" else layer)
    w = wrapper_cls(**parse_entry_name(base + spec.suffix(layer)).kwargs())
    grid = w.model.config.grid
    t = w.model.config.n_image_tokens
    k = spec.budget(t)
    hits: dict[str, list[float]] = {"scored": [], "random": []}
    ocr = check.kind == "OCR"
    cover: dict[str, list[bool]] = {"scored": [], "random": []}
    shape: dict[str, list[bool]] = {"scored": [], "random": []}
    try:
        for s in data.generate(check.kind, n):
            msg = sample_message(s)
            cells = (digit_cells(s.image, grid), shape_cells(s.image, grid)) if ocr else (set(), set())
            control = torch.tensor(control_positions(t, k, check.control_seed, s.index), dtype=torch.long)
            for mode, select in (("scored", None), ("random", lambda sel, c=control: c)):
                w.token_select = select
                hits[mode].append(float(w.generate_inner(msg) == s.answer))
                kept = set(w.token_report["kept"])
                cover[mode].append(bool(cells[0] & kept))
                shape[mode].append(bool(cells[1] & kept))
    finally:
        w.token_select = None
    ids = np.array([str(i) for i in range(n)])
    units = {m: Units(ids, np.array(h), np.ones(n), 100.0) for m, h in hits.items()}
    lo = hi = None
    if n_boot > 0:
        res = part_resamples(BootInput(check.category, check.kind, units), n_boot, np.random.default_rng(seed), [])
        lo, hi = _ci(res["scored"] - res["random"])
    pct = {m: 100.0 * sum(c) / max(1, n) if ocr else None for m, c in cover.items()}
    pct_shape = {m: 100.0 * sum(c) / max(1, n) if ocr else None for m, c in shape.items()}
    return TokenCheckResult(n, check.keep, k, t, units["scored"].score(), units["random"].score(), lo, hi, n_boot,
                            pct["scored"], pct["random"], time.perf_counter() - t0, check.kind, check.stage,
                            pct_shape["scored"], pct_shape["random"])
