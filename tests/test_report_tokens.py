"""The report reads token-budget variants (issue 19 part 4; docs/report.md, 'Token budgets').

Pure parts by hand (the 95 % budget rule, its vectorised bootstrap form against the plain rule,
which folders count as budgets); then the report and the comparison on result sheets written by
VLMEvalKit's own evaluate (report_sheets.py) for the demo base ``encred_tiny`` and
``deepseek_vl_tiny_random``.  Only the predictions are synthetic: exact, nested accuracies
(``report_sheets.build_models``), so every expected number below follows from the accuracies."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import report_sheets as RS
from vlmeval_encred.report import budgets as BU

DATASETS = ["SEEDBench_IMG", "AI2D_TEST", "RealWorldQA"]
N = 40  # questions per dataset: accuracies in steps of 2.5 points
ENC = ("lowres", "hires", "colour")


# ---------------------------------------------------------------- the rule, by hand


def test_smallest_budget_by_hand():
    assert BU.smallest_budget({75: 100.0, 50: 97.2, 25: 55.6}) == 50
    assert BU.smallest_budget({75: 96.0, 50: 80.0, 25: 99.0}) == 75  # a lucky small budget after a dip
    assert BU.smallest_budget({75: 94.9, 50: 99.0}) == 100  # the largest budget already falls short
    assert BU.smallest_budget({75: 95.0}) == 75  # ">= 95"
    assert BU.smallest_budget({50: None, 25: 96.0}) == 25  # a missing budget is left out
    assert BU.smallest_budget({50: None}) is None


def test_resampled_rule_equals_the_plain_rule_row_by_row():
    rng = np.random.default_rng(3)
    keeps = [90, 75, 50, 25, 10]
    ret = rng.uniform(85, 105, size=(500, len(keeps)))
    ret[7, 2] = np.nan  # an undefined resample
    got = BU.smallest_budget_resampled(keeps, ret)
    for i in range(ret.shape[0]):
        if i == 7:
            assert np.isnan(got[i])
            continue
        assert got[i] == BU.smallest_budget(dict(zip(keeps, ret[i].tolist())))


def _lattice_rows(base: str, encoders: tuple[str, ...]) -> list[dict]:
    from vlmeval_encred.report.pipeline import _variants

    return _variants(base, encoders)[1]


def test_discover_names_and_skips():
    rows = _lattice_rows("encred_tiny", ENC)
    found, notes = BU.discover(["encred_tiny", "encred_tiny_keep25", "encred_tiny_mask_hires_keep50_llm",
                                "encred_tiny_keep25_llm2", "encred_tiny_keep25_fusion",
                                "encred_tiny_mask_lowres_hires_colour_keep25", "deepseek_vl_tiny_random_keep25",
                                "encred_tiny_mask_hires", "encred_tiny_keep0", "notes"], rows, "encred_tiny", ENC)
    got = {(b.name, b.mask_name, b.spec.keep, b.spec.stage, b.spec.layer) for b in found}
    assert got == {("encred_tiny_keep25", "encred_tiny", 25, "fusion", None),
                   ("encred_tiny_mask_hires_keep50_llm", "encred_tiny_mask_hires", 50, "llm", 1),  # llm_layer 1
                   ("encred_tiny_keep25_llm2", "encred_tiny", 25, "llm", 2)}
    assert {b.series for b in found} == {"fusion", "llm K=1", "llm K=2"}
    why = "\n".join(notes)
    assert "encred_tiny_keep25_fusion" in why and "encred_tiny_keep25" in why  # not canonical
    assert "encred_tiny_mask_lowres_hires_colour_keep25" in why and "every encoder is masked" in why
    assert "encred_tiny_keep0" in why  # keep must be 1..100
    assert "deepseek" not in why  # another base's folder is simply not ours


# ---------------------------------------------------------------- on VLMEvalKit's files

ACC = {  # model -> accuracy on every dataset (nested correct sets, see report_sheets.build_models)
    "encred_tiny": 0.9, "encred_tiny_mask_hires": 0.6,
    "encred_tiny_keep75": 0.9, "encred_tiny_keep50": 0.875, "encred_tiny_keep25": 0.5,
    "encred_tiny_keep50_llm": 0.8, "encred_tiny_keep25_llm": 0.7,
    "encred_tiny_mask_hires_keep50": 0.6, "encred_tiny_mask_hires_keep25": 0.3,
    "encred_tiny_mask_lowres_keep50": 0.5,  # its unpruned variant was never run
    "deepseek_vl_tiny_random": 0.8, "deepseek_vl_tiny_random_mask_sam": 0.7,
    "deepseek_vl_tiny_random_keep50": 0.4,
}
LEVELS = ["General", "Knowledge", "Vision-Centric", "Overall"]


@pytest.fixture(scope="module")
def sheets(tmp_path_factory) -> tuple[Path, Path]:
    pytest.importorskip("vlmeval")
    import yaml

    root = tmp_path_factory.mktemp("token_sheets")
    work = RS.build_models(str(root), ACC, RS.mcq_data(DATASETS, N))
    (work / "encred_tiny_keep25_fusion").mkdir()  # a non-canonical folder: named, never read
    suite = root / "three.yaml"
    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "vlmeval_encred" / "benchmarks.yaml").read_text())
    raw["suites"] = {"three": {"categories": ["General", "Knowledge", "Vision-Centric"],
                               "benchmarks": ["SEED-I", "AI2D", "RealWorldQA"]}}
    suite.write_text(yaml.safe_dump(raw))
    return work, suite


def _report(sheets, **kw):
    from vlmeval_encred.report import build_report

    work, suite = sheets
    kw.setdefault("n_boot", 200)
    kw.setdefault("write", False)
    return build_report(work, "encred_tiny", suite="three", suite_file=suite, cache=False, **kw)


def _pt(res, series, variant, level):
    return next(x for x in res.token_curve if (x["series"], x["variant"], x["level"]) == (series, variant, level))


def test_token_curve_and_budgets_from_vlmeval_files(sheets):
    res = _report(sheets)
    assert len(res.cells) == 8 * 3  # the lattice's cells stay the lattice's
    assert {v["name"] for v in res.token_variants} == {k for k in ACC if k.startswith("encred_tiny_") and "_keep" in k}
    assert all(c["status"] == "ok" and c["per_sample"] == "ok" for c in res.token_cells)
    assert any("encred_tiny_keep25_fusion" in n for n in res.notes)
    for lvl in LEVELS:
        for name, acc in ACC.items():
            if not name.startswith("encred_tiny") or "_keep" not in name or "lowres" in name:
                continue
            series = "llm K=1" if name.endswith("_llm") else "fusion"
            x = _pt(res, series, name, lvl)
            unpruned = ACC["encred_tiny_mask_hires" if "mask_hires" in name else "encred_tiny"]
            assert x["score"] == pytest.approx(100 * acc)
            assert x["retained"] == pytest.approx(100 * acc / unpruned)
        assert _pt(res, "fusion", "encred_tiny", lvl)["unpruned"] and _pt(res, "fusion", "encred_tiny", lvl)["keep"] == 100
    b95 = {(x["series"], x["mask"], x["level"]): x for x in res.token_budget95}
    for lvl in LEVELS:
        # fusion, full model: keep75 100 %, keep50 97.2 %, keep25 55.6 % -> keep50
        assert b95[("fusion", "none", lvl)]["budget"] == 50
        assert b95[("fusion", "none", lvl)]["retained"] == pytest.approx(100 * 0.875 / 0.9)
        # llm, full model: keep50 88.9 % -> no pruned budget keeps 95 %
        assert b95[("llm K=1", "none", lvl)]["budget"] == 100
        # hires masked: keep50 answers exactly what the unpruned variant answers, keep25 half of it, so every
        # paired resample gives keep50 too: the interval is the single point [50, 50]
        x = b95[("fusion", "-hires", lvl)]
        assert (x["budget"], x["lo"], x["hi"], x["interval"]) == (50, 50, 50, "ok")
        assert (x["retained_lo"], x["retained_hi"]) == (pytest.approx(100.0), pytest.approx(100.0))
        lowres = b95[("fusion", "-lowres", lvl)]
        assert lowres["budget"] is None and lowres["lo"] is None
        assert lowres["interval"] == "no score of the unpruned variant encred_tiny_mask_lowres at this level"
        assert _pt(res, "fusion", "encred_tiny_mask_lowres_keep50", lvl)["score"] == pytest.approx(50.0)
        assert _pt(res, "fusion", "encred_tiny_mask_lowres_keep50", lvl)["retained"] is None
        full = b95[("fusion", "none", lvl)]
        assert full["lo"] <= 50 <= full["hi"] and {full["lo"], full["hi"]} <= {25, 50, 75, 100}
        assert full["retained_lo"] <= full["retained"] <= full["retained_hi"] <= 100.0


def test_no_interval_without_enough_resamples_and_none_without_bootstrap(sheets):
    res = _report(sheets, n_boot=0)
    rows = [x for x in res.token_budget95 if x["budget"] is not None]  # -lowres: no unpruned score, no budget
    assert rows and all(x["lo"] is None and x["interval"] == "" for x in rows)
    res = _report(sheets, n_boot=20)
    rows = [x for x in res.token_budget95 if x["budget"] is not None]
    assert rows and all(x["lo"] is None and "fewer than 40" in x["interval"] for x in rows)


def test_files_figure_and_the_output_set_policy(sheets, tmp_path):
    import openpyxl

    work = tmp_path / "work"
    shutil.copytree(sheets[0], work, symlinks=True)
    out = tmp_path / "out"
    res = _report((work, sheets[1]), n_boot=100, write=True, out_dir=out)
    png = res.files["fig_token_curves"]
    assert png == out / "encred_tiny_three_token_curves.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = res.files["markdown"].read_text()
    assert "## Token budgets" in md and "### Stage fusion: encoder mask x budget (Overall)" in md
    assert "| none | 90.00 | 90.00 (100.0 %) | 87.50 (97.2 %) | 50.00 (55.6 %) |" in md
    assert "keep50 (97.2 %) [" in md and "none below 100 %" in md
    wb = openpyxl.load_workbook(res.files["xlsx"], read_only=True)
    assert {"Token curve", "Token 95% budget", "Token cells"} <= set(wb.sheetnames)
    # the budgets' folders go away: a new run no longer produces the figure, so it is removed (our own file)
    for v in res.token_variants:
        shutil.rmtree(work / v["name"])
    res2 = _report((work, sheets[1]), n_boot=100, write=True, out_dir=out)
    assert not res2.token_curve and "fig_token_curves" not in res2.files and not png.exists()
    assert "Token budgets" not in res2.files["markdown"].read_text()


def test_comparison_shows_each_models_token_curve(sheets, tmp_path):
    from vlmeval_encred.report.compare import build_comparison

    work, suite = sheets
    res = build_comparison(work, ["encred_tiny", "deepseek_vl_tiny_random"], suite="three", suite_file=suite,
                           out_dir=tmp_path / "cmp", cache=False)
    ds = [x for x in res.token_curve if x["model"] == "deepseek_vl_tiny_random" and x["level"] == "Overall"]
    assert {(x["keep"], x["unpruned"]) for x in ds} == {(100, True), (50, False)}
    assert next(x for x in ds if x["keep"] == 50)["retained"] == pytest.approx(50.0)
    b = {(x["model"], x["series"], x["mask"], x["level"]): x["budget"] for x in res.token_budget95}
    assert b[("deepseek_vl_tiny_random", "fusion", "none", "Overall")] == 100
    assert b[("encred_tiny", "fusion", "none", "Overall")] == 50
    md = res.files["markdown"].read_text()
    assert "## Token budgets" in md and "| deepseek_vl_tiny_random | fusion |" in md
    assert res.files["fig_token_curves"].read_bytes()[:4] == b"\x89PNG"


def test_cli_prints_the_95_budgets(sheets, tmp_path, capsys):
    from vlmeval_encred.cli import main

    work, suite = sheets
    rc = main(["report", "--work-dir", str(work), "--model", "encred_tiny", "--suite", "three", "--suite-file",
               str(suite), "--out", str(tmp_path / "o"), "--n-boot", "100", "--no-figures", "--no-cache"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "token budgets: 8 variants; smallest budget keeping 95 % of the unpruned score (Overall):" in out
    assert "  fusion, mask -hires: keep50 (100.0 %) [keep50, keep50]" in out
    assert "  llm K=1, mask none: none below 100 %" in out
    assert "encred_tiny_keep25_fusion: not read as a token budget" in out
