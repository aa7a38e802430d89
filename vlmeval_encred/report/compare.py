"""Cross-model report: several bases (any family, each with its own encoders) side by side.

``encred report --model A B C`` runs the single-model pipeline for each base (no files,
no bootstrap) and puts the comparable parts next to each other:

* per model: category scores and Overall of the full model and of the no-vision
  variant, IG per category and Overall, the best and the worst single mask (k = 1);
* CUR per encoder and category, models as row groups (table and heat map);
* the k-masked curves of all models on one axis, each relative to its own full model
  (mean line, max-min band), since absolute scores of different bases do not compare;
* every cell that is not there, by model, variant and benchmark: a model with an
  incomplete lattice shows what is present and names what is missing.
* where token-budget variants were run (:mod:`.budgets`): each model's token curves and 95 %
  budgets, the unmasked curves of all models relative to their own unpruned scores on one axis.

Files and overwrite policy are those of the single-model report (:mod:`.writers`):
``compare_<models>_<suite>.{xlsx,md,json}`` and two PNGs (three with token budgets).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from . import writers as W
from .api import ReportError, ReportResult
from .score_cache import ScoreCache

OVERALL = "Overall"


@dataclass
class CompareResult:
    """Everything one cross-model report produced (scores 0-100, CUR and IG in %)."""

    suite: str
    models: list[str]
    levels: list[str] = field(default_factory=list)
    """The suite's categories, then ``Overall``."""
    summary: list[dict[str, Any]] = field(default_factory=list)
    """Per model: ``model, encoders, variants_present, variants_total, cells_ok, cells_total``,
    ``full`` / ``no_vision`` / ``ig`` (level -> value), ``best_single_mask``, ``best_single_score``,
    ``worst_single_mask``, ``worst_single_score`` (Overall, k = 1), ``error`` (why nothing was read)."""
    cur: list[dict[str, Any]] = field(default_factory=list)
    """One row per (model, encoder): ``model, encoder`` and level -> CUR."""
    k_curves: list[dict[str, Any]] = field(default_factory=list)
    """Per model and k (Overall): ``model, n_encoders, k, n_subsets, n_present, max, mean, min`` and the
    same relative to the full model in % (``rel_max, rel_mean, rel_min``)."""
    missing_cells: list[dict[str, Any]] = field(default_factory=list)
    """Cells that are not ok: ``model, variant, benchmark, status, reason``."""
    missing_metrics: list[dict[str, str]] = field(default_factory=list)
    """``model, metric, level, needs``."""
    token_curve: list[dict[str, Any]] = field(default_factory=list)
    """Each model's token curve rows (``ReportResult.token_curve`` with ``model``), for its levels."""
    token_budget95: list[dict[str, Any]] = field(default_factory=list)
    """Each model's smallest budget keeping 95 % of its unpruned score (``ReportResult.token_budget95``
    with ``model``; no intervals: the comparison runs without the bootstrap)."""
    out_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["out_dir"] = str(self.out_dir) if self.out_dir else None
        d["files"] = {k: str(v) for k, v in self.files.items()}
        return d


def _rel(v: float | None, full: float | None) -> float | None:
    return None if v is None or not full else 100.0 * v / full


def summarise(model: str, r: ReportResult, levels: list[str]) -> tuple[dict, list[dict], list[dict]]:
    """Summary row, CUR rows and k-curve rows of one model's single report."""
    full, none = r.variants[0]["name"], r.variants[-1]["name"]
    k1 = next((x for x in r.k_curve if x["level"] == OVERALL and x["k"] == 1), {})
    present = sum(1 for v in r.variants if all(c["status"] in ("ok", "stale") for c in r.cells
                                               if c["variant"] == v["name"]))
    row = {"model": model, "encoders": list(r.encoders), "variants_present": present,
           "variants_total": len(r.variants),
           "cells_ok": sum(c["status"] in ("ok", "stale") for c in r.cells), "cells_total": len(r.cells),
           "full": {l: r.scores[full].get(l) for l in levels},
           "no_vision": {l: r.scores[none].get(l) for l in levels},
           "ig": {l: r.ig.get(l) for l in levels},
           "best_single_mask": k1.get("argmax"), "best_single_score": k1.get("max"),
           "worst_single_mask": k1.get("argmin"), "worst_single_score": k1.get("min"), "error": ""}
    cur = [{"model": model, "encoder": e, **{l: r.cur[e].get(l) for l in levels}} for e in r.encoders]
    fo = r.scores[full].get(OVERALL)
    ks = [{"model": model, "n_encoders": len(r.encoders), **{k: x[k] for k in
           ("k", "n_subsets", "n_present", "max", "mean", "min")},
           "rel_max": _rel(x["max"], fo), "rel_mean": _rel(x["mean"], fo), "rel_min": _rel(x["min"], fo)}
          for x in r.k_curve if x["level"] == OVERALL]
    return row, cur, ks


