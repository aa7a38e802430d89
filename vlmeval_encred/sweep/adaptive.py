"""Adaptive lattice evaluation: answer questions in a seeded random order, in rounds, and stop
each (variant, dataset) cell once its anytime-valid interval meets the target.

Per dataset:

* **Units.** A unit is what VLMEvalKit scores as one outcome: a question, or for circular
  MCQ datasets (MMBench, CCBench, ``*_circular``) a circular group -- the rows sharing
  ``g_index`` (VLMEvalKit's own ``mcq_circular_eval`` takes ``g_index`` when the data has it,
  else ``index % 1e6``).  A group is always answered and scored together.
* **Order.** ``numpy.random.default_rng(seed).permutation`` of the sorted unit ids, stored in
  ``plan.json``; a resumed sweep continues the same order (another ``--seed`` is refused).
* **Rounds.** Every open variant and the full model answer the next ``round_size`` units of
  the order (paired: the same questions), through the sweep engine's per-sample path
  (encoders shared, subsets decoded as a batch).  Answers go to an append-only checkpoint.
* **Scoring.** After each round every new prediction is scored by VLMEvalKit itself:
  ``dataset.evaluate`` (judge ``exact_matching``) on a prediction file of that round's rows,
  and the per-sample outcome read back with the report's reader
  (:func:`vlmeval_encred.report.scores.per_sample` with the suite's per-sample spec).
* **Stopping.** Each variant's paired differences ``d_i = 100 (x_variant - x_full)`` in
  ``[-100, 100]`` feed a without-replacement betting confidence sequence
  (:mod:`.confseq`); :class:`.confseq.StopRule` stops the cell.
* Datasets whose score is not a mean of independent per-question outcomes, or needs an
  external judge, run in full through :func:`.engine.run_sweep` (:func:`scoring_plan` says
  which, and why).

Everything lives in ``<work_dir>/encred_adaptive/<base>/<dataset>/`` -- ``plan.json``,
``answers.jsonl`` (checkpoint), ``scores.json`` (per-unit outcomes), ``cells.json``
(per variant: n of N, estimate, interval, status, rule, seed) and, per variant, the
prediction file of the questions answered so far with a provenance sidecar that says
"sampled n of N" -- never where ``run.py`` or ``encred status`` would take it for a run.
A plain ``encred sweep`` of the same base and dataset imports these answers
(:func:`import_answers`) and computes only the rest, which is how a sampled cell is
completed (``encred sweep --complete``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .. import provenance
from ..registry import BaseModelSpec, Entry
from . import predfiles
from .checkpoint import SweepCheckpoint
from .confseq import BettingCS, StopRule
from .engine import DatasetReport, SweepError, _build_dataset, answer_sample, load_model, run_sweep
from .locks import LockHeld, hold
from .protocol import support_for

log = logging.getLogger("vlmeval_encred")

ADAPTIVE_DIR = "encred_adaptive"
JUDGE = "exact_matching"
GRID = 2001
CIRCULAR_KEYS = ("mmbench", "ccbench", "circular", "mmcr")  # VLMEvalKit's own test in ImageMCQDataset


def adaptive_dir(work_dir: str | os.PathLike, base: str, dataset: str) -> Path:
    return Path(work_dir) / ADAPTIVE_DIR / base / dataset


# --- which datasets can be sampled ---------------------------------------------------------

@dataclass
class ScoringPlan:
    dataset: str
    adaptive: bool
    how: str  # what a unit is and how it is scored, or why the dataset runs in full
    per_sample: Any = None
    headline: Any = None
    circular: bool = False


FULL_RULES = {
    "mme": "MME's score is a sum over tasks of per-image accuracy and accuracy+ (two questions per image, "
           "weights set by the task sizes), not a mean of independent per-question outcomes",
    "pairs": "MMVP scores a pair of questions together (both right), and pairs are consecutive indices",
    "mathvista": "MathVista's answers are extracted by an LLM judge (external API)",
}


def scoring_plan(dataset: Any, name: str, suite_file: str | None = None) -> ScoringPlan:
    """Whether ``name`` can be sampled question by question, from its evaluation type.

    The suite's per-sample spec decides where the dataset is in a suite (its rule names how
    VLMEvalKit scores each sample); otherwise a plain multiple-choice dataset
    (``TYPE == 'MCQ'`` evaluated by ``ImageMCQDataset.evaluate``, e.g. a ``$LMUData`` TSV) is
    sampled with the ``mcq`` spec; anything else runs in full."""
    part = _suite_part(name, suite_file)
    circular = any(k in name.lower() for k in CIRCULAR_KEYS)
    if part is not None:
        ps = part.per_sample
        if ps is None:
            return ScoringPlan(name, False, "the suite defines no per-sample outcome for it")
        if ps.rule in FULL_RULES:
            return ScoringPlan(name, False, FULL_RULES[ps.rule])
        if ps.group_mean:
            return ScoringPlan(name, False, f"its score is a mean over '{ps.group_mean}' of per-group means "
                                            "(a stratified mean), not a mean over questions")
        if ps.filter:
            return ScoringPlan(name, False, f"its score counts only rows with {dict(ps.filter)}")
        if ps.rule == "column":
            how = ("circular group (rows sharing g_index), 0/1 hit, exact matching" if ps.id == "g_index"
                   else "question, 0/1 hit, exact matching")
            return ScoringPlan(name, True, how, ps, part.headline, circular=ps.id == "g_index")
        if ps.rule == "vqa_match":
            return ScoringPlan(name, True, f"question, VQA match ({ps.reducer}) in [0, 1], no judge", ps, part.headline)
        if ps.rule == "ocrbench":
            return ScoringPlan(name, True, "question, OCRBench substring rule, 0/1", ps, part.headline)
        return ScoringPlan(name, False, f"per-sample rule {ps.rule!r} is not a per-question mean")
    from vlmeval.dataset.image_mcq import ImageMCQDataset

    if getattr(dataset, "TYPE", None) == "MCQ" and type(dataset).evaluate is ImageMCQDataset.evaluate:
        from ..report.schema import HeadlineSpec, PerSampleSpec

        files = tuple(f"{{model}}_{{dataset}}_{{judge}}_result.{x}" for x in ("xlsx", "tsv", "json"))
        ps = PerSampleSpec(files=files, rule="column", column="hit", id="g_index" if circular else "index")
        hl = HeadlineSpec(files=("{model}_{dataset}_acc.csv",), column="Overall", scale=100.0)
        return ScoringPlan(name, True, ("circular group, 0/1 hit, exact matching" if circular
                                        else "question, 0/1 hit, exact matching"), ps, hl, circular=circular)
    return ScoringPlan(name, False, f"not in the suite file and not a plain multiple-choice dataset "
                                    f"(TYPE {getattr(dataset, 'TYPE', '?')!r}, {type(dataset).__name__}): "
                                    "its per-question scoring is not known here")


def _suite_part(name: str, suite_file: str | None):
    from ..report.schema import load_suite
    from ..suites import load_raw

    raw = load_raw(suite_file)
    for s in (raw.get("suites") or {}):
        for b in load_suite(s, suite_file).benchmarks:
            for p in b.parts:
                if p.dataset == name:
                    return p
    return None


# --- units ---------------------------------------------------------------------------------

def _uid(v: Any) -> str:
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return str(v)


def unit_ids(data: Any, circular: bool) -> list[str]:
    """The unit of each row: its index, or its circular group as VLMEvalKit forms it."""
    if not circular:
        return [_uid(i) for i in data["index"]]
    if "g_index" in data:
        return [_uid(g) for g in data["g_index"]]
    return [str(int(int(i) % 1_000_000)) for i in data["index"]]


def _sort_key(u: str) -> tuple:
    try:
        return (0, int(u), "")
    except ValueError:
        return (1, 0, u)


def unit_order(units: Sequence[str], seed: int) -> list[str]:
    uniq = sorted(set(units), key=_sort_key)
    perm = np.random.default_rng(seed).permutation(len(uniq))
    return [uniq[i] for i in perm]


# --- state ---------------------------------------------------------------------------------

def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False))
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def cell_interval(diffs: Sequence[float], N: int, alpha: float, lo: float = -100.0, hi: float = 100.0,
                  grid: int = GRID) -> tuple[float, float]:
    cs = BettingCS(N, alpha, lo, hi, grid)
    cs.extend(diffs)
    return cs.interval()


@dataclass
class AdaptiveDatasetReport:
    dataset: str
    adaptive: bool
    how: str
    units: int = 0
    questions: int = 0
    answered_questions: int = 0
    """Questions the full model answered (every open variant answered a prefix of them)."""
    variant_answers: int = 0
    """Answers computed or reused, summed over variants (a full sweep gives questions x variants)."""
    rounds: int = 0
    cells: dict[str, dict] = field(default_factory=dict)
    engine: DatasetReport | None = None


@dataclass
class AdaptiveReport:
    base: str
    rule: StopRule
    seed: int
    datasets: list[AdaptiveDatasetReport] = field(default_factory=list)
    added_full: bool = False
    level: str = "dataset"


LEVELS = ("dataset", "category")


def run_adaptive(base: BaseModelSpec, entries: Sequence[Entry], datasets: Sequence[str], work_dir: str, *,
                 rule: StopRule, seed: int = 0, round_size: int = 50, suite_file: str | None = None,
                 decode_batch: int = 0, progress: bool = True, model: Any = None,
                 after_round: Any = None, level: str = "dataset", suite: str | None = None) -> AdaptiveReport:
    """Adaptive sweep of ``entries`` (the full model is added when missing) over ``datasets``.

    ``level="dataset"``: each (variant, dataset) cell stops on its own interval.
    ``level="category"``: the target applies to each (variant, category) instead -- the
    weighted mean of the category's sampled datasets, as the report averages them (suite
    ``suite``, default: the first suite of ``suite_file`` that has the datasets), with the
    report's union-bound interval (:func:`vlmeval_encred.report.sampled.union_intervals`);
    the datasets of one category are run round-robin until the category's interval meets
    the target.  A dataset in no category of the suite is its own category."""
    from ..registry import entries as all_entries

    if level not in LEVELS:
        raise SweepError(f"stopping level {level!r}: expected one of {', '.join(LEVELS)}")
    entries = list(entries)
    full = next(e for e in all_entries(base=base.name) if not e.masked)
    rep = AdaptiveReport(base.name, rule, seed)
    rep.level = level
    if all(e.masked for e in entries):
        entries.insert(0, full)
        rep.added_full = True
    box: dict[str, Any] = {"model": model, "support": None}
    sampled: list[tuple[str, Any, ScoringPlan, AdaptiveDatasetReport]] = []
    for ds_name in datasets:
        dataset = _build_dataset(ds_name)
        plan = scoring_plan(dataset, ds_name, suite_file)
        drep = AdaptiveDatasetReport(ds_name, plan.adaptive, plan.how, questions=len(dataset.data))
        rep.datasets.append(drep)
        if not plan.adaptive:
            srep = run_sweep(base, entries, [ds_name], work_dir, decode_batch=decode_batch, progress=progress,
                             model=box["model"])
            drep.engine = srep.datasets[0]
            drep.answered_questions = drep.questions
            continue
        sampled.append((ds_name, dataset, plan, drep))
    groups = (category_groups([s[0] for s in sampled], suite, suite_file) if level == "category"
              else [(None, {s[0]: 1.0}) for s in sampled])
    by_ds = {s[0]: s for s in sampled}
    for cat, weights in groups:
        members = [by_ds[ds] for ds in weights]
        dirs = [adaptive_dir(work_dir, base.name, ds) for ds in weights]
        try:
            with hold([d / ".lock" for d in dirs], what=f"adaptive sweep {base.name} x {', '.join(weights)} "
                                                        f"in {work_dir}"):
                runs: list[_DatasetRun] = []
                ok = False
                try:
                    for (ds_name, dataset, plan, drep), d in zip(members, dirs):
                        runs.append(_DatasetRun(base, entries, full, dataset, ds_name, plan, d, rule, seed,
                                                round_size, decode_batch, progress, box, drep, after_round))
                    if cat is None:
                        runs[0].run_until_stopped()
                    else:
                        _run_category(cat, weights, runs, rule, work_dir, base.name)
                    ok = True
                finally:
                    for r in runs:
                        r.close(final=ok)
        except LockHeld as exc:
            raise SweepError(str(exc)) from None
    return rep


def category_groups(datasets: Sequence[str], suite: str | None, suite_file: str | None
                    ) -> list[tuple[str, dict[str, float]]]:
    """(category, {dataset: weight}) for the category-level stopping rule, weights as the report's
    category mean (:func:`vlmeval_encred.report.sampled.level_weights`), renormalised over the
    datasets of this sweep (a category's other datasets, if complete elsewhere, only narrow the
    report's interval further)."""
    from ..report.sampled import level_weights
    from ..report.schema import load_suite
    from ..suites import load_raw

    names = [suite] if suite else list((load_raw(suite_file).get("suites") or {}))
    left = list(datasets)
    groups: list[tuple[str, dict[str, float]]] = []
    for name in names:
        st = load_suite(name, suite_file)
        ws = level_weights(st, st.categories, "Overall")
        for cat in st.categories:
            w: dict[str, float] = {}
            for (_, ds), x in ws.get(cat, {}).items():
                if ds in left:
                    w[ds] = w.get(ds, 0.0) + x
            if w:
                tot = sum(w.values())
                groups.append((f"{name}/{cat}", {ds: x / tot for ds, x in w.items()}))
                left = [ds for ds in left if ds not in w]
        if suite or not left:
            break
    groups += [(ds, {ds: 1.0}) for ds in left]
    return groups


def _run_category(cat: str, weights: Mapping[str, float], runs: list["_DatasetRun"], rule: StopRule,
                  work_dir: str, base: str) -> None:
    """Round-robin rounds over the category's datasets until each variant's category interval stops."""
    datasets = list(weights)
    inner = StopRule(halfwidth=None, decide_sign=False, max_frac=rule.max_frac, alpha=rule.alpha)
    for r in runs:
        r.rule = inner  # a dataset cell alone stops only when complete or at the budget cap
        r.refresh()
    names = [e.name for e in runs[0].variants]
    state: dict[str, dict] = {}

    def decide() -> None:
        from ..report.sampled import union_intervals, weighted

        for name in names:
            series = {r.ds_name: (r.diffs(name), r.N) for r in runs if r.cells[name][0] < r.N}
            exact = {r.ds_name: float(np.mean(r.diffs(name))) for r in runs if r.cells[name][0] >= r.N}
            lo, hi = weighted(weights, union_intervals(series, exact, rule.alpha))
            ns = {r.ds_name: r.cells[name][0] for r in runs}
            done = all(ns[r.ds_name] >= min(r.N, math.ceil(rule.max_frac * r.N)) for r in runs)  # complete/capped
            why = rule.reason(lo, hi, 0, 1) if not done else ("complete" if all(
                ns[r.ds_name] >= r.N for r in runs) else "budget cap")
            if why is not None and not done:
                why = f"category {cat}: {why}"
            est = sum(weights[r.ds_name] * (float(np.mean(r.diffs(name))) if ns[r.ds_name] else 0.0) for r in runs)
            state[name] = {"datasets": dict(weights), "n": ns, "N": {r.ds_name: r.N for r in runs},
                           "estimate": est if all(ns.values()) else None, "lo": lo, "hi": hi,
                           "alpha": rule.alpha, "sampled_parts": len(series), "stop": why,
                           "status": "open" if why is None else ("complete" if why == "complete" else "stopped")}
            for r in runs:
                r.forced[name] = why if why is not None and not done else None

    decide()
    while True:
        active = False
        for r in runs:
            open_ = [e for e in r.variants if state[e.name]["stop"] is None and r.cells[e.name][2] is None]
            if open_:
                active = True
                r.round(open_)
                r.refresh()
        decide()
        for r in runs:
            r.refresh()  # applies the category decisions to the dataset cells
            r.write_cells()
        _write_json(Path(work_dir) / ADAPTIVE_DIR / base / "categories.json",
                    _merged_categories(Path(work_dir) / ADAPTIVE_DIR / base / "categories.json", cat, weights, state,
                                       rule))
        if not active:
            break


def _merged_categories(path: Path, cat: str, weights: Mapping[str, float], state: Mapping[str, dict],
                       rule: StopRule) -> dict:
    old = _read_json(path) or {"categories": {}}
    old["categories"][cat] = {"rule": rule.describe(), "level": "category", "datasets": dict(weights),
                              "variants": dict(state),
                              "interval": "weighted sum of the datasets' anytime-valid sequences, each at "
                                          "alpha / (sampled datasets): report.sampled.union_intervals"}
    return old


class _DatasetRun:
    """The adaptive state of one dataset: its order, checkpoint, per-unit scores and cells."""

    def __init__(self, base, entries, full, dataset, ds_name, plan, d, rule, seed, round_size, decode_batch,
                 progress, box, drep, after_round):
        self.base, self.full, self.dataset, self.ds_name, self.plan, self.d = base, full, dataset, ds_name, plan, d
        self.rule, self.round_size, self.decode_batch, self.progress = rule, round_size, decode_batch, progress
        self.box, self.drep, self.after_round = box, drep, after_round
        data = dataset.data
        row_units = unit_ids(data, plan.circular)
        self.rows_of: dict[str, list[int]] = {}
        for pos, u in enumerate(row_units):
            self.rows_of.setdefault(u, []).append(pos)
        self.order = order = unit_order(row_units, seed)
        self.N = N = len(order)
        drep.units = N
        digest = hashlib.sha256("\n".join(order).encode()).hexdigest()[:16]
        self.mask_mode = mask_mode = base.modes[0]
        plan_path = d / "plan.json"
        old = _read_json(plan_path)
        if old is not None:
            if old.get("seed") != seed or old.get("order_sha256") != digest:
                raise SweepError(f"{d} holds an adaptive sweep with seed {old.get('seed')} over {old.get('units')} "
                                 f"units (order {old.get('order_sha256')}); this run has seed {seed} over {N} units "
                                 f"(order {digest}). Continue it with --seed {old.get('seed')}, or move the folder "
                                 "away")
            if old.get("mask_mode") != mask_mode:
                raise SweepError(f"{d} was computed with mask mode {old.get('mask_mode')!r}, this base uses "
                                 f"{mask_mode!r}")
        names = [e.name for e in entries]
        self.plan_rec = {
            "base": base.name, "dataset": ds_name, "seed": seed, "order": "numpy default_rng(seed).permutation "
            "of the sorted unit ids", "order_sha256": digest, "units": N, "questions": len(data),
            "unit": plan.how, "round_size": round_size, "rule": rule.describe(), "alpha": rule.alpha,
            "halfwidth": rule.halfwidth, "decide_sign": rule.decide_sign, "max_frac": rule.max_frac,
            "judge": JUDGE, "mask_mode": mask_mode, "full_model": full.name,
            "variants": sorted(set(names) | set((old or {}).get("variants", []))),
            "created": (old or {}).get("created", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
            "unit_order": order}
        _write_json(plan_path, self.plan_rec)
        self.ck = SweepCheckpoint.open(d / "answers.jsonl")
        self.scores: dict[str, dict[str, float]] = _read_json(d / "scores.json") or {}
        self.pos_of = {u: i for i, u in enumerate(order)}
        self.by_name = {e.name: e for e in entries}
        self.variants = [e for e in entries if e.masked]
        self.forced: dict[str, str | None] = {}
        """variant -> a stop decided elsewhere (its category's interval), applied to this cell."""
        self.tmp_root = Path(tempfile.mkdtemp(prefix="encred-adaptive-"))
        self.refresh()

    def prefix(self, name: str) -> int:
        s, f = self.scores.get(name, {}), self.scores.get(self.full.name, {})
        n = 0
        while n < self.N and self.order[n] in s and self.order[n] in f:
            n += 1
        return n

    def diffs(self, name: str) -> list[float]:
        n = self.prefix(name)
        return [100.0 * (self.scores[name][u] - self.scores[self.full.name][u]) for u in self.order[:n]]

    def status(self, name: str) -> tuple[int, tuple[float, float], str | None]:
        diffs = self.diffs(name)
        n = len(diffs)
        lo, hi = cell_interval(diffs, self.N, self.rule.alpha) if n else (-100.0, 100.0)
        why = self.rule.reason(lo, hi, n, self.N)
        return n, (lo, hi), why if why is not None else self.forced.get(name)

    def refresh(self) -> None:
        self.cells = {e.name: self.status(e.name) for e in self.variants}

    def run_until_stopped(self) -> None:
        while True:
            open_ = [e for e in self.variants if self.cells[e.name][2] is None]
            if not open_:
                break
            self.round(open_)
            self.refresh()
            self.write_cells()

    def round(self, open_: Sequence[Entry]) -> None:
        """The next ``round_size`` units for every variant of ``open_`` and the full model, scored."""
        order, N, full, ck, scores = self.order, self.N, self.full, self.ck, self.scores
        drep, data = self.drep, self.dataset.data
        want: dict[str, list[str]] = {}
        for e in open_:
            n = self.cells[e.name][0]
            want[e.name] = order[n:min(N, n + self.round_size, int(np.ceil(self.rule.max_frac * N)))]
        units = sorted({u for us in want.values() for u in us}, key=self.pos_of.__getitem__)
        want[full.name] = [u for u in units if u not in scores.get(full.name, {})]
        for u in units:
            for r in self.rows_of[u]:
                line = data.iloc[r]
                idx = line["index"]
                have = ck.get(idx)
                todo = [self.by_name[n] for n in want if u in want[n] and n not in have]
                if not todo:
                    continue
                if self.box["model"] is None:
                    self.box["model"] = load_model(self.base, list(self.by_name.values()))
                model = self.box["model"]
                if self.box["support"] is None:
                    self.box["support"] = support_for(model)
                model.set_dump_image(self.dataset.dump_image)
                er = drep.engine or DatasetReport(self.ds_name)
                drep.engine = er
                preds = answer_sample(self.base, self.box["support"], model, self.dataset, self.ds_name, line, todo,
                                      self.mask_mode, self.decode_batch, er)
                ck.add(idx, preds)
                er.computed_samples += 1
        ck.close()
        for name, us in want.items():
            new = [u for u in us if u not in scores.get(name, {})]
            if new:
                scores.setdefault(name, {}).update(
                    _score_units(self.dataset, self.ds_name, self.plan, name, new, self.rows_of, ck,
                                 self.tmp_root / f"r{drep.rounds}"))
        _write_json(self.d / "scores.json", scores)
        drep.rounds += 1
        if self.progress:
            self.refresh()
            done = sum(1 for c in self.cells.values() if c[2])
            print(f"adaptive {self.base.name}/{self.ds_name}: round {drep.rounds}, full model at "
                  f"{len(scores.get(full.name, {}))}/{N} units, {done}/{len(self.variants)} cells stopped", flush=True)
        if self.after_round is not None:
            self.after_round(self.ds_name, drep.rounds)

    def write_cells(self) -> None:
        _write_cells(self.d, self.plan_rec, self.full.name, self.variants, self.cells, self.scores, self.order, self.N)

    def close(self, final: bool = True) -> None:
        """Release the checkpoint and scratch; when ``final``, the final files: cells, the sampled
        prediction files, the report's counts (after an error the answers and scores already
        written stay as they are, and a rerun continues from them)."""
        self.ck.close()
        shutil.rmtree(self.tmp_root, ignore_errors=True)
        if not final:
            return
        self.refresh()
        self.write_cells()
        _write_sampled_predictions(self.d, self.dataset, self.ds_name, [self.full] + self.variants, self.scores,
                                   self.rows_of, self.ck, self.N, self.plan_rec)
        drep = self.drep
        drep.cells = _read_json(self.d / "cells.json")["cells"]
        answered = {u for u in self.scores.get(self.full.name, {})}
        drep.answered_questions = sum(len(self.rows_of[u]) for u in answered)
        drep.variant_answers = sum(len(self.rows_of[u]) for e in [self.full] + self.variants
                                   for u in self.scores.get(e.name, {}))


def _score_units(dataset, ds_name, plan, name, units, rows_of, ck, scratch: Path) -> dict[str, float]:
    """VLMEvalKit's own evaluation of ``name``'s answers to ``units``, read per unit."""
    from ..report.reader import ModelResults
    from ..report.scores import ScoreError, per_sample

    rows = sorted(r for u in units for r in rows_of[u])
    frame = dataset.data.iloc[rows].copy()
    frame["prediction"] = [str(ck.get(i)[name]) for i in frame["index"]]
    if "image" in frame:
        frame.pop("image")
    folder = scratch / name
    pred = str(folder / predfiles._name(str(scratch), name, ds_name))
    predfiles.write_atomically(frame, pred)
    dataset.evaluate(pred, model=JUDGE, nproc=1)
    mr = ModelResults(scratch, name)
    path, _, _ = mr.find(mr.flat, plan.per_sample.files, ds_name)
    if path is None:
        raise SweepError(f"{ds_name}: VLMEvalKit's evaluation of {name} wrote no per-sample file "
                         f"({' or '.join(plan.per_sample.files)}) in {folder}")
    try:
        u = per_sample(path, plan.per_sample, plan.headline)
    except ScoreError as exc:
        raise SweepError(f"{ds_name}: {exc}") from None
    got = {str(i): float(x) for i, x in zip(u.ids, u.x)}
    missing = [x for x in units if x not in got]
    if missing:
        raise SweepError(f"{ds_name}: VLMEvalKit's per-sample file {path} has no outcome for units {missing[:5]}")
    bad = [x for x in units if not 0.0 <= got[x] <= 1.0]
    if bad:
        raise SweepError(f"{ds_name}: per-unit outcomes outside [0, 1] for {bad[:5]}; cannot bound the difference")
    return {x: got[x] for x in units}


def _write_cells(d, plan_rec, full_name, variants, cells, scores, order, N):
    f = scores.get(full_name, {})
    nf = sum(1 for u in order if u in f)
    fvals = [f[u] for u in order[:nf]] if all(u in f for u in order[:nf]) else []
    out = {"plan": {k: plan_rec[k] for k in ("base", "dataset", "seed", "order", "order_sha256", "units",
                                            "questions", "unit", "round_size", "rule", "alpha", "judge")},
           "full_model": full_name,
           "cells": {}}
    flo, fhi = cell_interval([100 * x for x in fvals], N, plan_rec["alpha"], 0.0, 100.0) if fvals else (0.0, 100.0)
    out["cells"][full_name] = {"n": nf, "N": N, "estimate": 100 * float(np.mean(fvals)) if fvals else None,
                               "lo": flo, "hi": fhi, "status": "complete" if nf >= N else "sampled",
                               "stop": "complete" if nf >= N else "runs while any variant is open",
                               "quantity": "score"}
    for e in variants:
        n, (lo, hi), why = cells[e.name]
        diffs = [100.0 * (scores[e.name][u] - f[u]) for u in order[:n]]
        out["cells"][e.name] = {"n": n, "N": N, "estimate": float(np.mean(diffs)) if n else None, "lo": lo,
                                "hi": hi, "status": "complete" if n >= N else ("stopped" if why else "open"),
                                "stop": why, "quantity": "variant - full"}
    out["sampled_note"] = "sampled n of N units in the stored order; intervals: anytime-valid, see docs/sweeps.md"
    _write_json(d / "cells.json", out)


def _write_sampled_predictions(d, dataset, ds_name, ents, scores, rows_of, ck, N, plan_rec):
    """Each cell's answered questions as a VLMEvalKit prediction file inside ``encred_adaptive/``."""
    for e in ents:
        units = list(scores.get(e.name, {}))
        if not units:
            continue
        rows = sorted(r for u in units for r in rows_of[u])
        frame = dataset.data.iloc[rows].copy()
        frame["prediction"] = [str(ck.get(i)[e.name]) for i in frame["index"]]
        if "image" in frame:
            frame.pop("image")
        path = str(d / e.name / predfiles._name(str(d), e.name, ds_name))
        predfiles.write_atomically(frame, path)
        provenance.write(path, provenance.record(
            path, writer="encred sweep --adaptive", entry_name=e.name,
            fp=provenance.fingerprint(frame["index"], frame["prediction"]),
            extra={"dataset": ds_name, "samples": len(rows), "sampled": f"sampled {len(units)} of {N} units",
                   "seed": plan_rec["seed"], "order_sha256": plan_rec["order_sha256"], "rule": plan_rec["rule"],
                   "masked": list(e.masked), "mode": plan_rec["mask_mode"]}))


# --- completing a sampled cell ---------------------------------------------------------------

def import_answers(work_dir: str, base: BaseModelSpec, ds_name: str, ck_path: Path, entries: Sequence[Entry]) -> int:
    """Copy an adaptive sweep's answers for ``entries`` into a plain sweep's checkpoint.

    Only answers the plain checkpoint lacks; only when the adaptive sweep used the same mask
    mode.  Returns how many (sample, variant) answers were imported."""
    d = adaptive_dir(work_dir, base.name, ds_name)
    src = d / "answers.jsonl"
    if not src.exists():
        return 0
    plan = _read_json(d / "plan.json") or {}
    if plan.get("mask_mode") not in (None, base.modes[0]):
        log.warning("%s: adaptive answers were computed with mask mode %s, not %s; not reused", d,
                    plan.get("mask_mode"), base.modes[0])
        return 0
    try:
        with hold([d / ".lock"], what=f"adaptive sweep {base.name} x {ds_name} in {work_dir}"):
            a = SweepCheckpoint.open(src)
    except LockHeld as exc:
        raise SweepError(f"{exc} (a plain sweep reuses its answers; wait for it)") from None
    names = {e.name for e in entries}
    ck = SweepCheckpoint.open(ck_path)
    n = 0
    try:
        for idx, preds in a.done.items():
            have = ck.get(idx)
            add = {k: v for k, v in preds.items() if k in names and k not in have}
            if add:
                ck.add(idx, add)
                n += len(add)
    finally:
        ck.close()
    return n

