"""Token-budget variants in the report: score against kept-token fraction (issue 19, part 4).

Token-budget variants (:mod:`vlmeval_encred.tokens`, docs/tokens.md) are ordinary VLMEvalKit
models named ``<base>[_mask_<enc>...]_keep<NN>[_llm[<K>]]``.  Their result folders are found
next to the mask lattice's in the work dir (nothing to configure: a budget is analysed when
its results are there) and read by the same code as every other variant.

For every *series* (a stage, and for ``llm`` its layer K) and every encoder mask that has at
least one budget, per level (benchmark, category, Overall):

* the **token curve**: score at each kept fraction, 100 % being the unpruned variant of the
  same mask (the token analogue of the k-masked curve), and the score as % of that unpruned one;
* the **95 % budget**: the smallest budget from which on every larger budget present keeps
  >= 95 % of the unpruned score (:func:`smallest_budget`; a budget that dips below 95 % resets
  the search, so one lucky small budget does not count).  ``100`` means no pruned budget
  present qualifies.  With the bootstrap on, its 95 % interval is the percentile interval of
  the same rule applied to each paired resample (every budget and the unpruned variant scored
  on the same resampled questions), reported in budget units, with the retained fraction's
  interval at the point estimate's budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..tokens import DEFAULT_LLM_LAYER, TokenError, TokenSpec, parse_token_suffix, split_token_suffix
from .metrics import masked_label

THRESHOLD = 95.0
"""Percent of the unpruned score a budget must keep (issue 19: "keeps 95 % of the full score")."""


@dataclass(frozen=True)
class BudgetVariant:
    """One token-budget variant whose results folder exists in the work dir."""

    name: str
    mask_name: str
    """The unpruned variant of the same mask (the curve's 100 % point)."""
    kept: frozenset
    masked: tuple[str, ...]
    spec: TokenSpec

    @property
    def series(self) -> str:
        """``fusion`` or ``llm K=<K>``: budgets of one series form one curve."""
        return series_label(self.spec)


def series_label(spec: TokenSpec) -> str:
    return spec.stage if spec.stage != "llm" else f"llm K={spec.layer}"


def discover(entries: Iterable[str], variants: Sequence[Mapping[str, Any]], base_model: str,
             encoders: Sequence[str]) -> tuple[list[BudgetVariant], list[str]]:
    """Token-budget variants among ``entries`` (the work dir's folder names), with notes on skipped ones.

    A folder counts when its name is a mask variant of ``variants`` plus a canonical budget
    suffix; for a registered base the registry must also accept the name (a stage its family
    refuses cannot have been run through our models).  A folder with a non-canonical suffix
    (``_keep25_fusion``) or a refused one is named in the notes, never read.
    """
    masks = {v["name"]: v for v in variants}
    default_layer, registered = _default_layer(base_model)
    found, notes = [], []
    for entry in sorted(entries):
        head, suffix = split_token_suffix(entry)
        if suffix is None or head not in masks:
            continue
        v = masks[head]
        try:
            spec, canon = parse_token_suffix(suffix, default_layer)
        except TokenError as exc:
            notes.append(f"{entry}: not read as a token budget ({exc})")
            continue
        if canon is not None:
            notes.append(f"{entry}: not read as a token budget (the canonical name is {head}{canon})")
            continue
        if registered:
            from ..registry import RegistryError, parse_entry_name

            try:
                parse_entry_name(entry)
            except RegistryError as exc:
                notes.append(f"{entry}: not read as a token budget ({exc})")
                continue
        found.append(BudgetVariant(entry, head, v["_kept"], tuple(v["masked"]), spec))
    order = {v["name"]: i for i, v in enumerate(variants)}
    found.sort(key=lambda b: (b.spec.stage, b.spec.layer or 0, order[b.mask_name], -b.spec.keep))
    return found, notes


def _default_layer(base_model: str) -> tuple[int, bool]:
    from ..registry import RegistryError, get_base

    try:
        return get_base(base_model).llm_layer, True
    except RegistryError:
        return DEFAULT_LLM_LAYER, False


def smallest_budget(retained: Mapping[int, float | None], threshold: float = THRESHOLD) -> int | None:
    """Smallest keep percentage from which on every larger budget keeps >= ``threshold`` % of the
    unpruned score; 100 if the largest budget present already falls short; None if no budget has
    a value.  Budgets without a value (missing results) are left out, not counted as failures."""
    known = sorted((k for k, r in retained.items() if r is not None), reverse=True)
    if not known:
        return None
    best = 100
    for k in known:
        if retained[k] < threshold:  # type: ignore[operator]
            break
        best = k
    return best


def smallest_budget_resampled(keeps: Sequence[int], retained: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """:func:`smallest_budget` for every resample at once: ``retained`` (n_boot, len(keeps)) in % with
    ``keeps`` in descending order; NaN where the resample is undefined (unpruned score 0)."""
    best = np.full(retained.shape[0], 100.0)
    alive = np.ones(retained.shape[0], dtype=bool)
    for j, k in enumerate(keeps):
        with np.errstate(invalid="ignore"):
            alive &= retained[:, j] >= threshold
        best[alive] = k
    best[~np.isfinite(retained).all(axis=1)] = np.nan
    return best


def curve_rows(budgets: Sequence[BudgetVariant], scores: Mapping[str, Mapping[str, float | None]],
               encoders: Sequence[str], levels: Sequence[str]) -> list[dict[str, Any]]:
    """Per series, mask and level: the unpruned point, then each budget (largest first)."""
    rows = []
    for series, mask_name, group in _groups(budgets):
        b0 = group[0]
        mask = masked_label(encoders, b0.kept)
        for lvl in levels:
            full = scores.get(mask_name, {}).get(lvl)
            pts = [(100, mask_name, True)] + [(b.spec.keep, b.name, False) for b in group]
            for keep, name, unpruned in pts:
                v = scores.get(name, {}).get(lvl)
                rows.append({"series": series, "stage": b0.spec.stage, "layer": b0.spec.layer, "mask": mask,
                             "variant": name, "keep": keep, "unpruned": unpruned, "level": lvl, "score": v,
                             "retained": None if v is None or not full else 100.0 * v / full})
    return rows


def _groups(budgets: Sequence[BudgetVariant]) -> list[tuple[str, str, list[BudgetVariant]]]:
    out: dict[tuple[str, str], list[BudgetVariant]] = {}
    for b in budgets:
        out.setdefault((b.series, b.mask_name), []).append(b)
    return [(s, m, sorted(g, key=lambda b: -b.spec.keep)) for (s, m), g in out.items()]


def budget95_rows(budgets: Sequence[BudgetVariant], curve: Sequence[Mapping[str, Any]], levels: Sequence[str],
                  resamples: Mapping[str, Mapping[Any, np.ndarray]] | None,
                  min_resamples: int) -> list[dict[str, Any]]:
    """The 95 % budget per series, mask and level, with its bootstrap interval where ``resamples``
    (level -> model name -> (n_boot,) scores) cover the unpruned variant and every budget."""
    rows = []
    for series, mask_name, group in _groups(budgets):
        for lvl in levels:
            pts = [r for r in curve if r["series"] == series and r["variant"] in {mask_name, *(b.name for b in group)}
                   and r["level"] == lvl and not r["unpruned"]]
            mask = pts[0]["mask"] if pts else ""
            ret = {r["keep"]: r["retained"] for r in pts}
            best = smallest_budget(ret)
            row = {"series": series, "mask": mask, "level": lvl, "budget": best,
                   "retained": None if best in (None, 100) else ret[best],
                   "budgets": ", ".join(str(k) for k in sorted(ret, reverse=True)),
                   "lo": None, "hi": None, "retained_lo": None, "retained_hi": None, "interval": ""}
            if best is None:
                full = next((r["score"] for r in curve if r["series"] == series and r["variant"] == mask_name
                             and r["level"] == lvl and r["unpruned"]), None)
                row["interval"] = (f"no score of the unpruned variant {mask_name} at this level" if not full
                                   else "no budget scored at this level")
            elif resamples is not None:
                row.update(_interval(resamples.get(lvl, {}), mask_name, group, best, min_resamples))
            rows.append(row)
    return rows


def _interval(samp: Mapping[Any, np.ndarray], mask_name: str, group: Sequence[BudgetVariant], best: int,
              min_resamples: int) -> dict[str, Any]:
    names = [mask_name] + [b.name for b in group]
    lack = [n for n in names if n not in samp]
    if lack:
        return {"interval": "no interval: no usable per-sample data for " + ", ".join(lack)}
    full = samp[mask_name]
    with np.errstate(invalid="ignore", divide="ignore"):
        ret = np.stack([100.0 * samp[b.name] / np.where(full > 0, full, np.nan) for b in group], axis=1)
    s = smallest_budget_resampled([b.spec.keep for b in group], ret)
    ok = np.isfinite(s)
    if ok.sum() < min_resamples:
        return {"interval": f"no interval: fewer than {min_resamples} defined resamples"}
    out: dict[str, Any] = {"lo": float(np.percentile(s[ok], 2.5, method="lower")),
                           "hi": float(np.percentile(s[ok], 97.5, method="higher")), "interval": "ok"}
    if best != 100:
        r = ret[:, [b.spec.keep for b in group].index(best)]
        r = r[np.isfinite(r)]
        if r.size >= min_resamples:
            out["retained_lo"], out["retained_hi"] = (float(x) for x in np.percentile(r, [2.5, 97.5]))
    return out


def fmt_budget(row: Mapping[str, Any]) -> str:
    """``keep25 (96.0 %) [keep25, keep50]`` / ``none below 100 %`` / ``–``."""
    b = row["budget"]
    if b is None:
        return "–"
    s = "none below 100 %" if b == 100 else f"keep{b} ({row['retained']:.1f} %)"
    if row.get("lo") is not None:
        s += f" [{_k(row['lo'])}, {_k(row['hi'])}]"
    return s


def _k(v: float) -> str:
    return "100" if v >= 100 else f"keep{int(v)}"


def table_mask_by_budget(curve: Sequence[Mapping[str, Any]], series: str, level: str) -> tuple[list[str], list[list]]:
    """Header and rows of the encoder mask x budget table of one series at one level (score and % kept)."""
    pts = [r for r in curve if r["series"] == series and r["level"] == level]
    keeps = sorted({r["keep"] for r in pts if not r["unpruned"]}, reverse=True)
    masks = list(dict.fromkeys(r["mask"] for r in pts))
    head = ["mask", "unpruned"] + [f"keep{k}" for k in keeps]
    rows = []
    for m in masks:
        mine = [r for r in pts if r["mask"] == m]
        full = next((r["score"] for r in mine if r["unpruned"]), None)
        row: list[Any] = [m, full]
        for k in keeps:
            r = next((r for r in mine if r["keep"] == k and not r["unpruned"]), None)
            row.append("–" if r is None or r["score"] is None else
                       f"{r['score']:.2f} ({r['retained']:.1f} %)" if r["retained"] is not None else f"{r['score']:.2f}")
        rows.append(row)
    return head, rows


def fig_token_curves(path: Path, curve: Sequence[Mapping[str, Any]], levels: Sequence[str], title: str) -> None:
    """One panel per level: score against kept-token fraction, a line per (mask, series)."""
    from .writers import _plt

    plt = _plt()
    n = len(levels)
    cols = min(n, 4)
    rows_n = -(-n // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.3 * cols + 0.4, 2.9 * rows_n + 0.6), squeeze=False)
    lines = list(dict.fromkeys((r["mask"], r["series"]) for r in curve))
    masks = list(dict.fromkeys(m for m, _ in lines))
    series = list(dict.fromkeys(s for _, s in lines))
    styles = ["o-", "s--", "^:", "v-."]
    for i, lvl in enumerate(levels):
        ax = axes[i // cols][i % cols]
        for m, s in lines:
            pts = sorted((r["keep"], r["score"]) for r in curve if r["level"] == lvl and r["mask"] == m
                         and r["series"] == s and r["score"] is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], styles[series.index(s) % len(styles)],
                        color=f"C{masks.index(m) % 10}", label=f"{m} · {s}", ms=4)
        ax.set_title(lvl, fontsize=9)
        ax.set_xlabel("kept visual tokens (%)", fontsize=8)
        ax.set_ylabel("score (0-100)", fontsize=8)
        ax.set_xlim(0, 105)
    for j in range(n, rows_n * cols):
        axes[j // cols][j % cols].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=min(4, len(labels)),
                   title="encoder mask · stage (100 % = the unpruned variant of the mask)", title_fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07 + 0.035 * ((len(labels) - 1) // 4), 1, 1))
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)
