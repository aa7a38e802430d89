"""Adaptive sweeps: the confidence sequence's math, its coverage under the sweep's own stopping
rule (small simulation; the full one is benchmarks/adaptive_coverage.py), and an end-to-end
adaptive sweep of the demo model `encred_tiny`, whose planted effects are known (docs/demo.md):
masking `hires` destroys OCR (about -85 points), masking `lowres` or `colour` changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vlmeval_encred.sweep.confseq import BettingCS, StopRule, interval_of, mc_tolerance, simulate_coverage

BIG = 10 ** 9  # a population so large that the finite-population correction does nothing


# --- the confidence sequence ----------------------------------------------------------------

def test_constant_data_is_contained_and_the_interval_narrows():
    for c in (-1.0, -0.3, 0.0, 0.5, 1.0):
        widths = []
        for n in (20, 100, 500):
            lo, hi = interval_of([c] * n, BIG)
            assert lo <= c <= hi, (c, n, lo, hi)
            widths.append(hi - lo)
        assert widths[0] > widths[1] > widths[2]


def test_width_shrinks_like_one_over_root_n():
    rng = np.random.default_rng(0)
    x = rng.choice([-1.0, 0.0, 1.0], size=6400, p=[0.25, 0.5, 0.25])
    w = {n: np.subtract(*interval_of(x[:n], BIG)[::-1]) for n in (400, 1600, 6400)}
    r1, r2 = w[400] / w[1600], w[1600] / w[6400]
    # 2 for a 1/sqrt(n) rate; the bets' log(t) factor makes it slightly less
    assert 1.6 < r1 < 2.3 and 1.6 < r2 < 2.3, (w, r1, r2)


def test_finite_population_correction_narrows_and_closes_at_N():
    rng = np.random.default_rng(1)
    pop = rng.choice([-1.0, 0.0, 1.0], size=400, p=[0.1, 0.7, 0.2])
    order = rng.permutation(pop)
    lo, hi = interval_of(order, 400)
    assert lo == pytest.approx(pop.mean()) and hi == pytest.approx(pop.mean())  # all N seen: exact
    wor = interval_of(order[:300], 400)
    wr = interval_of(order[:300], BIG)
    assert wor[1] - wor[0] < wr[1] - wr[0]
    assert wor[0] <= pop.mean() <= wor[1]
    # the bounds never claim more than the unseen values allow
    seen = order[:300]
    assert wor[0] >= (seen.sum() - 100) / 400 - 1e-9 and wor[1] <= (seen.sum() + 100) / 400 + 1e-9


def test_batch_equals_single_sequences_and_bad_input_is_refused():
    rng = np.random.default_rng(2)
    x = rng.random((3, 50))
    cs = BettingCS(100, 0.05, 0.0, 1.0, 501, batch=3)
    for t in range(50):
        cs.update(x[:, t])
    lo, hi = cs.intervals()
    for i in range(3):
        assert (lo[i], hi[i]) == pytest.approx(interval_of(x[i], 100, lo=0.0, hi=1.0, grid=501))
    with pytest.raises(ValueError):
        BettingCS(10, 0.05, 0.0, 1.0).update(1.5)
    one = BettingCS(2, 0.05, 0.0, 1.0)
    one.extend([0.0, 1.0])
    with pytest.raises(ValueError):
        one.update(0.0)  # a third draw from a population of two


def test_stop_rule_reasons():
    r = StopRule(halfwidth=2.0, decide_sign=True, max_frac=0.5)
    assert r.reason(1.0, 9.0, 10, 100) == "sign decided"
    assert r.reason(-1.0, 1.0, 10, 100) == "half-width met"
    assert r.reason(-5.0, 5.0, 50, 100) == "budget cap"
    assert r.reason(-5.0, 5.0, 100, 100) == "complete"
    assert r.reason(-5.0, 5.0, 10, 100) is None
    assert StopRule(halfwidth=2.0).reason(1.0, 9.0, 10, 100) is None  # sign alone stops only with decide_sign


def test_adaptive_arguments_are_checked_before_anything_runs():
    from vlmeval_encred.validate import ValidationError, check_adaptive

    ok = dict(adaptive=True, halfwidth=2.0, decide_sign=False, max_frac=None, round_size=None, limit=None,
              cluster=None, complete=None)
    check_adaptive(**ok)
    for bad, msg in [(dict(halfwidth=None), "needs a target"), (dict(adaptive=False), "add --adaptive"),
                     (dict(limit=10), "--limit"), (dict(cluster="slurm"), "--cluster"),
                     (dict(complete="all"), "--complete"),
                     (dict(adaptive=False, halfwidth=None, stop_level="category"), "--stop-level")]:
        with pytest.raises(ValidationError, match=msg):
            check_adaptive(**{**ok, **bad})


# --- coverage under the sweep's stopping rule --------------------------------------------------

@pytest.mark.parametrize("rule", [StopRule(decide_sign=True, halfwidth=4.0), StopRule(halfwidth=3.0, max_frac=0.6)],
                         ids=["decide-sign", "halfwidth+cap"])
def test_coverage_of_stopped_intervals_is_at_least_nominal(rule):
    runs = 300
    res = simulate_coverage(rule, N=250, effects_pp=[0.0, -3.0, -15.0, -45.0], runs=runs, seed=7,
                            round_size=25, grid=801)
    tol = mc_tolerance(1 - rule.alpha, runs)  # 3 binomial standard errors at the nominal level: 0.038
    for e in res["effects"]:
        assert e["coverage"] >= 1 - rule.alpha - tol, (e, tol)
    big = next(e for e in res["effects"] if e["effect_pp"] == -45.0)
    if rule.decide_sign:
        assert big["mean_frac"] < 0.5 and big["excludes_zero"] == 1.0  # large effects stop early


# --- end to end on the demo model --------------------------------------------------------------

DS = "EncredDemo_OCR"
N_Q = 80


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from vlmeval_encred.demo import data

    lmu = tmp_path_factory.mktemp("LMUData")
    data.write_datasets(lmu, samples_per_category=N_Q)
    from vlmeval_encred.realcode.envscope import scoped_env
    from vlmeval_encred.registry import get_base

    with scoped_env(LMUData=str(lmu), PRED_FORMAT="xlsx", HF_HUB_OFFLINE="1"):
        yield get_base("encred_tiny")


def test_adaptive_sweep_on_the_demo_model(demo, tmp_path):
    from vlmeval.smp import load

    from vlmeval_encred.report import build_report
    from vlmeval_encred.sweep import predfiles
    from vlmeval_encred.sweep.adaptive import adaptive_dir, run_adaptive
    from vlmeval_encred.sweep.engine import SweepError, run_sweep
    from vlmeval_encred.sweep.selection import select_entries

    base = demo
    entries = select_entries(base, "all")
    work = tmp_path / "ad"
    rule = StopRule(decide_sign=True, halfwidth=6.0)
    rep = run_adaptive(base, entries, [DS], str(work), rule=rule, seed=3, round_size=10, progress=False)
    d = rep.datasets[0]
    assert d.adaptive and d.units == N_Q
    cells = d.cells
    hires_cells = [n for n in cells if "hires" in n]
    for n in hires_cells:  # (a) large planted effect: stopped early, interval below zero
        c = cells[n]
        assert c["status"] == "stopped" and c["stop"] == "sign decided", c
        assert c["hi"] < 0 and c["n"] < N_Q
    # (b) fewer answers than a full sweep of the lattice
    assert d.answered_questions < N_Q and d.variant_answers < N_Q * len(entries)
    # nothing where VLMEvalKit's run.py looks for a finished run
    for e in entries:
        assert predfiles.find_pred_file(str(work), e.name, DS) is None
    folder = adaptive_dir(work, base.name, DS)
    plan = json.loads((folder / "plan.json").read_text())
    assert plan["seed"] == 3 and len(plan["unit_order"]) == N_Q
    side = json.loads((folder / base.name / "encred_provenance" / f"{base.name}_{DS}.json").read_text())
    assert side["sampled"].startswith(f"sampled {cells[base.name]['n']} of {N_Q}")

    # (c) the answers equal a full sweep's for the same questions
    full = tmp_path / "full"
    run_sweep(base, entries, [DS], str(full), progress=False)
    for e in entries:
        want = load(predfiles.find_pred_file(str(full), e.name, DS))
        got = load(str(folder / e.name / f"{e.name}_{DS}.xlsx"))
        ref = dict(zip(want["index"], want["prediction"].astype(str)))
        assert len(got) == cells[e.name]["n"] if e.masked else True
        assert all(ref[i] == p for i, p in zip(got["index"], got["prediction"].astype(str))), e.name

    # resuming continues the same order and computes nothing new; another seed is refused
    again = run_adaptive(base, entries, [DS], str(work), rule=rule, seed=3, round_size=10, progress=False)
    assert again.datasets[0].engine is None or again.datasets[0].engine.computed_samples == 0
    with pytest.raises(SweepError, match="seed 3"):
        run_adaptive(base, entries, [DS], str(work), rule=rule, seed=4, round_size=10, progress=False)

    # (d) the report marks the sampled cells with n/N and their intervals
    res = build_report(work, base.name, suite="encred_demo", n_boot=0, write=True, figures=True, cache=False)
    sampled = {c["variant"]: c for c in res.sampled}
    assert set(sampled) == {e.name for e in entries}
    assert all(c["status"] == "sampled" for c in res.cells if c["benchmark"] == DS)
    n_h = cells[f"{base.name}_mask_hires"]["n"]
    assert f"sampled {n_h} of {N_Q}" in sampled[f"{base.name}_mask_hires"]["note"]
    row = next(b for b in res.bootstrap if b["quantity"] == "CUR" and b["subject"] == "hires"
               and b["level"] == "OCR & Chart")
    assert row["sampled"] and row["estimate"] > 50 and row["lo"] is not None  # CUR: alpha split over D and F
    diff = next(b for b in res.bootstrap if b["quantity"] == "variant - full" and b["subject"] == "-hires"
                and b["level"] == DS)
    assert diff["sampled"] and diff["hi"] < 0 and diff["distinguishable"]
    md = res.files["markdown"].read_text()
    assert "Sampled cells (adaptive sweep): not complete results" in md and f"{n_h}/{N_Q}" in md
    assert "fig_intervals" in res.files

    # --complete: a plain sweep of one variant reuses every adaptive answer and computes only the rest
    lowres = select_entries(base, f"{base.name}_mask_lowres")
    done = run_sweep(base, select_entries(base, "k=0") + lowres, [DS], str(work), progress=False)
    dd = done.datasets[0]
    n_full = cells[base.name]["n"]
    assert dd.reused_adaptive == n_full + cells[f"{base.name}_mask_lowres"]["n"]
    assert dd.computed_samples == N_Q - min(n_full, cells[f"{base.name}_mask_lowres"]["n"])
    for e in [entries[0]] + lowres:
        got = load(predfiles.find_pred_file(str(work), e.name, DS))
        want = load(predfiles.find_pred_file(str(full), e.name, DS))
        assert list(got["prediction"].astype(str)) == list(want["prediction"].astype(str))


def test_category_level_targets_stop_on_the_reports_category_interval(demo, tmp_path):
    """--stop-level category: the demo's OCR and General datasets form one category ("Mixed",
    a suite of this test's own suite file); masking `hires` costs about -85 points on OCR and
    nothing on General, so the category mean is about -40 and its sign is decided early.  The
    interval the sweep stopped on must be the one the report prints for that category."""
    import yaml

    from vlmeval_encred.report import build_report
    from vlmeval_encred.suites import DEFAULT_FILE
    from vlmeval_encred.sweep.adaptive import adaptive_dir, run_adaptive
    from vlmeval_encred.sweep.selection import select_entries

    raw = yaml.safe_load(Path(DEFAULT_FILE).read_text())
    raw["suites"] = {"mix": {"description": "two demo datasets in one category", "categories": ["Mixed"],
                             "benchmarks": ["MixOCR", "MixGeneral"]}}
    raw["benchmarks"]["MixOCR"] = {"category": "Mixed", "datasets": ["EncredDemo_OCR"], "preset": "mcq"}
    raw["benchmarks"]["MixGeneral"] = {"category": "Mixed", "datasets": ["EncredDemo_General"], "preset": "mcq"}
    suite_file = tmp_path / "mix.yaml"
    suite_file.write_text(yaml.safe_dump(raw, sort_keys=False))

    base = demo
    entries = select_entries(base, f"{base.name},{base.name}_mask_hires,{base.name}_mask_lowres")
    work = tmp_path / "cat"
    rule = StopRule(decide_sign=True, halfwidth=6.0)
    datasets = ["EncredDemo_OCR", "EncredDemo_General"]
    rep = run_adaptive(base, entries, datasets, str(work), rule=rule, seed=1, round_size=10, progress=False,
                       level="category", suite="mix", suite_file=str(suite_file))
    assert rep.level == "category"
    cats = json.loads((work / "encred_adaptive" / base.name / "categories.json").read_text())["categories"]
    rec = cats["mix/Mixed"]
    assert rec["datasets"] == {"EncredDemo_OCR": 0.5, "EncredDemo_General": 0.5}
    hires = rec["variants"][f"{base.name}_mask_hires"]
    assert hires["status"] == "stopped" and hires["stop"].startswith("category mix/Mixed: sign decided"), hires
    assert hires["hi"] < 0 and hires["sampled_parts"] == 2
    assert all(n < N_Q for n in hires["n"].values())  # stopped before either dataset was complete
    for ds in datasets:  # the dataset cells carry the category's decision, not one of their own
        cell = json.loads((adaptive_dir(work, base.name, ds) / "cells.json").read_text())["cells"]
        assert cell[f"{base.name}_mask_hires"]["stop"] == hires["stop"]
    # the report recomputes the category interval from the stored outcomes with the same function
    res = build_report(work, base.name, suite="mix", suite_file=str(suite_file), n_boot=0, write=False,
                       figures=False, cache=False)
    row = next(b for b in res.bootstrap if b["quantity"] == "variant - full" and b["subject"] == "-hires"
               and b["level"] == "Mixed")
    assert row["lo"] == pytest.approx(hires["lo"], abs=1e-9) and row["hi"] == pytest.approx(hires["hi"], abs=1e-9)
    assert row["lo"] <= row["estimate"] <= row["hi"]