def build_comparison(work_dir: str | Path, models: Sequence[str], suite: str = "paper15",
                     out_dir: str | Path | None = None, suite_file: str | Path | None = None, *,
                     write: bool = True, figures: bool = True, force: bool = False,
                     cache: bool | str | Path = True) -> CompareResult:
    """Compare registered bases ``models`` on ``suite``; see the module docstring.

    Raises :class:`ReportError` for fewer than two distinct models or an unregistered one,
    and :class:`~.writers.OutputConflict` as the single-model report does.  A model with no
    results at all is kept (every cell named as missing), not an error.
    """
    from ..registry import RegistryError, get_base
    from .pipeline import run_pipeline
    from .schema import load_suite

    t0 = time.perf_counter()
    models = list(models)
    if len(models) < 2 or len(set(models)) != len(models):
        raise ReportError(f"--model {' '.join(models)}: a comparison needs two or more distinct base models")
    specs = {}
    for m in models:
        try:
            specs[m] = get_base(m)
        except RegistryError as exc:
            raise ReportError(f"{exc}; a comparison takes registered bases (their encoders come from the "
                              "registry); run `encred report --model X --encoders ...` for others") from None
    S = load_suite(suite, Path(suite_file) if suite_file else None)
    levels = list(S.categories) + [OVERALL]
    sc = ScoreCache.default() if cache is True else ScoreCache(Path(cache) if cache else None)
    res = CompareResult(suite=suite, models=models, levels=levels)
    for m in models:
        try:
            r = run_pipeline(work_dir=Path(work_dir), base_model=m, suite=suite, out_dir=None,
                             suite_file=Path(suite_file) if suite_file else None, n_boot=0, seed=0,
                             encoders=None, write=False, figures=False, cache=sc)
        except ReportError as exc:
            spec = specs[m]
            res.summary.append({"model": m, "encoders": list(spec.encoders), "variants_present": 0,
                                "variants_total": 2 ** len(spec.encoders), "cells_ok": 0,
                                "cells_total": 2 ** len(spec.encoders) * len(S.benchmarks),
                                "full": {l: None for l in levels}, "no_vision": {l: None for l in levels},
                                "ig": {l: None for l in levels}, "best_single_mask": None,
                                "best_single_score": None, "worst_single_mask": None,
                                "worst_single_score": None, "error": str(exc)})
            res.cur += [{"model": m, "encoder": e, **{l: None for l in levels}} for e in spec.encoders]
            res.missing_cells.append({"model": m, "variant": "(all variants)", "benchmark": "(all)",
                                      "status": "missing", "reason": str(exc)})
            continue
        row, cur, ks = summarise(m, r, levels)
        res.summary.append(row)
        res.cur += cur
        res.k_curves += ks
        res.missing_cells += [{"model": m, "variant": c["variant"], "benchmark": c["benchmark"],
                               "status": c["status"], "reason": c["reason"]}
                              for c in r.cells if c["status"] != "ok"]
        res.missing_metrics += [{"model": m, **x} for x in r.missing_metrics
                                if x["level"] in levels and not x["metric"].startswith("bootstrap")]
        res.token_curve += [{"model": m, **x} for x in r.token_curve if x["level"] in levels]
        res.token_budget95 += [{"model": m, **x} for x in r.token_budget95 if x["level"] in levels]
    res.timings["read"] = time.perf_counter() - t0
    if write:
        t = time.perf_counter()
        out = Path(out_dir) if out_dir is not None else Path(work_dir) / "encred_report" / "compare" / stem(
            models, suite)  # one directory per model set: a report's directory holds one report
        _write(res, out, figures, force)
        res.timings["write"] = time.perf_counter() - t
    res.timings["total"] = time.perf_counter() - t0
    return res


