"""Glue: locate -> read -> aggregate -> metrics -> bootstrap -> write.  See :func:`api.build_report`."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import bootstrap as bs
from . import budgets as BU
from . import metrics as M
from . import uptodate as U
from . import provenance as RP
from . import sampled as SM
from . import writers as W
from .api import ReportError, ReportResult
from .reader import ModelResults, _Listing
from .schema import Suite, load_suite
from .score_cache import ScoreCache
from .scores import CONSISTENCY_TOL, ScoreError, Units, headline, per_sample

OVERALL = "Overall"
MASK_SEP = "_mask_"
CAVEAT = ("Masking encoders of one fixed checkpoint measures what *this* model relies on; models "
          "retrained on encoder subsets can rank encoders differently (capacity/necessity study). "
          "The all-masked point is the no-vision baseline, not a floor.")


def _registered_encoders(base_model: str, encoders: tuple[str, ...]) -> tuple[str, ...] | None:
    """A registered base's own encoders when ``encoders`` names exactly them (any order or case).

    The variant names and the *kept* sets come from the registry then: ``--encoders b,a`` or
    ``A,B`` would otherwise derive names the registry never registers and, worse, label a
    variant whose encoders are partly on as "no vision".  Any other set (a subset, a
    superset, a misspelling) is refused: for a registered base the registry is the truth.
    Returns ``None`` for an unregistered base (``encoders`` is then the user's definition).
    """
    from ..registry import RegistryError, get_base

    try:
        spec = get_base(base_model)
    except RegistryError:
        return None
    given = [e.strip().lower() for e in encoders]
    if sorted(given) == sorted(spec.encoders) and len(set(given)) == len(given):
        return spec.encoders
    raise ReportError(f"--encoders {','.join(encoders)} does not name the encoders of the registered base "
                      f"{base_model!r}, which are {','.join(spec.encoders)} (in this order); leave --encoders out "
                      "for a registered base (its encoders and variant names come from the registry; a subset would make a partly masked variant the full model "
                      "or the no-vision baseline)")


def _variants(base_model: str, encoders: tuple[str, ...] | None) -> tuple[tuple[str, ...], list[dict]]:
    if encoders is not None and _registered_encoders(base_model, encoders) is not None:
        encoders = None  # same encoders as the registry's: use the registry's names and order
    if encoders is None:
        from ..registry import RegistryError, get_base

        try:
            spec = get_base(base_model)
        except RegistryError as exc:
            raise ReportError(f"{exc}; pass encoders=[...] (CLI: --encoders a,b,c) for an unregistered base") from None
        encoders = spec.encoders
        name = spec.entry_name
    else:
        if len(set(encoders)) != len(encoders) or not encoders:
            raise ReportError(f"encoders {list(encoders)}: expected a non-empty list of distinct names")

        def name(masked: tuple[str, ...]) -> str:
            return base_model if not masked else base_model + MASK_SEP + "_".join(masked)
    rows = []
    for k in range(len(encoders) + 1):
        for masked in itertools.combinations(encoders, k):
            kept = frozenset(encoders) - set(masked)
            rows.append({"name": name(masked), "masked": list(masked),
                         "kept": [e for e in encoders if e in kept], "k": k, "_kept": kept})
    return tuple(encoders), rows


def _weakened(S: Suite, levels: list[str], encs: tuple[str, ...], names: dict[frozenset, str],
              cur: dict[str, dict[str, float | None]], boot_rows: list[dict], ps_issues: list[dict],
              partial: list[dict]) -> list[dict[str, Any]]:
    """Every CUR whose interval is missing or narrowed because an input was partial, with why.

    A CUR at a level rests on the full model's and the leave-one-out variant's per-sample data
    of every benchmark under that level; an unusable per-sample file of either, or a part
    resampled on fewer samples than a variant has, weakens it.  Equal explanations share a mark.
    """
    under: dict[str, list[str]] = {b.name: [b.name] for b in S.benchmarks}
    for c, bl in S.by_category().items():
        under[c] = [b.name for b in bl]
    under[OVERALL] = [b.name for b in S.benchmarks]
    full = frozenset(encs)
    has_ci = {(r["subject"], r["level"]) for r in boot_rows if r["quantity"] == "CUR" and r["lo"] is not None}
    out: list[dict[str, Any]] = []
    marks: dict[tuple, str] = {}
    for lvl in levels:
        benches = set(under[lvl])
        for e in encs:
            if cur[e][lvl] is None:
                continue
            vs = {names[full], names[full - {e}]}
            why = [f"{i['variant']}/{i['benchmark']}: {i['reason']}" for i in ps_issues
                   if i["variant"] in vs and i["benchmark"] in benches]
            why += [f"{p['bench']}/{p['dataset']}: {p['why']}" for p in partial if p["bench"] in benches]
            if not why:
                continue
            interval = (e, lvl) in has_ci
            key = (interval, tuple(why))
            mark = marks.setdefault(key, f"†{len(marks) + 1}")
            out.append({"quantity": "CUR", "subject": e, "level": lvl, "estimate": cur[e][lvl],
                        "interval": interval, "why": why, "mark": mark})
    return out


def _weak_missing(weak: list[dict[str, Any]]) -> list[dict[str, str]]:
    """'Not computed' rows for the intervals that partial per-sample input removed, one per level."""
    by: dict[str, list[dict]] = {}
    for w in weak:
        if not w["interval"]:
            by.setdefault(w["level"], []).append(w)
    return [{"metric": "bootstrap CI of CUR(" + ", ".join(w["subject"] for w in ws) + ")", "level": lvl,
             "needs": "usable per-sample data of the full model and the leave-one-out variants; "
                      + "; ".join(dict.fromkeys(y for w in ws for y in w["why"]))} for lvl, ws in by.items()]


def weak_notes(weak: list[dict[str, Any]]) -> list[str]:
    """One footnote per mark: ``†1 no interval: <why>; <why>``."""
    seen: dict[str, str] = {}
    for w in weak:
        if w["mark"] not in seen:
            what = "interval from partial data" if w["interval"] else "no interval"
            seen[w["mark"]] = f"{w['mark']} {what}: " + "; ".join(w["why"])
    return list(seen.values())


def _mean(vals: list[float | None]) -> float | None:
    return None if not vals or any(v is None for v in vals) else sum(vals) / len(vals)  # type: ignore[arg-type,misc]


def _level_scores(bsc: dict[str, float | None], S: Suite) -> dict[str, float | None]:
    """Benchmark scores plus category means and Overall (the mean of the categories)."""
    row = dict(bsc)
    for c, bl in S.by_category().items():
        row[c] = _mean([bsc[b.name] for b in bl])
    row[OVERALL] = _mean([row[c] for c in S.categories])
    return row


def _token_budgets(budgets: list[BU.BudgetVariant], token_bench: dict[str, dict[str, float | None]],
                   mask_scores: dict[str, dict[str, float | None]], reader: "_Reader", token_reader: "_Reader",
                   S: Suite, encs: tuple[str, ...], levels: list[str], n_boot: int,
                   seed: int) -> tuple[list[dict], list[dict]]:
    """(token curve rows, 95 % budget rows) of the budget variants found (:mod:`.budgets`).

    The bootstrap resamples each dataset part once for the unpruned variants and their budgets
    together (paired), from its own generator, so adding budgets never moves the lattice's intervals.
    """
    scores = dict(mask_scores)
    scores.update({n: _level_scores(b, S) for n, b in token_bench.items()})
    curve = BU.curve_rows(budgets, scores, encs, levels)
    resamples = None
    if n_boot > 0:
        unpruned = {b.kept: b.mask_name for b in budgets}
        parts = []
        for b in S.benchmarks:
            for p in b.parts:
                u = {unpruned[k]: x for k, x in reader.units.get((b.name, p.dataset), {}).items() if k in unpruned}
                u.update(token_reader.units.get((b.name, p.dataset), {}))
                if u:
                    parts.append(bs.BootInput(b.name, p.dataset, u))
        out = bs.BootOutput()
        resamples = bs.level_resamples(parts, {b.name: len(b.parts) for b in S.benchmarks},
                                       {c: [b.name for b in bl] for c, bl in S.by_category().items()},
                                       n_boot, np.random.default_rng(seed), out)
    return curve, BU.budget95_rows(budgets, curve, levels, resamples, bs.MIN_RESAMPLES)


@dataclass
class _Reader:
    """Reads one variant's cells (headline, per-sample units, status) for every benchmark of a suite.

    The mask lattice and the token-budget variants (:mod:`.budgets`) are read by the same code:
    one reader per analysis, each with its own ``units`` (keyed as the caller says: the kept set
    for the lattice, the model name for budgets) and its own per-sample issues.
    """

    work_dir: Path
    S: Suite
    listing: _Listing
    cache: ScoreCache
    unit_keys: dict[int, str | None]
    sampled: dict[str, dict[str, Any]] = field(default_factory=dict)
    full_name: str = ""
    ps_issues: list[dict[str, str]] = field(default_factory=list)
    """Per-sample data that cannot serve the bootstrap."""
    units: dict[tuple[str, str], dict[Any, Units]] = field(default_factory=dict)
    used: set[tuple[str, str]] = field(default_factory=set)
    part_val_map: dict[tuple[str, str, str], float] = field(default_factory=dict)

    def read(self, name: str, key: Any) -> tuple[dict[str, float | None], list[dict[str, Any]]]:
        """(benchmark -> score or None, one cell row per benchmark) of model ``name``."""
        S, cache, sampled, part_val_map = self.S, self.cache, self.sampled, self.part_val_map
        mr = ModelResults(self.work_dir, name, self.listing)
        scores: dict[str, float | None] = {}
        cells: list[dict[str, Any]] = []
        for b in S.benchmarks:
            part_vals: list[float | None] = []
            statuses, reasons, paths, runs, per_sample_state = [], [], [], [], []
            prov = []
            for p in b.parts:
                loc = mr.locate(p)
                prov.append((p.dataset, RP.for_location(loc.run.path if loc.run else None, name, p.dataset)))
                val = None
                status, reason = loc.status, loc.reason
                if loc.headline is not None:
                    paths.append(str(loc.headline))
                    runs.append(loc.run.label if loc.run else "")
                    try:
                        val = headline(loc.headline, p.headline)
                    except ScoreError as exc:
                        status, reason = "unreadable", str(exc)
                n_state = len(per_sample_state)
                if val is not None and p.per_sample is not None:
                    if loc.per_sample is None:
                        per_sample_state.append(f"{p.dataset}: no per-sample file "
                                                f"({' or '.join(p.per_sample.files)})")
                    else:
                        try:
                            u, ukey = cache.units(loc.per_sample, p.per_sample, p.headline,
                                                  lambda: per_sample(loc.per_sample, p.per_sample, p.headline))
                            self.unit_keys[id(u)] = ukey
                            rec = u.score()
                            if abs(rec - val) > CONSISTENCY_TOL:
                                per_sample_state.append(
                                    f"{p.dataset}: per-sample file {loc.per_sample} gives {rec:.3f}, headline "
                                    f"{val:.3f}; not used for intervals")
                            else:
                                self.units.setdefault((b.name, p.dataset), {})[key] = u
                        except ScoreError as exc:
                            per_sample_state.append(f"{p.dataset}: per-sample unreadable: {exc}")
                    if len(per_sample_state) > n_state:
                        self.ps_issues.append({"variant": name, "benchmark": b.name, "dataset": p.dataset,
                                               "file": str(loc.per_sample or ""), "reason": per_sample_state[-1]})
                elif val is not None:
                    per_sample_state.append(f"{p.dataset}: the suite defines no per-sample file")
                sc = SM.cell_of(sampled, name, p.dataset) if status == "missing" else None
                if sc is not None and sc.get("estimate") is not None:
                    rec = sampled[p.dataset]
                    fv = part_val_map.get((self.full_name, b.name, p.dataset))
                    val = sc["estimate"] if name == rec["full"] else (None if fv is None else fv + sc["estimate"])
                    if val is not None:
                        status, reason = "sampled", SM.note(sc, rec)
                        self.used.add((name, p.dataset))
                        per_sample_state.append(f"{p.dataset}: sampled cell (adaptive sweep); interval from its "
                                                "confidence sequence, not the bootstrap")
                if val is not None and status in ("ok", "stale", "sampled"):
                    part_val_map[(name, b.name, p.dataset)] = val
                statuses.append(status)
                if reason:
                    reasons.append(f"{p.dataset}: {reason}" if len(b.parts) > 1 else reason)
                reasons += [f"note: {n}" for n in loc.notes]
                part_vals.append(val if status in ("ok", "stale", "sampled") else None)
            order = ["unreadable", "missing", "sampled", "stale", "ok"]
            status = next(s for s in order if s in statuses)
            score = _mean(part_vals)
            scores[b.name] = score
            cells.append({"variant": name, "benchmark": b.name, "status": status,
                          "score": score, "run": ", ".join(runs), "path": "; ".join(paths),
                          "reason": "; ".join(reasons), "per_sample": "; ".join(per_sample_state) or "ok",
                          "provenance": RP.summarize(prov)})
        return scores, cells


def run_pipeline(*, work_dir: Path, base_model: str, suite: str, out_dir: Path | None,
                 suite_file: Path | None, n_boot: int, seed: int, encoders: tuple[str, ...] | None,
                 write: bool, figures: bool, force: bool = False,
                 cache: ScoreCache | None = None) -> ReportResult:
    t = time.perf_counter()
    cache = cache or ScoreCache(None)
    unit_keys: dict[int, str | None] = {}  # id(Units) -> cache key, for the bootstrap's key
    timings: dict[str, float] = {}
    S: Suite = load_suite(suite, suite_file)
    encs, variants = _variants(base_model, encoders)
    if not work_dir.is_dir():
        raise ReportError(f"work dir {work_dir} does not exist (VLMEvalKit's --work-dir, e.g. ./outputs)")
    listing = _Listing()
    reader = _Reader(work_dir, S, listing, cache, unit_keys,
                     sampled=SM.read_sampled(work_dir, base_model),  # adaptive sweeps: where no complete result exists
                     full_name=variants[0]["name"])
    cells: list[dict[str, Any]] = []
    bench_scores: dict[frozenset, dict[str, float | None]] = {}
    for v in variants:
        bench_scores[v["_kept"]], vcells = reader.read(v["name"], v["_kept"])
        cells += vcells
    ps_issues, units, used, part_val_map = reader.ps_issues, reader.units, reader.used, reader.part_val_map
    sampled = reader.sampled
    budgets, budget_notes = BU.discover((n for n, e in listing.entries(work_dir).items() if e.is_dir()),
                                        variants, base_model, encs)
    token_reader = _Reader(work_dir, S, listing, cache, unit_keys)
    token_bench: dict[str, dict[str, float | None]] = {}
    token_cells: list[dict[str, Any]] = []
    for bv in budgets:
        token_bench[bv.name], vcells = token_reader.read(bv.name, bv.name)
        token_cells += vcells
    timings["read"] = time.perf_counter() - t
    if not any(c["status"] in ("ok", "stale", "sampled") for c in cells):
        first = cells[0]["reason"] if cells else ""
        raise ReportError(f"no results at all for {base_model} in {work_dir} (suite {suite}); "
                          f"e.g. {cells[0]['variant']}/{cells[0]['benchmark']}: {first}")

    t = time.perf_counter()
    cats = S.by_category()
    levels = [b.name for b in S.benchmarks] + list(S.categories) + [OVERALL]
    scores = {kept: _level_scores(bsc, S) for kept, bsc in bench_scores.items()}
    missing: list[dict[str, str]] = []
    games = {lvl: {k: s[lvl] for k, s in scores.items() if s[lvl] is not None} for lvl in levels}
    full = frozenset(encs)
    cur = {e: {lvl: M.cur(games[lvl], encs, e) for lvl in levels} for e in encs}
    igs = {lvl: M.ig({e: cur[e][lvl] for e in encs}) for lvl in levels}
    names = {v["_kept"]: v["name"] for v in variants}
    for lvl in levels:
        g = games[lvl]
        if full not in g:
            missing.append({"metric": "CUR, IG", "level": lvl, "needs": f"{names[full]} scored at this level"})
        else:
            lack = [names[full - {e}] for e in encs if full - {e} not in g]
            if lack:
                missing.append({"metric": "CUR (some encoders), IG", "level": lvl,
                                "needs": "leave-one-out variants " + ", ".join(lack)})
    k_rows = []
    for lvl in levels:
        for r in M.k_curve(games[lvl], encs):
            k_rows.append({"level": lvl, **r})
    cap = M.capacity_necessity(games[OVERALL], encs)
    pair = M.pairing(games[OVERALL], encs)
    if not pair.get("available"):
        missing.append({"metric": "anchor + complement pairing", "level": OVERALL, "needs": pair["needs"]})
    shap_levels: dict[str, dict] = {}
    for lvl in levels:
        lack = M.lattice_missing(games[lvl], encs)
        if lack:
            if lvl == OVERALL or lvl in S.categories:
                missing.append({"metric": "Shapley, Banzhaf, interactions", "level": lvl,
                                "needs": f"all {2 ** len(encs)} variants; missing masks: "
                                         + ", ".join(lack[:8]) + (" ..." if len(lack) > 8 else "")})
        else:
            shap_levels[lvl] = M.shapley(games[lvl], encs)
    timings["metrics"] = time.perf_counter() - t

    t = time.perf_counter()
    boot_rows: list[dict] = []
    if n_boot > 0:
        parts = [bs.BootInput(b.name, p.dataset, units[(b.name, p.dataset)])
                 for b in S.benchmarks for p in b.parts if (b.name, p.dataset) in units]
        n_parts = {b.name: len(b.parts) for b in S.benchmarks}
        cat_names = {c: [b.name for b in bl] for c, bl in cats.items()}

        def boot() -> dict:
            bo = bs.paired_bootstrap(parts, n_parts, cat_names, encs, scores, n_boot=n_boot, seed=seed)
            return {"rows": bo.rows, "missing": bo.missing, "notes": bo.notes, "partial": bo.partial}

        keys = [[p.bench, p.dataset, [[sorted(k), unit_keys.get(id(u))] for k, u in p.units.items()]]
                for p in parts]
        if any(uk is None for k in keys for _, uk in k[2]):
            bo = boot()
        else:
            bo = cache.json_entry(["bootstrap-v2", keys, n_parts, cat_names, list(encs), n_boot, seed,
                                   sorted([sorted(k), sorted(v.items())] for k, v in scores.items())], boot)
        boot_rows = bo["rows"]
        missing += bo["missing"]
        boot_notes = bo["notes"]
        weak = _weakened(S, levels, encs, names, cur, boot_rows, ps_issues, bo["partial"])
        missing += _weak_missing(weak)
    else:
        boot_notes = ["bootstrap disabled (n_boot=0)"]
        weak = []
    if used:
        alpha_rows = SM.interval_rows(sampled=sampled, used=used, part_vals=part_val_map,
                                      weights=SM.level_weights(S, levels, OVERALL), variants=variants,
                                      encoders=encs, scores={names[k]: sc for k, sc in scores.items()}, cur=cur)
        keys = {(r["quantity"], r["subject"], r["level"]) for r in alpha_rows}
        boot_rows = [r for r in boot_rows if (r["quantity"], r["subject"], r["level"]) not in keys] + alpha_rows
        boot_notes = boot_notes + [
            f"{len(used)} cells are sampled (adaptive sweep, {SM.MARK}): their scores are estimates from n of N "
            "questions and every interval resting on them is the sweep's anytime-valid confidence sequence "
            "(docs/sweeps.md, 'Adaptive sweeps'), not the bootstrap"]
    timings["bootstrap"] = time.perf_counter() - t

    t = time.perf_counter()
    res = ReportResult(base_model=base_model, suite=suite, encoders=encs, out_dir=None)
    if budgets:
        res.token_curve, res.token_budget95 = _token_budgets(
            budgets, token_bench, {names[k]: sc for k, sc in scores.items()}, reader, token_reader, S, encs, levels,
            n_boot, seed)
        res.token_variants = [{"name": b.name, "mask_variant": b.mask_name, "masked": list(b.masked),
                               "keep": b.spec.keep, "stage": b.spec.stage, "layer": b.spec.layer,
                               "series": b.series} for b in budgets]
        res.token_cells = token_cells
    timings["token budgets"] = time.perf_counter() - t
    res.variants = [{k: v[k] for k in ("name", "masked", "kept", "k")} for v in variants]
    res.levels = levels
    res.categories = list(S.categories)
    res.scores = {names[k]: s for k, s in scores.items()}
    res.cur, res.ig, res.k_curve = cur, igs, k_rows
    res.capacity_necessity, res.pairing = cap, pair
    res.shapley = shap_levels.get(OVERALL)
    res.shapley_levels = shap_levels
    res.bootstrap = boot_rows
    res.cells = cells
    res.missing_metrics = missing
    res.per_sample_issues = ps_issues
    res.weakened = weak
    res.provenance_warnings = RP.warnings(cells, names[full], {e: names[full - {e}] for e in encs})
    res.notes = boot_notes + [f"provenance: {m}" for m in res.provenance_warnings] + [
        f"token budgets: {m}" for m in budget_notes]
    res.n_boot, res.seed = n_boot, seed
    res.sampled = [{"variant": c["variant"], "benchmark": c["benchmark"], "score": c["score"], "note": c["reason"]}
                   for c in cells if c["status"] == "sampled"]
    if write:
        t = time.perf_counter()
        out = out_dir or (work_dir / "encred_report" / base_model / suite)
        _write(res, out, figures, force)
        timings["write"] = time.perf_counter() - t
    res.timings.update(timings)
    return res


def _tables(r: ReportResult) -> list[tuple[str, list[str], list[list[Any]]]]:
    lv = r.levels
    t = [("Scores", ["variant", "masked", "kept"] + lv,
          [[v["name"], v["masked"] or "-", v["kept"] or "- (no vision)"] + [r.scores[v["name"]][l] for l in lv]
           for v in r.variants]),
         ("CUR", ["encoder"] + lv, [[e] + [r.cur[e][l] for l in lv] for e in r.encoders]
          + [["IG"] + [r.ig[l] for l in lv]]),
         ("k-masked curve", ["level", "k", "n_subsets", "n_present", "max", "min", "mean", "argmax", "argmin"],
          [[x[k] for k in ("level", "k", "n_subsets", "n_present", "max", "min", "mean", "argmax", "argmin")]
           for x in r.k_curve]),
         ("Capacity-Necessity", ["encoder", "capacity", "necessity", "CUR (%)"],
          [[x["encoder"], x["capacity"], x["necessity"], x["cur"]] for x in r.capacity_necessity]),
         ("Shapley", ["level", "encoder", "shapley", "banzhaf"],
          [[l, e, s["values"][e], s["banzhaf"][e]] for l, s in r.shapley_levels.items() for e in r.encoders]),
         ("Interactions", ["level", "pair", "shapley interaction"],
          [[l, p, val] for l, s in r.shapley_levels.items() for p, val in s["interaction"].items()]),
         ("Bootstrap", ["quantity", "subject", "level", "estimate", "lo (2.5%)", "hi (97.5%)", "excludes 0"],
          [[b["quantity"], b["subject"], b["level"], b["estimate"], b["lo"], b["hi"], b["distinguishable"]]
           for b in r.bootstrap]),
         ("Cells", ["variant", "benchmark", "status", "score", "run", "path", "reason", "per-sample"],
          [[c["variant"], c["benchmark"], c["status"], c["score"], c["run"], c["path"], c["reason"],
            c["per_sample"]] for c in r.cells]),
         ("Missing metrics", ["metric", "level", "needs"],
          [[m["metric"], m["level"], m["needs"]] for m in r.missing_metrics]),
         ("Per-sample issues", ["variant", "benchmark", "dataset", "file", "reason"],
          [[i["variant"], i["benchmark"], i["dataset"], i["file"], i["reason"]] for i in r.per_sample_issues]),
         ("Weakened numbers", ["mark", "quantity", "subject", "level", "estimate", "interval", "why"],
          [[w["mark"], w["quantity"], w["subject"], w["level"], w["estimate"],
            "partial data" if w["interval"] else "none", "; ".join(w["why"])] for w in r.weakened]),
         RP.sheet(r.cells)]
    if r.token_curve:
        t += [("Token curve", ["series", "mask", "variant", "keep (%)", "level", "score", "% of unpruned"],
               [[x["series"], x["mask"], x["variant"], x["keep"], x["level"], x["score"], x["retained"]]
                for x in r.token_curve]),
              ("Token 95% budget", ["series", "mask", "level", "smallest budget (keep %)", "% of unpruned kept",
                                    "budget lo (2.5%)", "budget hi (97.5%)", "kept lo", "kept hi", "budgets present",
                                    "interval"],
               [[x["series"], x["mask"], x["level"], x["budget"], x["retained"], x["lo"], x["hi"],
                 x["retained_lo"], x["retained_hi"], x["budgets"], x["interval"]] for x in r.token_budget95]),
              ("Token cells", ["variant", "benchmark", "status", "score", "run", "path", "reason", "per-sample"],
               [[c["variant"], c["benchmark"], c["status"], c["score"], c["run"], c["path"], c["reason"],
                 c["per_sample"]] for c in r.token_cells])]
    return t


def _token_markdown(r: ReportResult) -> list[str]:
    """The 'Token budgets' section: mask x budget per series (Overall), the 95 % budgets, bad cells."""
    if not r.token_curve:
        return []
    top = r.categories + [OVERALL]
    out = ["## Token budgets", "",
           f"{len(r.token_variants)} token-budget variants (docs/tokens.md). Score at each kept fraction of the "
           "visual tokens; 100 % is the unpruned variant of the same encoder mask, `(n %)` the score as a share "
           "of it. Per-category curves: sheet *Token curve* and the figure.", ""]
    for series in dict.fromkeys(x["series"] for x in r.token_curve):
        head, rows = BU.table_mask_by_budget(r.token_curve, series, OVERALL)
        out += [f"### Stage {series}: encoder mask x budget ({OVERALL})", "", W.md_table(head, rows), ""]
    boot = r.n_boot > 0
    out += [f"### Smallest budget keeping >= {BU.THRESHOLD:.0f} % of the unpruned score", "",
            "The smallest budget from which on every larger budget present keeps the threshold"
            + (f"; `[a, b]` = 95 % interval of that budget over {r.n_boot} paired bootstrap resamples"
               if boot else "") + ". `none below 100 %`: no pruned budget present keeps it.", ""]
    by = {(x["series"], x["mask"], x["level"]): x for x in r.token_budget95}
    keys = list(dict.fromkeys((x["series"], x["mask"]) for x in r.token_budget95))
    out += [W.md_table(["stage", "mask"] + top,
                       [[s, m] + [BU.fmt_budget(by[(s, m, l)]) if (s, m, l) in by else "–" for l in top]
                        for s, m in keys]), ""]
    no_ci = sorted({x["interval"] for x in r.token_budget95 if x["level"] in top and x["interval"] not in ("ok", "")})
    if boot and no_ci:
        out += ["Without an interval: " + "; ".join(no_ci) + ".", ""]
    bad = [c for c in r.token_cells if c["status"] != "ok"]
    if bad:
        out += [W.md_table(["token variant", "benchmark", "status", "why"],
                           [[c["variant"], c["benchmark"], c["status"], c["reason"].replace("|", "\\|")]
                            for c in bad[:40]]), ""]
    return out


def _markdown(r: ReportResult, figs: list[str]) -> str:
    full = r.variants[0]["name"]
    none = r.variants[-1]["name"]
    ci = {(b["subject"], b["level"]): b for b in r.bootstrap if b["quantity"] == "CUR"}
    top = r.categories + [OVERALL]
    n_ok = sum(c["status"] == "ok" for c in r.cells)
    out = [f"# Encoder contributions: {r.base_model} on {r.suite}", "",
           f"Encoders: {', '.join(r.encoders)}. {len(r.variants)} variants x "
           f"{len(r.levels) - len(top)} benchmarks = {len(r.cells)} cells: {n_ok} ok, "
           + ", ".join(f"{sum(c['status'] == s for c in r.cells)} {s}"
                       for s in ("sampled", "stale", "missing", "unreadable"))
           + ". Scores on 0-100; CUR in %.", ""]
    if r.per_sample_issues:
        out += [f"**{len(r.per_sample_issues)} cell(s) without usable per-sample data** (their scores are used; "
                "the intervals that need them are missing or narrowed, marked † below; see *Per-sample data "
                "not usable*).", ""]
    wmark = {(w["subject"], w["level"]): w["mark"] for w in r.weakened}
    out += SM.markdown_section(r, W.md_table)

    def cur_cell(e: str, lvl: str) -> str:
        v = r.cur[e][lvl]
        b = ci.get((e, lvl))
        s = W.fmt(v)
        if b and b["lo"] is not None:
            s += f" [{b['lo']:.1f}, {b['hi']:.1f}]" + ("*" if b["distinguishable"] else "")
        if (e, lvl) in wmark:
            s += " " + wmark[(e, lvl)]
        if b and b.get("sampled"):
            s += " " + SM.MARK
        return s

    out += ["## Scores", "", W.md_table(["variant"] + top,
                                         [[full] + [r.scores[full][l] for l in top],
                                          [none + " (no vision)"] + [r.scores[none][l] for l in top]]), ""]
    out += ["## CUR (leave-one-out), with 95% paired-bootstrap intervals", "",
            "`*` = the interval excludes 0." + (f" `{SM.MARK}` = rests on sampled cells (adaptive sweep): "
                                                 "anytime-valid confidence sequence, not the bootstrap."
                                                 if r.sampled else ""), "",
            W.md_table(["encoder"] + top, [[e] + [cur_cell(e, l) for l in top] for e in r.encoders]
                       + [["IG (max - min)"] + [r.ig[l] for l in top]]), ""]
    notes = weak_notes([w for w in r.weakened if w["level"] in top])
    if notes:
        out += [n.replace("|", "\\|") + "  " for n in notes] + [""]
    ko = [x for x in r.k_curve if x["level"] == OVERALL]
    out += ["## k-masked curve (Overall)", "",
            W.md_table(["k masked", "subsets present", "max", "mean", "min", "best", "worst"],
                       [[x["k"], f"{x['n_present']}/{x['n_subsets']}", x["max"], x["mean"], x["min"],
                         x["argmax"], x["argmin"]] for x in ko]), ""]
    out += _token_markdown(r)
    out += ["## Capacity and necessity (Overall)", "",
            W.md_table(["encoder", "capacity (alone)", "necessity (drop when removed)", "CUR %"],
                       [[x["encoder"], x["capacity"], x["necessity"], x["cur"]] for x in r.capacity_necessity]), ""]
    p = r.pairing
    if p.get("available"):
        out += [f"Anchor {p['anchor']} (highest capacity) + complement {p['complement']}: "
                f"{W.fmt(p['anchor_pair_score'])}; the two highest-capacity encoders "
                f"{' + '.join(p['top2_capacity_pair'])}: {W.fmt(p['top2_capacity_pair_score'])}; "
                f"full model: {W.fmt(p['full'])}.", ""]
    else:
        out += [f"Anchor + complement pairing not available: needs {p.get('needs')}.", ""]
    if r.shapley:
        s = r.shapley
        out += ["## Shapley values and interactions (Overall)", "",
                W.md_table(["encoder", "Shapley", "Banzhaf"],
                           [[e, s["values"][e], s["banzhaf"][e]] for e in r.encoders]), "",
                f"Sum of Shapley values {W.fmt(s['sum'])} = v(all) - v(none) {W.fmt(s['v_all_minus_v_none'])}"
                f" ({'check passed' if s['efficiency_ok'] else 'CHECK FAILED'}).", "",
                "Pairwise Shapley interaction (> 0 synergy, < 0 redundancy):", "",
                W.md_table(["pair", "interaction"],
                           sorted(([k.replace("|", " + "), val] for k, val in s["interaction"].items()),
                                  key=lambda x: x[1])), ""]
    if r.missing_metrics:
        out += ["## Not computed", "", W.md_table(["metric", "level", "needs"],
                                                   [[m["metric"], m["level"], m["needs"]]
                                                    for m in r.missing_metrics]), ""]
    probs = [c for c in r.cells if c["status"] != "ok"]
    if probs:
        out += ["## Cells that are not ok", "",
                W.md_table(["variant", "benchmark", "status", "why"],
                           [[c["variant"], c["benchmark"], c["status"], c["reason"].replace("|", "\\|")]
                            for c in probs[:60]]), ""]
        if len(probs) > 60:
            out += [f"... and {len(probs) - 60} more (sheet 'Cells' of the workbook).", ""]
    if r.per_sample_issues:
        out += ["## Per-sample data not usable", "",
                "The headline score of these cells is used; the bootstrap cannot use their per-sample data.", "",
                W.md_table(["variant", "benchmark", "why"],
                           [[i["variant"], i["benchmark"], i["reason"].replace("|", "\\|")]
                            for i in r.per_sample_issues[:60]]), ""]
        if len(r.per_sample_issues) > 60:
            out += [f"... and {len(r.per_sample_issues) - 60} more (sheet 'Per-sample issues').", ""]
    out += RP.markdown(r.cells, r.provenance_warnings, W.md_table)
    if figs:
        out += ["## Figures", ""] + [f"![{f}]({f})" for f in figs] + [""]
    out += ["## Caveat", "", CAVEAT, ""]
    return "\n".join(out)


def _interval_rows(r: ReportResult, top: list[str]) -> list[dict]:
    """CUR rows of the intervals figure, in encoder x level order: each bootstrap row, plus every
    CUR that partial input left without an interval (drawn as its estimate, with its mark)."""
    ci = {(b["subject"], b["level"]): b for b in r.bootstrap if b["quantity"] == "CUR"}
    wk = {(w["subject"], w["level"]): w for w in r.weakened}
    rows = []
    for lvl in top:
        for e in r.encoders:
            b, w = ci.get((e, lvl)), wk.get((e, lvl))
            if b is None and w is None:
                continue
            row = dict(b) if b else {"quantity": "CUR", "subject": e, "level": lvl, "estimate": w["estimate"],
                                     "lo": None, "hi": None, "distinguishable": None}
            row["mark"] = w["mark"] if w else ""
            rows.append(row)
    return rows


def _write(r: ReportResult, out: Path, figures: bool, force: bool) -> None:
    stem = f"{r.base_model}_{r.suite}"
    names = {"xlsx": f"{stem}.xlsx", "markdown": f"{stem}.md", "json": f"{stem}.json"}
    figs = {}
    if figures:
        figs = {"fig_cur_heatmap": f"{stem}_cur_heatmap.png", "fig_k_curve": f"{stem}_k_curve.png"}
        if any(b["quantity"] == "CUR" and b["lo"] is not None for b in r.bootstrap) or r.weakened:
            figs["fig_intervals"] = f"{stem}_intervals.png"
        if r.token_curve:
            figs["fig_token_curves"] = f"{stem}_token_curves.png"
    all_names = list(names.values()) + list(figs.values())
    digest = U.content_digest(r, all_names + [W.MANIFEST])
    if U.is_current(out, stem, all_names, digest):
        r.out_dir = out
        r.files = {k: out / v for k, v in {**names, **figs}.items()}
        r.files["manifest"] = out / W.MANIFEST
        r.notes.append(f"{out}: inputs and output files unchanged since the last report; nothing rewritten")
        return
    st = W.SafeWriter(out, stem, force=force)
    st.check(all_names)
    try:
        st.write(names["xlsx"], lambda p: W.write_xlsx(p, _tables(r)))
        st.write(names["markdown"], lambda p: W.write_text(p, _markdown(r, list(figs.values()))))
        top = r.categories + [OVERALL]
        if "fig_cur_heatmap" in figs:
            st.write(figs["fig_cur_heatmap"], lambda p: W.fig_cur_heatmap(
                p, top, list(r.encoders), r.cur, f"CUR (%) of {r.base_model}'s encoders",
                marks={(w["subject"], w["level"]): w["mark"] for w in r.weakened if w["level"] in top},
                notes=weak_notes([w for w in r.weakened if w["level"] in top])))
            st.write(figs["fig_k_curve"], lambda p: W.fig_k_curve(
                p, [x for x in r.k_curve if x["level"] == OVERALL], f"{r.base_model}: k encoders masked"))
        if "fig_intervals" in figs:
            st.write(figs["fig_intervals"], lambda p: W.fig_intervals(
                p, [SM.figure_row(b) for b in _interval_rows(r, top)], f"{r.base_model}: CUR intervals",
                notes=weak_notes([w for w in r.weakened if w["level"] in top])))
        if "fig_token_curves" in figs:
            st.write(figs["fig_token_curves"], lambda p: BU.fig_token_curves(
                p, r.token_curve, top, f"{r.base_model}: score against kept visual tokens"))
        r.out_dir = out
        r.files = {k: out / v for k, v in {**names, **figs}.items()}
        r.files["manifest"] = out / W.MANIFEST
        st.write(names["json"], lambda p: W.write_json(p, r.to_dict()))
        st.commit()
        U.mark(out, stem, digest)
    except BaseException:
        st.abort()
        r.out_dir, r.files = None, {}
        raise
