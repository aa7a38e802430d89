"""Sampled cells of adaptive sweeps (``<work_dir>/encred_adaptive/<base>/<dataset>/``) in the report.

A sampled cell is used only where no complete result exists.  Its score is the full model's
score on the same dataset plus the variant's paired mean difference on the questions it
answered, so a CUR computed from the scores table *is* the paired estimate
``-mean(d) / score(full)``.  Intervals come from the same anytime-valid confidence sequence
the sweep stopped on (:mod:`vlmeval_encred.sweep.confseq`), recomputed from the stored
per-unit outcomes:

* a dataset: the cell's sequence at level ``alpha``;
* a benchmark, category or Overall (weighted means of datasets): the weighted sum of the
  per-dataset intervals, each at ``alpha / m`` (``m`` = the sampled datasets it rests on;
  union bound), complete datasets entering with their exact difference;
* CUR = ``-D / F``: ``D``'s intervals at ``alpha / (2 m)`` and the full model's score ``F``'s
  at ``alpha / (2 m')``, CUR bounded by the corners (``F > 0`` required).

They bound the score a *complete* run of the same benchmark would give (sampling error
only), unlike the bootstrap rows, which resample the benchmark's questions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

ADAPTIVE_DIR = "encred_adaptive"
MARK = "\u2020"  # dagger: rests on sampled cells


def read_sampled(work_dir: Path, base: str) -> dict[str, dict[str, Any]]:
    """dataset -> {plan, full, cells: {variant: {...}}, series: {variant: [diffs]}, full_series: [...]}."""
    root = Path(work_dir) / ADAPTIVE_DIR / base
    out: dict[str, dict[str, Any]] = {}
    if not root.is_dir():
        return out
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            plan = json.loads((d / "plan.json").read_text())
            cells = json.loads((d / "cells.json").read_text())
            scores = json.loads((d / "scores.json").read_text())
        except (OSError, ValueError):
            continue
        order = plan.get("unit_order") or []
        full = cells.get("full_model")
        f = scores.get(full, {})
        nf = 0
        while nf < len(order) and order[nf] in f:
            nf += 1
        rec = {"plan": plan, "full": full, "cells": cells.get("cells", {}), "N": len(order),
               "full_series": [100.0 * f[u] for u in order[:nf]], "series": {}}
        for name, c in rec["cells"].items():
            if name == full:
                continue
            s = scores.get(name, {})
            n = int(c.get("n", 0))
            rec["series"][name] = [100.0 * (s[u] - f[u]) for u in order[:n]]
        out[plan.get("dataset", d.name)] = rec
    return out


def cell_of(sampled: Mapping[str, dict], variant: str, dataset: str) -> dict | None:
    rec = sampled.get(dataset)
    if rec is None:
        return None
    c = rec["cells"].get(variant)
    if c is None or c.get("n", 0) == 0:
        return None
    return c


def note(c: Mapping[str, Any], rec: Mapping[str, Any]) -> str:
    p = rec["plan"]
    return (f"sampled {c['n']} of {c['N']} units (seed {p.get('seed')}, order {p.get('order_sha256')}, "
            f"{c['status']}{': ' + c['stop'] if c.get('stop') and c['status'] != 'complete' else ''}; "
            f"rule: {p.get('rule')})")


def _interval(values: Sequence[float], N: int, alpha: float, lo: float, hi: float) -> tuple[float, float]:
    from ..sweep.confseq import BettingCS

    cs = BettingCS(N, alpha, lo, hi, grid=2001)
    cs.extend(values)
    return cs.interval()


def level_weights(suite: Any, levels: Sequence[str], overall: str) -> dict[str, dict[tuple[str, str], float]]:
    """level -> {(benchmark, dataset): weight} as the report averages (parts, benchmarks, categories)."""
    cats = suite.by_category()
    bw = {b.name: {(b.name, p.dataset): 1.0 / len(b.parts) for p in b.parts} for b in suite.benchmarks}
    out: dict[str, dict[tuple[str, str], float]] = dict(bw)
    for c, bl in cats.items():
        out[c] = {k: w / len(bl) for b in bl for k, w in bw[b.name].items()}
    out[overall] = {k: w / len(cats) for c in cats for k, w in out[c].items()}
    return {lvl: out[lvl] for lvl in levels if lvl in out}


def interval_rows(*, sampled: Mapping[str, dict], used: set[tuple[str, str]], part_vals: Mapping[tuple[str, str, str], float],
                  weights: Mapping[str, Mapping[tuple[str, str], float]], variants: Sequence[dict],
                  encoders: Sequence[str], scores: Mapping[str, Mapping[str, float | None]],
                  cur: Mapping[str, Mapping[str, float | None]], alpha: float = 0.05) -> list[dict]:
    """Interval rows (``variant - full`` and ``CUR``) for every level resting on a sampled cell.

    ``used``: (variant, dataset) pairs whose number in the report came from a sampled cell.
    ``part_vals``: (variant, benchmark, dataset) -> the part score the report used."""
    from .metrics import masked_label

    full = variants[0]["name"]
    rows: list[dict] = []
    loo_of = {variants[i]["name"]: e for e in encoders for i in range(len(variants))
              if variants[i]["masked"] == [e]}
    for lvl, w in weights.items():
        for v in variants[1:]:
            name = v["name"]
            parts = list(w)
            need = [k for k in parts if (name, k[1]) in used or (full, k[1]) in used]
            if not need:
                continue
            diff_iv = _diff_intervals(sampled, name, full, parts, need, part_vals, alpha)
            if diff_iv is None:
                continue
            lo, hi = weighted(w, diff_iv)
            est_v, est_f = scores[name].get(lvl), scores[full].get(lvl)
            if est_v is None or est_f is None:
                continue
            basis = _basis(sampled, [name, full], need)
            rows.append(_row("variant - full", masked_label(list(encoders), frozenset(v["kept"])), lvl,
                             est_v - est_f, lo, hi, basis, alpha))
            e = loo_of.get(name)
            if e is None or cur[e].get(lvl) is None:
                continue
            d2 = _diff_intervals(sampled, name, full, parts, need, part_vals, alpha / 2)
            f2 = _full_intervals(sampled, full, parts, part_vals, used, alpha / 2)
            if d2 is None or f2 is None:
                continue
            (dlo, dhi), (flo, fhi) = weighted(w, d2), weighted(w, f2)
            if flo <= 0:
                rows.append(_row("CUR", e, lvl, cur[e][lvl], None, None, basis, alpha))
                continue
            corners = [-dd / ff * 100.0 for dd in (dlo, dhi) for ff in (flo, fhi)]
            # scores are >= 0, so CUR = (F - V) / F <= 100 %
            rows.append(_row("CUR", e, lvl, cur[e][lvl], min(corners), min(100.0, max(corners)), basis, alpha))
    return rows


def union_intervals(series: Mapping[Any, tuple[Sequence[float], int]], exact: Mapping[Any, float], alpha: float,
                    lo: float = -100.0, hi: float = 100.0) -> dict[Any, tuple[float, float]]:
    """Per-part intervals that hold *simultaneously* with probability >= 1 - ``alpha``.

    ``series``: part -> (its paired values in the stored order, population size N), each
    part's confidence sequence at ``alpha / m`` (``m`` = sampled parts; union bound);
    ``exact``: part -> a complete part's value (zero width).  One function for the report's
    benchmark/category/Overall rows and for the adaptive sweep's category-level stopping
    (:mod:`vlmeval_encred.sweep.adaptive`), so what the sweep stopped on is what the report shows."""
    m = max(1, len(series))
    out = {k: _interval(v, n, alpha / m, lo, hi) for k, (v, n) in series.items()}
    out.update({k: (x, x) for k, x in exact.items()})
    return out


def weighted(w: Mapping[Any, float], ivs: Mapping[Any, tuple[float, float]]) -> tuple[float, float]:
    """The weighted mean's interval: the weighted sums of the parts' bounds."""
    return sum(w[k] * ivs[k][0] for k in w), sum(w[k] * ivs[k][1] for k in w)


def _diff_intervals(sampled, name, full, parts, need, part_vals, alpha):
    series, exact = {}, {}
    for k in parts:
        b, ds = k
        if k in need:
            rec = sampled.get(ds)
            if rec is None or name not in rec["series"] or not rec["series"][name]:
                return None
            series[k] = (rec["series"][name], rec["N"])
        else:
            dv = part_vals.get((name, b, ds))
            fv = part_vals.get((full, b, ds))
            if dv is None or fv is None:
                return None
            exact[k] = dv - fv
    return union_intervals(series, exact, alpha)


def _full_intervals(sampled, full, parts, part_vals, used, alpha):
    need = [k for k in parts if (full, k[1]) in used and k[1] in sampled and sampled[k[1]]["full_series"]]
    series, exact = {}, {}
    for k in parts:
        fv = part_vals.get((full, k[0], k[1]))
        if fv is None:
            return None
        if k in need:
            rec = sampled[k[1]]
            series[k] = (rec["full_series"], rec["N"])
        else:
            exact[k] = fv
    return union_intervals(series, exact, alpha, 0.0, 100.0)


def _basis(sampled, names, need) -> str:
    bits = []
    for _, ds in need:
        rec = sampled.get(ds)
        if rec is None:
            continue
        ns = [rec["cells"].get(n, {}).get("n") for n in names]
        ns = [n for n in ns if n is not None]
        if ns:
            bits.append(f"{ds} {min(ns)}/{rec['N']}")
    return "sampled: " + ", ".join(bits)


def _row(quantity, subject, level, est, lo, hi, basis, alpha) -> dict:
    dist = None if lo is None else bool(lo > 0 or hi < 0)
    return {"quantity": quantity, "subject": subject, "level": level, "estimate": est, "lo": lo, "hi": hi,
            "distinguishable": dist, "sampled": basis,
            "interval": f"anytime-valid {100 * (1 - alpha):g}% confidence sequence (adaptive sweep)"}


def figure_row(b: Mapping[str, Any]) -> dict:
    """A bootstrap/interval row for the intervals figure, its label marked when it rests on sampled cells."""
    if not b.get("sampled"):
        return dict(b)
    return {**b, "subject": f"{b['subject']} {MARK} sampled"}


def markdown_section(r: Any, md_table) -> list[str]:
    """'Sampled cells' section: each sampled cell with its estimate and n/N, and what rests on it."""
    if not getattr(r, "sampled", None):
        return []
    rows = [[c["variant"], c["benchmark"], c["score"], c["note"]] for c in r.sampled]
    ivs = [[b["quantity"], b["subject"], b["level"], b["estimate"], b["lo"], b["hi"],
            "yes" if b["distinguishable"] else ("no" if b["distinguishable"] is not None else "-"), b["sampled"]]
           for b in r.bootstrap if b.get("sampled")]
    out = [f"## {MARK} Sampled cells (adaptive sweep): not complete results", "",
           f"{len(r.sampled)} cells below are **estimates from a sample of the benchmark's questions** "
           "(`encred sweep --adaptive`); a variant's score is the full model's plus its paired mean difference on "
           f"the questions it answered. Every number and interval resting on them is marked `{MARK}`; intervals are "
           "anytime-valid confidence sequences for what a complete run would score (valid although the sweep "
           "stopped when they were narrow enough), not bootstrap intervals. `encred sweep --complete` turns "
           "them into complete cells, reusing every answer.", "",
           md_table(["variant", "benchmark", "estimate", "sampled"], rows), ""]
    if ivs:
        out += [md_table(["quantity", "subject", "level", "estimate", "lo", "hi", "excludes 0", "rests on"], ivs), ""]
    return out