def stem(models: Sequence[str], suite: str) -> str:
    """``compare_<m1>+<m2>..._<suite>``; long lists become ``compare_<n>models-<hash>_<suite>``."""
    joined = "+".join(models)
    if len(joined) > 100:
        joined = f"{len(models)}models-" + hashlib.sha256(joined.encode()).hexdigest()[:8]
    return f"compare_{joined}_{suite}"


def _tables(r: CompareResult) -> list[tuple[str, list[str], list[list[Any]]]]:
    lv = r.levels
    s = r.summary
    return [
        ("Comparison", ["model", "encoders", "variants present", "cells ok"]
         + [f"full: {l}" for l in lv] + [f"no vision: {l}" for l in lv] + [f"IG: {l}" for l in lv]
         + ["best single mask", "score", "worst single mask", "score", "note"],
         [[x["model"], x["encoders"], f"{x['variants_present']}/{x['variants_total']}",
           f"{x['cells_ok']}/{x['cells_total']}"] + [x["full"][l] for l in lv] + [x["no_vision"][l] for l in lv]
          + [x["ig"][l] for l in lv] + [x["best_single_mask"], x["best_single_score"], x["worst_single_mask"],
                                        x["worst_single_score"], x["error"]] for x in s]),
        ("CUR", ["model", "encoder"] + lv, [[c["model"], c["encoder"]] + [c[l] for l in lv] for c in r.cur]),
        ("k-masked curves", ["model", "encoders", "k", "n_subsets", "n_present", "max", "mean", "min",
                             "max (% of full)", "mean (% of full)", "min (% of full)"],
         [[k["model"], k["n_encoders"], k["k"], k["n_subsets"], k["n_present"], k["max"], k["mean"], k["min"],
           k["rel_max"], k["rel_mean"], k["rel_min"]] for k in r.k_curves]),
        ("Missing cells", ["model", "variant", "benchmark", "status", "reason"],
         [[c["model"], c["variant"], c["benchmark"], c["status"], c["reason"]] for c in r.missing_cells]),
        ("Missing metrics", ["model", "metric", "level", "needs"],
         [[m["model"], m["metric"], m["level"], m["needs"]] for m in r.missing_metrics]),
    ] + ([
        ("Token curves", ["model", "series", "mask", "variant", "keep (%)", "level", "score", "% of unpruned"],
         [[x["model"], x["series"], x["mask"], x["variant"], x["keep"], x["level"], x["score"], x["retained"]]
          for x in r.token_curve]),
        ("Token 95% budget", ["model", "series", "mask", "level", "smallest budget (keep %)", "% of unpruned kept",
                              "budgets present"],
         [[x["model"], x["series"], x["mask"], x["level"], x["budget"], x["retained"], x["budgets"]]
          for x in r.token_budget95]),
    ] if r.token_curve else [])


def _token_markdown(r: CompareResult) -> list[str]:
    """Per model and stage: the unmasked model's share of its unpruned score at each budget (Overall), and
    the smallest budget keeping 95 % per category (every mask: sheets *Token curves*, *Token 95% budget*)."""
    from .budgets import THRESHOLD, fmt_budget

    full = [x for x in r.token_curve if x["mask"] == "none" and x["level"] == OVERALL and not x["unpruned"]]
    if not r.token_curve:
        return []
    out = ["## Token budgets", "",
           "Models that have token-budget variants (docs/tokens.md). The unmasked model's score at each kept "
           "fraction of its visual tokens, as % of its own unpruned score (Overall); other encoder masks: sheet "
           "*Token curves*.", ""]
    keeps = sorted({x["keep"] for x in full}, reverse=True)
    lines = list(dict.fromkeys((x["model"], x["series"]) for x in full))
    out += [W.md_table(["model", "stage"] + [f"keep{k}" for k in keeps],
                       [[m, s] + [next((x["retained"] for x in full if (x["model"], x["series"], x["keep"]) == (m, s, k)),
                                       None) for k in keeps] for m, s in lines]), ""]
    by = {(x["model"], x["series"], x["level"]): x for x in r.token_budget95 if x["mask"] == "none"}
    rows = list(dict.fromkeys((x["model"], x["series"]) for x in r.token_budget95 if x["mask"] == "none"))
    out += [f"Smallest budget from which on every larger budget keeps >= {THRESHOLD:.0f} % of the unpruned "
            "score (unmasked model):", "",
            W.md_table(["model", "stage"] + r.levels,
                       [[m, s] + [fmt_budget(by[(m, s, l)]) if (m, s, l) in by else "–" for l in r.levels]
                        for m, s in rows]), ""]
    return out


