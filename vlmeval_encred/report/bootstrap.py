"""Paired bootstrap over per-sample outcomes, vectorised over resamples and variants.

*Paired*: within one dataset, every variant is scored on the **same** resampled sample
indices, so a difference or a CUR reflects the models, not which samples were drawn.
Datasets are resampled independently of each other.  A resample is a count vector
``c`` (how often each sample was drawn), so the weighted score of all variants at
once is ``norm * (c @ (w * x)) / (c @ w)``: two matrix products per chunk of resamples.
Intervals are percentile intervals (2.5 %, 97.5 %).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Mapping, Sequence

import numpy as np

from .metrics import masked_label
from .scores import Units

CHUNK_CELLS = 4_000_000  # resample-count cells per chunk (memory bound: ~32 MB of float64)


@dataclass
class BootInput:
    """Per-sample units of every variant for one dataset part (keyed by the ``kept`` frozenset in
    the mask lattice, by model name in the token-budget analysis)."""

    bench: str
    dataset: str
    units: dict[Hashable, Units]


@dataclass
class BootOutput:
    rows: list[dict] = field(default_factory=list)
    missing: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    partial: list[dict] = field(default_factory=list)
    """``bench, dataset, why``: parts resampled on fewer samples than some variant has."""


def resample_counts(rng: np.random.Generator, n_boot: int, n: int, start: int, stop: int) -> np.ndarray:
    """Counts matrix for resamples ``start:stop`` of ``n`` samples (rows sum to ``n``)."""
    b = stop - start
    idx = rng.integers(0, n, size=(b, n))
    idx += (np.arange(b) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)


def part_resamples(inp: BootInput, n_boot: int, rng: np.random.Generator,
                   notes: list[str], partial: list[dict] | None = None) -> dict[Hashable, np.ndarray]:
    """(n_boot,) resampled scores per variant, all on the same resampled samples."""
    keys = list(inp.units)
    common = set(inp.units[keys[0]].ids)
    for k in keys[1:]:
        common &= set(inp.units[k].ids)
    ref = [i for i in inp.units[keys[0]].ids if i in common]
    if not ref:
        notes.append(f"{inp.bench}/{inp.dataset}: the variants share no sample ids; no bootstrap")
        return {}
    if any(len(u.ids) != len(ref) for u in inp.units.values()):
        why = (f"variants were scored on different samples; the bootstrap uses the {len(ref)} samples all "
               f"of them share (of {max(len(u.ids) for u in inp.units.values())})")
        notes.append(f"{inp.bench}/{inp.dataset}: {why}")
        if partial is not None:
            partial.append({"bench": inp.bench, "dataset": inp.dataset, "why": why})
    n, V = len(ref), len(keys)
    WX = np.empty((n, V))
    W = np.empty((n, V))
    norms = np.empty(V)
    for j, k in enumerate(keys):
        u = inp.units[k]
        pos = {s: i for i, s in enumerate(u.ids)}
        sel = np.fromiter((pos[s] for s in ref), dtype=np.int64, count=n)
        W[:, j] = u.w[sel]
        WX[:, j] = u.w[sel] * u.x[sel]
        norms[j] = u.norm
    out = np.empty((n_boot, V))
    step = max(1, CHUNK_CELLS // n)
    for a in range(0, n_boot, step):
        b = min(n_boot, a + step)
        C = resample_counts(rng, n_boot, n, a, b)
        num = C @ WX
        den = C @ W
        with np.errstate(invalid="ignore", divide="ignore"):
            out[a:b] = num / den * norms
    return {k: out[:, j] for j, k in enumerate(keys)}


MIN_RESAMPLES = 40
"""Fewest defined resamples for a 95 % percentile interval: below 40 the 2.5 % tail holds no
resample at all, and e.g. one resample gives ``[x, x]``, an "interval" that excludes 0."""


def _ci(a: np.ndarray) -> tuple[float | None, float | None]:
    a = a[np.isfinite(a)]
    if a.size < MIN_RESAMPLES:
        return None, None
    lo, hi = np.percentile(a, [2.5, 97.5])
    return float(lo), float(hi)


def level_resamples(parts: Sequence[BootInput], bench_parts: Mapping[str, int],
                    categories: Mapping[str, Sequence[str]], n_boot: int, rng: np.random.Generator,
                    out: BootOutput) -> dict[str, dict[Hashable, np.ndarray]]:
    """(n_boot,) resampled scores of every variant at every level the per-sample data reaches.

    Parts are resampled in order (paired within a part, independent across parts), then
    averaged exactly as the headline scores are: a benchmark is the mean of its parts, a
    category the mean of its benchmarks, ``Overall`` the mean of the categories.  A level
    whose inputs are incomplete is left out and named in ``out.missing``.  Variant keys are
    whatever the parts' ``units`` use (the kept set for the mask lattice, model names for the
    token-budget analysis), so both share one resampling and one aggregation.
    """
    per_bench_parts: dict[str, list[dict[Hashable, np.ndarray]]] = {}
    for inp in parts:
        res = part_resamples(inp, n_boot, rng, out.notes, out.partial)
        if res:
            per_bench_parts.setdefault(inp.bench, []).append(res)
    level_samples: dict[str, dict[Hashable, np.ndarray]] = {}
    for bench, n_parts in bench_parts.items():
        got = per_bench_parts.get(bench, [])
        if len(got) != n_parts:
            out.missing.append({"metric": "bootstrap CI", "level": bench,
                                "needs": "per-sample result files (consistent with the headline) for every "
                                         "dataset of the benchmark"})
            continue
        variants = set.intersection(*(set(g) for g in got))
        level_samples[bench] = {k: np.mean([g[k] for g in got], axis=0) for k in variants}
    cat_samples: dict[str, dict[Hashable, np.ndarray]] = {}
    for cat, benches in categories.items():
        if not all(b in level_samples for b in benches):
            lack = [b for b in benches if b not in level_samples]
            out.missing.append({"metric": "bootstrap CI", "level": cat,
                                "needs": "bootstrap data for " + ", ".join(lack)})
            continue
        variants = set.intersection(*(set(level_samples[b]) for b in benches))
        cat_samples[cat] = {k: np.mean([level_samples[b][k] for b in benches], axis=0) for k in variants}
    level_samples.update(cat_samples)
    if len(cat_samples) == len(categories) and categories:
        variants = set.intersection(*(set(c) for c in cat_samples.values()))
        level_samples["Overall"] = {k: np.mean([cat_samples[c][k] for c in categories], axis=0)
                                    for k in variants}
    else:
        out.missing.append({"metric": "bootstrap CI", "level": "Overall",
                            "needs": "bootstrap data for every category"})
    return level_samples


def paired_bootstrap(parts: Sequence[BootInput], bench_parts: Mapping[str, int],
                     categories: Mapping[str, Sequence[str]], encoders: Sequence[str],
                     point: Mapping[frozenset, Mapping[str, float | None]],
                     n_boot: int = 2000, seed: int = 0) -> BootOutput:
    """CIs of every variant-vs-full difference and every CUR, at every level.

    ``bench_parts``: benchmark -> number of dataset parts it has (all must have per-sample
    data for the benchmark to be resampled).  ``point`` holds the headline-based scores
    used as estimates; the bootstrap supplies only the interval.
    """
    out = BootOutput()
    if 0 < n_boot < MIN_RESAMPLES:
        out.missing.append({"metric": "bootstrap CI", "level": "(all)",
                            "needs": f"at least {MIN_RESAMPLES} resamples for a 95% interval (n_boot={n_boot})"})
    rng = np.random.default_rng(seed)
    full = frozenset(encoders)
    level_samples = level_resamples(parts, bench_parts, categories, n_boot, rng, out)
    for level, samp in level_samples.items():
        if full not in samp:
            out.missing.append({"metric": "bootstrap CI", "level": level,
                                "needs": "per-sample results of the full model"})
            continue
        f = samp[full]
        for e in encoders:
            loo = full - {e}
            est_f, est_l = point.get(full, {}).get(level), point.get(loo, {}).get(level)
            if loo not in samp or est_f in (None, 0) or est_l is None:
                continue
            with np.errstate(invalid="ignore", divide="ignore"):
                c = (f - samp[loo]) / f * 100.0
            lo, hi = _ci(c)
            out.rows.append(_row("CUR", e, level, (est_f - est_l) / est_f * 100.0, lo, hi))
        for k, s in samp.items():
            if k == full:
                continue
            est_k, est_f = point.get(k, {}).get(level), point.get(full, {}).get(level)
            if est_k is None or est_f is None:
                continue
            lo, hi = _ci(s - f)
            out.rows.append(_row("variant - full", masked_label(encoders, k), level, est_k - est_f, lo, hi))
    return out


def _row(quantity: str, subject: str, level: str, est: float, lo: float | None, hi: float | None) -> dict:
    dist = None if lo is None else bool(lo > 0 or hi < 0)  # type: ignore[operator]
    return {"quantity": quantity, "subject": subject, "level": level, "estimate": est,
            "lo": lo, "hi": hi, "distinguishable": dist}
