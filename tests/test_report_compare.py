"""Cross-model report (`encred report --model A B C`) on result sheets written by VLMEvalKit's
own evaluate (see report_sheets.py) for three registered bases of different families and
encoder counts: the demo model encred_tiny (3 encoders), deepseek_vl_tiny_random (2) and
eagle2_9b (2).  Only the predictions are synthetic (chosen accuracies per kept set); the
files, their names and layout are VLMEvalKit's."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest

import report_sheets as RS
from vlmeval_encred.cli import main
from vlmeval_encred.registry import get_base
from vlmeval_encred.report import ReportError
from vlmeval_encred.report.compare import build_comparison, stem

pytest.importorskip("vlmeval")

DATASETS = ["SEEDBench_IMG", "AI2D_TEST", "RealWorldQA"]
# encoder -> accuracy it adds on top of 0.2 (no vision); capped at 1.0, steps of 0.1 (10 samples)
GAINS = {"encred_tiny": {"lowres": 0.3, "hires": 0.2, "colour": 0.1},
         "deepseek_vl_tiny_random": {"siglip": 0.5, "sam": 0.1},
         "eagle2_9b": {"siglip": 0.3, "convnext": 0.4}}
MODELS = list(GAINS)


def _acc(base: str) -> dict[tuple[str, ...], float]:
    encs = get_base(base).encoders
    out = {}
    for k in range(len(encs) + 1):
        for kept in itertools.combinations(encs, k):
            out[kept] = round(min(1.0, 0.2 + sum(GAINS[base][e] for e in kept)), 1)
    return out


@pytest.fixture(scope="module")
def lattice(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("compare_sheets")
    work = RS.build_lattices(str(root), {b: _acc(b) for b in MODELS}, DATASETS)
    suite = root / "three.yaml"
    import yaml

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "vlmeval_encred" / "benchmarks.yaml").read_text())
    raw["suites"] = {"three": {"categories": ["General", "Knowledge", "Vision-Centric"],
                               "benchmarks": ["SEED-I", "AI2D", "RealWorldQA"]}}
    suite.write_text(yaml.safe_dump(raw))
    return work, suite


def test_three_bases_table_and_figures(lattice, tmp_path):
    work, suite = lattice
    out = tmp_path / "cmp"
    res = build_comparison(work, MODELS, suite="three", suite_file=suite, out_dir=out, cache=False)
    assert res.levels == ["General", "Knowledge", "Vision-Centric", "Overall"]
    by = {x["model"]: x for x in res.summary}
    assert by["encred_tiny"]["variants_present"] == 8 and by["eagle2_9b"]["variants_total"] == 4
    assert not res.missing_cells
    for m in MODELS:
        acc = _acc(m)
        encs = get_base(m).encoders
        full, none = 100 * acc[encs], 100 * acc[()]
        # scores follow from the planted accuracies through VLMEvalKit's evaluate; seeded predictions
        # hit the target accuracy only on average, so check the structure exactly and values loosely
        assert by[m]["full"]["Overall"] == pytest.approx(full, abs=15)
        assert by[m]["no_vision"]["Overall"] == pytest.approx(none, abs=15)
        cur_rows = [c for c in res.cur if c["model"] == m]
        assert [c["encoder"] for c in cur_rows] == list(encs)
        o = {c["encoder"]: c["Overall"] for c in cur_rows}
        assert by[m]["ig"]["Overall"] == pytest.approx(max(o.values()) - min(o.values()))
        k1 = [k for k in res.k_curves if k["model"] == m and k["k"] == 1][0]
        assert by[m]["best_single_score"] == k1["max"] and by[m]["worst_single_score"] == k1["min"]
        assert [k["k"] for k in res.k_curves if k["model"] == m] == list(range(len(encs) + 1))
        k0 = [k for k in res.k_curves if k["model"] == m and k["k"] == 0][0]
        assert k0["rel_mean"] == pytest.approx(100.0)
    s = stem(MODELS, "three")
    assert {p.name for p in out.iterdir()} >= {f"{s}.xlsx", f"{s}.md", f"{s}.json", f"{s}_k_curves.png",
                                               f"{s}_cur_heatmap.png", ".encred-report-manifest.json"}
    for f in ("fig_k_curves", "fig_cur_heatmap"):
        assert res.files[f].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = res.files["markdown"].read_text()
    assert all(m in md for m in MODELS) and "no vision" in md and "IG" in md
    from openpyxl import load_workbook

    wb = load_workbook(res.files["xlsx"], read_only=True)
    assert wb.sheetnames == ["Comparison", "CUR", "k-masked curves", "Missing cells", "Missing metrics"]
    rows = list(wb["CUR"].iter_rows(values_only=True))
    assert len(rows) == 1 + 3 + 2 + 2
    js = json.loads(res.files["json"].read_text())
    assert js["models"] == MODELS and len(js["summary"]) == 3


def test_incomplete_lattice_is_shown_with_missing_cells_named(lattice, tmp_path):
    src, suite = lattice
    work = tmp_path / "work"
    shutil.copytree(src, work, symlinks=True)
    spec = get_base("encred_tiny")
    gone = spec.entry_name(("hires",))
    shutil.rmtree(work / gone)  # a leave-one-out variant never run
    half = spec.entry_name(("lowres", "colour"))
    for f in list((work / half).rglob("*AI2D_TEST*")):  # one benchmark of another variant not run
        f.unlink()
    res = build_comparison(work, MODELS, suite="three", suite_file=suite, out_dir=tmp_path / "o", cache=False)
    by = {x["model"]: x for x in res.summary}
    assert by["encred_tiny"]["variants_present"] == 6
    assert by["deepseek_vl_tiny_random"]["variants_present"] == 4
    named = {(c["variant"], c["benchmark"]) for c in res.missing_cells if c["model"] == "encred_tiny"}
    assert named == {(gone, "SEED-I"), (gone, "AI2D"), (gone, "RealWorldQA"), (half, "AI2D")}
    cur = {c["encoder"]: c for c in res.cur if c["model"] == "encred_tiny"}
    assert cur["hires"]["Overall"] is None and cur["lowres"]["Overall"] is not None
    assert by["encred_tiny"]["ig"]["Overall"] is None and by["encred_tiny"]["full"]["Overall"] is not None
    assert any(m["model"] == "encred_tiny" and gone in m["needs"] for m in res.missing_metrics)
    md = res.files["markdown"].read_text()
    assert "## Missing cells" in md and gone in md and half in md
    # other models untouched
    assert by["eagle2_9b"]["ig"]["Overall"] is not None


def test_model_without_results_and_errors(lattice, tmp_path, capsys):
    work, suite = lattice
    res = build_comparison(work, ["encred_tiny", "imof_13b"], suite="three", suite_file=suite, write=False,
                           cache=False)
    imof = res.summary[1]
    assert imof["variants_present"] == 0 and "no results at all for imof_13b" in imof["error"]
    assert res.missing_cells[-1]["model"] == "imof_13b"
    with pytest.raises(ReportError, match="two or more distinct"):
        build_comparison(work, ["encred_tiny"], suite="three", suite_file=suite, write=False)
    with pytest.raises(ReportError, match="no_such_base"):
        build_comparison(work, ["encred_tiny", "no_such_base"], suite="three", suite_file=suite, write=False)
    out = tmp_path / "cli"
    rc = main(["report", "--work-dir", str(work), "--model", *MODELS, "--suite", "three", "--suite-file",
               str(suite), "--out", str(out), "--no-cache"])
    text = capsys.readouterr().out
    assert rc == 0 and "encred_tiny: 8/8 variants complete" in text and "fig_k_curves" in text
    rc = main(["report", "--work-dir", str(work), "--model", *MODELS, "--encoders", "a,b"])
    assert rc == 2 and "registered bases only" in capsys.readouterr().err


def test_encoders_of_a_registered_base_in_another_form(lattice, tmp_path, capsys):
    """``--encoders`` naming a registered base's own encoders in another order or case gives the
    registry's variants and labels; any other set (here a subset, which would call a variant with
    two encoders still on "no vision") is refused with the registered names."""
    from vlmeval_encred.report import build_report

    work, suite = lattice
    kw = dict(suite="three", suite_file=suite, n_boot=0, write=False, cache=False)
    ref = build_report(work, "encred_tiny", **kw)
    res = build_report(work, "encred_tiny", encoders=["Colour", "HIRES", " lowres"], **kw)
    assert res.variants == ref.variants and res.encoders == ref.encoders
    assert res.variants[-1]["kept"] == [] and res.variants[-1]["name"] == "encred_tiny_mask_lowres_hires_colour"
    assert res.cur == ref.cur and all(c["status"] == "ok" for c in res.cells)
    with pytest.raises(ReportError, match=r"--encoders hires does not name the encoders of the registered base "
                                          r"'encred_tiny', which are lowres,hires,colour"):
        build_report(work, "encred_tiny", encoders=["hires"], **kw)
    rc = main(["report", "--work-dir", str(work), "--model", "encred_tiny", "--encoders", "hires,lowres",
               "--suite", "three", "--suite-file", str(suite), "--n-boot", "0", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "leave --encoders out for a registered base" in err and "Traceback" not in err