def _markdown(r: CompareResult, figs: list[str]) -> str:
    lv = r.levels
    out = [f"# Encoder contributions compared: {', '.join(r.models)} on {r.suite}", "",
           "Scores on 0-100; CUR and IG in %. Each model is masked within its own checkpoint; "
           "compare contributions (CUR, IG, relative curves), not absolute scores across bases.", ""]
    out += ["## Models", "", W.md_table(["model", "encoders", "variants present", "cells ok"],
                                        [[x["model"], ", ".join(x["encoders"]),
                                          f"{x['variants_present']}/{x['variants_total']}",
                                          f"{x['cells_ok']}/{x['cells_total']}"] for x in r.summary]), ""]
    out += ["## Full model and no-vision variant", "",
            W.md_table(["model", "variant"] + lv,
                       [row for x in r.summary for row in ([x["model"], "full"] + [x["full"][l] for l in lv],
                                                            [x["model"], "no vision"]
                                                            + [x["no_vision"][l] for l in lv])]), ""]
    out += ["## IG (max CUR - min CUR) and single masks (Overall)", "",
            W.md_table(["model"] + [f"IG {l}" for l in lv] + ["best single mask", "score", "worst single mask",
                                                              "score"],
                       [[x["model"]] + [x["ig"][l] for l in lv]
                        + [x["best_single_mask"], x["best_single_score"], x["worst_single_mask"],
                           x["worst_single_score"]] for x in r.summary]), ""]
    out += ["## CUR by category", "", W.md_table(["model", "encoder"] + lv,
                                                 [[c["model"], c["encoder"]] + [c[l] for l in lv]
                                                  for c in r.cur]), ""]
    out += _token_markdown(r)
    if r.missing_cells:
        out += ["## Missing cells", "", "Models with an incomplete lattice are shown with what is present.", "",
                W.md_table(["model", "variant", "benchmark", "status", "why"],
                           [[c["model"], c["variant"], c["benchmark"], c["status"],
                             c["reason"].replace("|", "\\|")] for c in r.missing_cells[:80]]), ""]
        if len(r.missing_cells) > 80:
            out += [f"... and {len(r.missing_cells) - 80} more (sheet 'Missing cells').", ""]
    if r.missing_metrics:
        out += ["## Not computed", "", W.md_table(["model", "metric", "level", "needs"],
                                                  [[m["model"], m["metric"], m["level"], m["needs"]]
                                                   for m in r.missing_metrics[:40]]), ""]
    if figs:
        out += ["## Figures", ""] + [f"![{f}]({f})" for f in figs] + [""]
    return "\n".join(out)


def fig_k_curves(path: Path, rows: list[dict], title: str) -> None:
    """All models' k-masked curves on one axis, relative to each full model: mean line, max-min band."""
    plt = W._plt()
    fig, ax = plt.subplots(figsize=(6.2, 4.0))
    models = list(dict.fromkeys(r["model"] for r in rows))
    for i, m in enumerate(models):
        pts = [r for r in rows if r["model"] == m and r["rel_mean"] is not None]
        if not pts:
            continue
        ks = [r["k"] for r in pts]
        color = f"C{i % 10}"
        ax.fill_between(ks, [r["rel_min"] for r in pts], [r["rel_max"] for r in pts], color=color, alpha=0.18,
                        lw=0)
        ax.plot(ks, [r["rel_mean"] for r in pts], "o-", color=color,
                label=f"{m} ({pts[0]['n_encoders']} encoders)")
    ax.axhline(100, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("encoders masked (k)")
    ax.set_ylabel("Overall score, % of the full model")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8, title="mean; band = max..min", title_fontsize=8)
    W._save(plt, fig, ax, path, title)


