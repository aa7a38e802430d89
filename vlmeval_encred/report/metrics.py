"""Encoder-contribution metrics on a subset -> score table (pure functions, no I/O).

A *game* here is ``v: frozenset(kept encoders) -> score`` (0-100) at one level
(a benchmark, a category or Overall); ``v(all)`` is the full model, ``v(empty)``
the no-vision baseline.  Missing subsets are simply absent from the mapping;
every function says what it would need instead of guessing.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

Game = Mapping[frozenset, float]


@dataclass
class Missing:
    """A metric that cannot be computed, and what it needs."""

    metric: str
    level: str
    needs: str

    def as_dict(self) -> dict[str, str]:
        return {"metric": self.metric, "level": self.level, "needs": self.needs}


def cur(v: Game, encoders: Sequence[str], enc: str) -> float | None:
    """CUR in %: (v(all) - v(all minus enc)) / v(all) * 100; None if an input is missing or v(all) = 0."""
    full = v.get(frozenset(encoders))
    loo = v.get(frozenset(encoders) - {enc})
    if full is None or loo is None or full == 0:
        return None
    return (full - loo) / full * 100.0


def ig(curs: Mapping[str, float | None]) -> float | None:
    """IG = max CUR - min CUR over encoders; None unless every CUR is known."""
    vals = list(curs.values())
    if not vals or any(c is None for c in vals):
        return None
    return max(vals) - min(vals)  # type: ignore[type-var]


def k_curve(v: Game, encoders: Sequence[str]) -> list[dict]:
    """For k = 0..n masked: max/min/mean over the C(n, k) subsets that are present."""
    n = len(encoders)
    rows = []
    for k in range(n + 1):
        subsets = [frozenset(encoders) - set(m) for m in itertools.combinations(encoders, k)]
        present = [(s, v[s]) for s in subsets if s in v]
        row = {"k": k, "n_subsets": len(subsets), "n_present": len(present),
               "max": None, "min": None, "mean": None, "argmax": None, "argmin": None}
        if present:
            best = max(present, key=lambda t: t[1])
            worst = min(present, key=lambda t: t[1])
            row.update(max=best[1], min=worst[1], mean=sum(p[1] for p in present) / len(present),
                       argmax=masked_label(encoders, best[0]), argmin=masked_label(encoders, worst[0]))
        rows.append(row)
    return rows


def masked_label(encoders: Sequence[str], kept: frozenset) -> str:
    masked = [e for e in encoders if e not in kept]
    return "none" if not masked else "-" + ",-".join(masked)


def capacity_necessity(v: Game, encoders: Sequence[str]) -> list[dict]:
    """Capacity = v({enc}) (the encoder alone); Necessity = v(all) - v(all minus enc) (points)."""
    full = v.get(frozenset(encoders))
    rows = []
    for e in encoders:
        alone = v.get(frozenset([e]))
        loo = v.get(frozenset(encoders) - {e})
        rows.append({"encoder": e, "capacity": alone,
                     "necessity": None if full is None or loo is None else full - loo,
                     "cur": cur(v, encoders, e)})
    return rows


def pairing(v: Game, encoders: Sequence[str]) -> dict:
    """Anchor (highest capacity) + its best complement, versus the two highest-capacity encoders.

    The capacity/necessity paper's finding is that the top-2-capacity pair is suboptimal;
    this puts the two pairs and the full model side by side.
    """
    if len(encoders) < 2:
        return {"available": False, "needs": "at least two encoders"}
    caps = {e: v.get(frozenset([e])) for e in encoders}
    missing = [e for e, c in caps.items() if c is None]
    if missing:
        return {"available": False, "needs": "single-encoder variants (all others masked) for "
                + ", ".join(missing)}
    ranked = sorted(encoders, key=lambda e: caps[e], reverse=True)  # type: ignore[arg-type,return-value]
    anchor = ranked[0]
    pairs = {e: v.get(frozenset([anchor, e])) for e in encoders if e != anchor}
    miss = [e for e, s in pairs.items() if s is None]
    if miss:
        return {"available": False, "anchor": anchor,
                "needs": f"two-encoder variants keeping {anchor} with " + ", ".join(miss)}
    complement = max(pairs, key=lambda e: pairs[e])  # type: ignore[arg-type,return-value]
    return {"available": True, "anchor": anchor, "anchor_capacity": caps[anchor],
            "complement": complement, "anchor_pair": [anchor, complement],
            "anchor_pair_score": pairs[complement],
            "top2_capacity_pair": ranked[:2], "top2_capacity_pair_score": pairs[ranked[1]],
            "full": v.get(frozenset(encoders))}


def lattice_missing(v: Game, encoders: Sequence[str]) -> list[str]:
    return [masked_label(encoders, frozenset(s)) for k in range(len(encoders) + 1)
            for s in itertools.combinations(encoders, k) if frozenset(s) not in v]


def shapley(v: Game, encoders: Sequence[str]) -> dict:
    """Exact Shapley and Banzhaf values and pairwise Shapley interaction indices.

    Needs all 2^n subsets.  Interaction(i, j) > 0: synergy (together worth more than the
    sum of their marginal gains); < 0: redundancy.  ``efficiency_ok`` checks that the
    Shapley values sum to v(all) - v(empty).
    """
    n = len(encoders)
    full, empty = frozenset(encoders), frozenset()
    fact = [math.factorial(i) for i in range(n + 1)]
    phi, bz = {}, {}
    for i in encoders:
        others = [e for e in encoders if e != i]
        s_sum = b_sum = 0.0
        for k in range(n):
            wk = fact[k] * fact[n - k - 1] / fact[n]
            for S in itertools.combinations(others, k):
                s = frozenset(S)
                d = v[s | {i}] - v[s]
                s_sum += wk * d
                b_sum += d
        phi[i] = s_sum
        bz[i] = b_sum / 2 ** (n - 1)
    inter = {}
    for i, j in itertools.combinations(encoders, 2):
        others = [e for e in encoders if e not in (i, j)]
        tot = 0.0
        for k in range(n - 1):
            wk = fact[k] * fact[n - k - 2] / fact[n - 1]
            for S in itertools.combinations(others, k):
                s = frozenset(S)
                tot += wk * (v[s | {i, j}] - v[s | {i}] - v[s | {j}] + v[s])
        inter[f"{i}|{j}"] = tot
    total = sum(phi.values())
    target = v[full] - v[empty]
    return {"values": phi, "banzhaf": bz, "interaction": inter, "sum": total,
            "v_all_minus_v_none": target, "efficiency_ok": abs(total - target) < 1e-9 * max(1.0, abs(target))}
