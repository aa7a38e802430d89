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
