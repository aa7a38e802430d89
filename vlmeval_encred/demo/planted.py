"""The structure planted in the demo model, as checkable claims (the demo's right answers).

Used by ``encred demo`` (to print whether the report recovered it) and by
tests/test_demo.py (on in-process accuracies of the shipped weights).  Scores are
accuracies on 0-100 keyed by the tuple of masked encoders and the category name;
CUR follows the paper: ``(acc(all) - acc(all without E)) / acc(all)`` in %.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

GENERAL, OCR, VISION = "General", "OCR & Chart", "Vision-Centric"
CATEGORIES = (GENERAL, OCR, VISION)
ENCODERS = ("lowres", "hires", "colour")

Scores = Mapping[tuple[str, ...], Mapping[str, float]]


def relative_drop(scores: Scores, masked: tuple[str, ...], category: str) -> float:
    """``(full - masked) / full`` in %; NaN when the full model scores 0 (undefined)."""
    full = scores[()][category]
    if not full:
        return float("nan")
    return 100.0 * (full - scores[masked][category]) / full


def cur(scores: Scores, encoder: str, category: str) -> float:
    return relative_drop(scores, (encoder,), category)


@dataclass(frozen=True)
class Claim:
    """One planted fact: a description, how to measure it, and the threshold it must meet."""

    text: str
    measure: Callable[[Scores], float]
    test: Callable[[float], bool]
    bound: str

    def check(self, scores: Scores) -> tuple[float, bool]:
        value = self.measure(scores)
        return value, bool(self.test(value))


CLAIMS: tuple[Claim, ...] = (
    *(Claim(f"full model accuracy on {c}", lambda s, c=c: s[()][c], lambda v: v >= 80.0, ">= 80")
      for c in CATEGORIES),
    Claim("CUR(hires) on OCR & Chart: only hires can read the digits",
          lambda s: cur(s, "hires", OCR), lambda v: v > 80.0, "> 80 %"),
    Claim("CUR(lowres) on General: redundant with colour",
          lambda s: cur(s, "lowres", GENERAL), lambda v: v < 10.0, "< 10 %"),
    Claim("CUR(colour) on General: redundant with lowres",
          lambda s: cur(s, "colour", GENERAL), lambda v: v < 10.0, "< 10 %"),
    Claim("drop on General when masking lowres+colour (both carriers of colour)",
          lambda s: relative_drop(s, ("lowres", "colour"), GENERAL), lambda v: v > 50.0, "> 50 %"),
    Claim("CUR(colour) on Vision-Centric: useless there, planted harmful",
          lambda s: cur(s, "colour", VISION), lambda v: v <= 0.0, "<= 0 %"),
)


def check_all(scores: Scores) -> list[tuple[Claim, float, bool]]:
    """Every claim with its measured value and whether it holds."""
    return [(c, *c.check(scores)) for c in CLAIMS]


SEPARATED: dict[tuple[str, str], int] = {
    ("hires", OCR): +1,      # the only encoder that resolves the digits
    ("hires", VISION): +1,   # the sharp view of small shapes; lowres alone counts far worse
    ("lowres", VISION): +1,  # second witness of the count against colour's shortcut (conditional)
    ("colour", VISION): -1,  # the planted shortcut: masking it helps
}
"""The CURs whose 95 % bootstrap interval must exclude zero, with the sign of the effect.

Every other (encoder, category) CUR is planted as zero -- an encoder that cannot see
the information (``hires`` is colour-blind, ``lowres``/``colour`` cannot read a
6x10-pixel digit) or one whose information another encoder carries too (``lowres``
and ``colour`` for colour) -- so its interval must contain zero.  "Exactly the values
that should be separated" means both.  ``lowres`` on counting is the instructive
case: with ``colour`` masked it adds nothing (``hires`` counts alone), but in the full
model it holds the count against the shortcut, and CUR is conditional on the others.
"""


@dataclass(frozen=True)
class IntervalCheck:
    encoder: str
    category: str
    estimate: float
    lo: float | None
    hi: float | None
    expected: int
    """+1 / -1: interval entirely above / below zero; 0: interval contains zero."""

    @property
    def observed(self) -> int | None:
        if self.lo is None or self.hi is None:
            return None
        return 1 if self.lo > 0 else -1 if self.hi < 0 else 0

    @property
    def ok(self) -> bool:
        return self.observed == self.expected

    def describe(self) -> str:
        want = {1: "above 0", -1: "below 0", 0: "containing 0"}[self.expected]
        ci = "no interval" if self.lo is None else f"[{self.lo:.1f}, {self.hi:.1f}]"
        return f"CUR({self.encoder}) on {self.category}: {self.estimate:.1f} {ci} (expected {want})"


def check_intervals(bootstrap_rows: list[Mapping]) -> list[IntervalCheck]:
    """Every (encoder, category) CUR of a report's bootstrap rows against :data:`SEPARATED`.

    ``bootstrap_rows`` are ``ReportResult.bootstrap`` (``quantity, subject, level,
    estimate, lo, hi``); a missing row is reported as a failed check, not skipped.
    """
    found = {(r["subject"], r["level"]): r for r in bootstrap_rows if r.get("quantity") == "CUR"}
    out = []
    for enc in ENCODERS:
        for cat in CATEGORIES:
            r = found.get((enc, cat), {})
            out.append(IntervalCheck(enc, cat, float(r.get("estimate", float("nan"))), r.get("lo"), r.get("hi"),
                                     SEPARATED.get((enc, cat), 0)))
    return out


@dataclass(frozen=True)
class TokenCheck:
    """Issue 19's demo claim for token budgets: at the same budget, the scored fusion-stage selection
    answers better than a seeded random selection of the same size where the information is local in
    the image (the OCR digit: a 6x10-pixel glyph in one place).  Measured by
    :func:`vlmeval_encred.demo.token_check.run_token_check`; holds when the 95 % paired-bootstrap
    interval of (scored - random) accuracy lies above zero."""

    kind: str = "OCR"
    """Demo data generator key (:data:`vlmeval_encred.demo.data.GENERATORS`)."""
    category: str = OCR
    keep: int = 25
    """Percent of the 16 visual tokens kept (4 tokens)."""
    stage: str = "fusion"
    """Where tokens are chosen (:data:`vlmeval_encred.tokens.STAGES`); the llm stage prunes after the
    default layer K.  The claim is the fusion stage's; benchmarks/token_check_grid.py runs the same check
    for both stages, every category and other budgets (docs/tokens.md)."""
    control_seed: int = 0
    """The random control keeps ``random.Random(f"{control_seed}:{question index}").sample(range(T), k)``."""
    counts: bool = False
    """Whether a miss makes ``encred demo`` exit 1.  False: the shipped model misses it (random wins, see
    docs/tokens.md, 'The demo's token check'), and that is reported as measured, not counted, until the
    demo model is changed or the claim is withdrawn (a decision recorded there)."""


TOKEN_CHECK = TokenCheck()
