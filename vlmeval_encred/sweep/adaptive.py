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
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

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


def run_adaptive(base: BaseModelSpec, entries: Sequence[Entry], datasets: Sequence[str], work_dir: str, *,
                 rule: StopRule, seed: int = 0, round_size: int = 50, suite_file: str | None = None,
                 decode_batch: int = 0, progress: bool = True, model: Any = None,
                 after_round: Any = None) -> AdaptiveReport:
    """Adaptive sweep of ``entries`` (the full model is added when missing) over ``datasets``."""
    from ..registry import entries as all_entries

    entries = list(entries)
    full = next(e for e in all_entries(base=base.name) if not e.masked)
    rep = AdaptiveReport(base.name, rule, seed)
    if all(e.masked for e in entries):
        entries.insert(0, full)
        rep.added_full = True
    box: dict[str, Any] = {"model": model, "support": None}
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
        d = adaptive_dir(work_dir, base.name, ds_name)
        try:
            with hold([d / ".lock"], what=f"adaptive sweep {base.name} x {ds_name} in {work_dir}"):
                _adaptive_dataset(base, entries, full, dataset, ds_name, plan, d, rule, seed, round_size,
                                  decode_batch, progress, box, drep, after_round)
        except LockHeld as exc:
            raise SweepError(str(exc)) from None
    return rep


def _adaptive_dataset(base, entries, full, dataset, ds_name, plan, d, rule, seed, round_size, decode_batch,
                      progress, box, drep, after_round):
    data = dataset.data
    row_units = unit_ids(data, plan.circular)
    rows_of: dict[str, list[int]] = {}
    for pos, u in enumerate(row_units):
        rows_of.setdefault(u, []).append(pos)
    order = unit_order(row_units, seed)
    N = len(order)
    drep.units = N
    digest = hashlib.sha256("\n".join(order).encode()).hexdigest()[:16]
    mask_mode = base.modes[0]
    plan_path = d / "plan.json"
    old = _read_json(plan_path)
    if old is not None:
        if old.get("seed") != seed or old.get("order_sha256") != digest:
            raise SweepError(f"{d} holds an adaptive sweep with seed {old.get('seed')} over {old.get('units')} units "
                             f"(order {old.get('order_sha256')}); this run has seed {seed} over {N} units "
                             f"(order {digest}). Continue it with --seed {old.get('seed')}, or move the folder away")
        if old.get("mask_mode") != mask_mode:
            raise SweepError(f"{d} was computed with mask mode {old.get('mask_mode')!r}, this base uses {mask_mode!r}")
    names = [e.name for e in entries]
    plan_rec = {"base": base.name, "dataset": ds_name, "seed": seed, "order": "numpy default_rng(seed).permutation "
                "of the sorted unit ids", "order_sha256": digest, "units": N, "questions": len(data),
                "unit": plan.how, "round_size": round_size, "rule": rule.describe(), "alpha": rule.alpha,
                "halfwidth": rule.halfwidth, "decide_sign": rule.decide_sign, "max_frac": rule.max_frac,
                "judge": JUDGE, "mask_mode": mask_mode, "full_model": full.name,
                "variants": sorted(set(names) | set((old or {}).get("variants", []))),
                "created": (old or {}).get("created", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
                "unit_order": order}
    _write_json(plan_path, plan_rec)
    ck = SweepCheckpoint.open(d / "answers.jsonl")
    scores: dict[str, dict[str, float]] = _read_json(d / "scores.json") or {}
    pos_of = {u: i for i, u in enumerate(order)}
    by_name = {e.name: e for e in entries}
    variants = [e for e in entries if e.masked]

    def prefix(name: str) -> int:
        s, f = scores.get(name, {}), scores.get(full.name, {})
        n = 0
        while n < N and order[n] in s and order[n] in f:
            n += 1
        return n

    def status(name: str) -> tuple[int, tuple[float, float], str | None]:
        n = prefix(name)
        diffs = [100.0 * (scores[name][u] - scores[full.name][u]) for u in order[:n]]
        lo, hi = cell_interval(diffs, N, rule.alpha) if n else (-100.0, 100.0)
        return n, (lo, hi), rule.reason(lo, hi, n, N)

    cells = {e.name: status(e.name) for e in variants}
    tmp_root = Path(tempfile.mkdtemp(prefix="encred-adaptive-"))
    try:
        while True:
            open_ = [e for e in variants if cells[e.name][2] is None]
            if not open_:
                break
            want: dict[str, list[str]] = {}
            for e in open_:
                n = cells[e.name][0]
                want[e.name] = order[n:min(N, n + round_size, int(np.ceil(rule.max_frac * N)))]
            units = sorted({u for us in want.values() for u in us}, key=pos_of.__getitem__)
            want[full.name] = [u for u in units if u not in scores.get(full.name, {})]
            for u in units:
                for r in rows_of[u]:
                    line = data.iloc[r]
                    idx = line["index"]
                    have = ck.get(idx)
                    todo = [by_name[n] for n in want if u in want[n] and n not in have]
                    if not todo:
                        continue
                    if box["model"] is None:
                        box["model"] = load_model(base, entries)
                    model = box["model"]
                    if box["support"] is None:
                        box["support"] = support_for(model)
                    model.set_dump_image(dataset.dump_image)
                    er = drep.engine or DatasetReport(ds_name)
                    drep.engine = er
                    preds = answer_sample(base, box["support"], model, dataset, ds_name, line, todo, mask_mode,
                                          decode_batch, er)
                    ck.add(idx, preds)
                    er.computed_samples += 1
            ck.close()
            for name, us in want.items():
                new = [u for u in us if u not in scores.get(name, {})]
                if new:
                    scores.setdefault(name, {}).update(
                        _score_units(dataset, ds_name, plan, name, new, rows_of, ck, tmp_root / f"r{drep.rounds}"))
            _write_json(d / "scores.json", scores)
            drep.rounds += 1
            cells = {e.name: status(e.name) for e in variants}
            _write_cells(d, plan_rec, full.name, variants, cells, scores, order, N)
            if progress:
                done = sum(1 for c in cells.values() if c[2])
                print(f"adaptive {base.name}/{ds_name}: round {drep.rounds}, full model at "
                      f"{len(scores.get(full.name, {}))}/{N} units, {done}/{len(variants)} cells stopped", flush=True)
            if after_round is not None:
                after_round(ds_name, drep.rounds)
    finally:
        ck.close()
        shutil.rmtree(tmp_root, ignore_errors=True)
    _write_cells(d, plan_rec, full.name, variants, cells, scores, order, N)
    _write_sampled_predictions(d, dataset, ds_name, [full] + variants, scores, rows_of, ck, N, plan_rec)
    drep.cells = _read_json(d / "cells.json")["cells"]
    answered = {u for u in scores.get(full.name, {})}
    drep.answered_questions = sum(len(rows_of[u]) for u in answered)
    drep.variant_answers = sum(len(rows_of[u]) for e in [full] + variants for u in scores.get(e.name, {}))


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