def fig_token_curves(path: Path, rows: list[dict], title: str) -> None:
    """Every model's unmasked token curve (Overall), relative to its own unpruned score: a line per
    (model, stage)."""
    plt = W._plt()
    fig, ax = plt.subplots(figsize=(6.2, 4.0))
    pts = [r for r in rows if r["mask"] == "none" and r["level"] == OVERALL and r["retained"] is not None]
    models = list(dict.fromkeys(r["model"] for r in pts))
    series = list(dict.fromkeys(r["series"] for r in pts))
    styles = ["o-", "s--", "^:", "v-."]
    for m, s in dict.fromkeys((r["model"], r["series"]) for r in pts):
        line = sorted((r["keep"], r["retained"]) for r in pts if r["model"] == m and r["series"] == s)
        ax.plot([p[0] for p in line], [p[1] for p in line], styles[series.index(s) % len(styles)],
                color=f"C{models.index(m) % 10}", label=f"{m} · {s}")
    ax.axhline(95, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("kept visual tokens (%)")
    ax.set_ylabel("Overall score, % of the unpruned model")
    ax.set_xlim(0, 105)
    if pts:
        ax.legend(fontsize=8, title="model · stage (dotted: 95 %)", title_fontsize=8)
    W._save(plt, fig, ax, path, title)


def fig_cur_heatmap(path: Path, cur: list[dict], levels: list[str], title: str) -> None:
    """CUR, categories as columns, (model, encoder) rows grouped by model."""
    import numpy as np

    plt = W._plt()
    data = np.array([[np.nan if c[l] is None else c[l] for l in levels] for c in cur], dtype=float)
    fig, ax = plt.subplots(figsize=(2.6 + 1.15 * len(levels), 1.0 + 0.36 * len(cur)))
    finite = data[np.isfinite(data)]
    lim = max(1.0, float(np.abs(finite).max())) if finite.size else 1.0
    im = ax.imshow(np.ma.masked_invalid(data), cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(levels)), levels, rotation=25, ha="right")
    ax.set_yticks(range(len(cur)), [f"{c['model']} · {c['encoder']}" for c in cur], fontsize=8)
    for i in range(len(cur)):
        for j in range(len(levels)):
            ax.text(j, i, "n/a" if not np.isfinite(data[i, j]) else f"{data[i, j]:.1f}", ha="center",
                    va="center", fontsize=7)
    for i in range(1, len(cur)):
        if cur[i]["model"] != cur[i - 1]["model"]:
            ax.axhline(i - 0.5, color="black", lw=1.5)
    fig.colorbar(im, ax=ax, label="CUR (%)")
    W._save(plt, fig, ax, path, title)


def _write(r: CompareResult, out: Path, figures: bool, force: bool) -> None:
    st_name = stem(r.models, r.suite)
    names = {"xlsx": f"{st_name}.xlsx", "markdown": f"{st_name}.md", "json": f"{st_name}.json"}
    figs = {"fig_k_curves": f"{st_name}_k_curves.png", "fig_cur_heatmap": f"{st_name}_cur_heatmap.png"} \
        if figures else {}
    if figures and r.token_curve:
        figs["fig_token_curves"] = f"{st_name}_token_curves.png"
    st = W.SafeWriter(out, st_name, force=force)
    st.check(list(names.values()) + list(figs.values()))
    try:
        st.write(names["xlsx"], lambda p: W.write_xlsx(p, _tables(r)))
        st.write(names["markdown"], lambda p: W.write_text(p, _markdown(r, list(figs.values()))))
        if figs:
            st.write(figs["fig_k_curves"], lambda p: fig_k_curves(
                p, r.k_curves, f"k encoders masked, relative to each full model ({r.suite})"))
            st.write(figs["fig_cur_heatmap"], lambda p: fig_cur_heatmap(
                p, r.cur, r.levels, f"CUR (%) by category ({r.suite})"))
        if "fig_token_curves" in figs:
            st.write(figs["fig_token_curves"], lambda p: fig_token_curves(
                p, r.token_curve, f"Token budgets, relative to each unpruned model ({r.suite})"))
        r.out_dir = out
        r.files = {k: out / v for k, v in {**names, **figs}.items()}
        r.files["manifest"] = out / W.MANIFEST
        st.write(names["json"], lambda p: W.write_json(p, r.to_dict()))
        st.commit()
    except BaseException:
        st.abort()
        r.out_dir, r.files = None, {}
        raise
