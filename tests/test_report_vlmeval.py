"""The report on result sheets written by VLMEvalKit's own evaluate code (see report_sheets.py):
every evaluation type of the 15 paper benchmarks, each output layout, missing/stale/corrupt
cells, suite errors, the overwrite policy and the CLI.  Importing vlmeval (~15 s) and
evaluating happen once per session."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

import report_sheets as RS
from vlmeval_encred.report import ReportError, build_report
from vlmeval_encred.report.writers import MANIFEST, OutputConflict
from vlmeval_encred.suites import SuiteError

pytest.importorskip("vlmeval")

ENC = list(RS.ENCODERS)
FULL = RS.BASE


@pytest.fixture(scope="session")
def sheets(tmp_path_factory) -> Path:
    return RS.build(str(tmp_path_factory.mktemp("vlmeval_sheets")))


@pytest.fixture()
def work(sheets, tmp_path) -> Path:
    dst = tmp_path / "work"
    shutil.copytree(sheets, dst, symlinks=True)
    return dst


def report(work: Path, **kw):
    kw.setdefault("encoders", ENC)
    kw.setdefault("n_boot", 200)
    kw.setdefault("write", False)
    return build_report(work, RS.BASE, **kw)


def _cell(res, variant, bench):
    return next(c for c in res.cells if c["variant"] == variant and c["benchmark"] == bench)


def test_every_cell_read_and_per_sample_matches_headline(sheets):
    res = report(sheets)
    assert len(res.cells) == 4 * 15
    bad = [c for c in res.cells if c["status"] != "ok" or c["per_sample"] != "ok"]
    assert not bad, bad
    assert res.missing_metrics == []
    run = sheets / FULL / RS.RUN
    s = res.scores[FULL]
    import csv
    mme = next(csv.DictReader(open(run / f"{FULL}_MME_score.csv")))
    assert s["MME"] == pytest.approx(float(mme["perception"]) / 20)
    ocr = json.loads((run / f"{FULL}_OCRBench_score.json").read_text())
    assert s["OCRBench"] == pytest.approx(ocr["Final Score"] / 10)
    parts = [float(next(csv.DictReader(open(run / f"{FULL}_CV-Bench-{p}_acc.csv")))["Overall"]) for p in ("2D", "3D")]
    assert s["CV-Bench"] == pytest.approx(50 * sum(parts))
    mmmu = [r for r in csv.DictReader(open(run / f"{FULL}_MMMU_DEV_VAL_acc.csv")) if r["split"] == "validation"]
    assert s["MMMU"] == pytest.approx(100 * float(mmmu[0]["Overall"]))
    mv = [r for r in csv.DictReader(open(run / f"{FULL}_MathVista_MINI_{RS.JUDGE}_score.csv"))
          if r["Task&Skill"] == "Overall"]
    assert s["MathVista"] == pytest.approx(float(mv[0]["acc"]))
    assert s["General"] == pytest.approx((s["GQA"] + s["MMB"] + s["MME"] + s["SEED-I"]) / 4)
    assert s["Overall"] == pytest.approx(sum(s[c] for c in res.categories) / 4)
    none = res.scores[RS.variant_name(("a", "b"))]
    assert res.cur["a"]["Overall"] == pytest.approx(
        (s["Overall"] - res.scores[RS.variant_name(("a",))]["Overall"]) / s["Overall"] * 100)
    assert res.shapley["sum"] == pytest.approx(s["Overall"] - none["Overall"])
    cur_rows = [b for b in res.bootstrap if b["quantity"] == "CUR" and b["level"] == "Overall"]
    assert len(cur_rows) == 2 and all(b["lo"] <= b["estimate"] <= b["hi"] for b in cur_rows)


def test_writes_workbook_markdown_json_figures(work, tmp_path):
    out = tmp_path / "out"
    res = report(work, write=True, out_dir=out)
    from openpyxl import load_workbook

    wb = load_workbook(res.files["xlsx"])
    assert {"Scores", "CUR", "k-masked curve", "Shapley", "Interactions", "Bootstrap", "Cells"} <= set(wb.sheetnames)
    ws = wb["Scores"]
    header = [c.value for c in ws[1]]
    cell = ws.cell(row=2, column=header.index("Overall") + 1)
    assert isinstance(cell.value, float) and cell.number_format == "0.00"
    assert cell.value == pytest.approx(res.scores[FULL]["Overall"])
    md = res.files["markdown"].read_text()
    assert "## CUR" in md and "IG (max - min)" in md and "check passed" in md
    for k in ("fig_cur_heatmap", "fig_k_curve", "fig_intervals"):
        assert res.files[k].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(res.files["json"].read_text())
    assert data["cur"]["a"]["Overall"] == pytest.approx(res.cur["a"]["Overall"])
    man = json.loads((out / MANIFEST).read_text())
    assert set(man["files"]) == {p.name for k, p in res.files.items() if k != "manifest"}
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def _to_flat(work: Path, model: str) -> None:
    d = work / model
    run = d / RS.RUN
    for f in list(d.iterdir()):
        if f.is_symlink():
            f.unlink()
    for f in run.iterdir():
        shutil.move(str(f), d / f.name)
    run.rmdir()


def test_flat_layout_ms_vlmeval(work):
    for _, model, _ in RS.variants():
        _to_flat(work, model)
    res = report(work)
    bad = [c for c in res.cells if c["status"] != "ok" or set(c["run"].split(", ")) != {"(flat)"}]
    assert not bad, bad[:3]


def test_legacy_layout_and_newest_run_wins(work):
    model = RS.variant_name(("a",))
    d = work / model
    for f in d.iterdir():
        if f.is_symlink():
            f.unlink()
    (d / RS.RUN).rename(d / "T20240101_Gdeadbeef")
    res = report(work)
    c = _cell(res, model, "AI2D")
    assert c["status"] == "ok" and c["run"] == "T20240101_Gdeadbeef"
    # a newer upstream-style run with a different AI2D score is preferred
    new = d / "T20250601-101010"
    new.mkdir()
    for f in (d / "T20240101_Gdeadbeef").glob(f"{model}_AI2D_TEST*"):
        shutil.copy2(f, new / f.name)
    acc = new / f"{model}_AI2D_TEST_acc.csv"
    acc.write_text('"split","Overall"\n"none","0.125"\n')
    res = report(work)
    c = _cell(res, model, "AI2D")
    assert c["run"] == "T20250601-101010" and c["score"] == pytest.approx(12.5)
    assert "not used for intervals" in c["per_sample"]  # its per-sample file says otherwise


def test_missing_variant_is_reported_with_what_is_needed(work):
    shutil.rmtree(work / RS.variant_name(("b",)))
    res = report(work)
    miss = [c for c in res.cells if c["status"] == "missing"]
    assert len(miss) == 15 and all("no directory" in c["reason"] for c in miss)
    assert res.cur["b"]["Overall"] is None and res.cur["a"]["Overall"] is not None
    assert res.ig["Overall"] is None and res.shapley is None
    needs = " ".join(m["needs"] for m in res.missing_metrics)
    assert RS.variant_name(("b",)) in needs and "missing masks: -b" in needs


def test_missing_single_cell_and_unevaluated_predictions(work):
    model = RS.variant_name(("a",))
    run = work / model / RS.RUN
    for f in list(run.glob(f"{model}_TextVQA_VAL_*")) + [work / model / f"{model}_TextVQA_VAL_acc.csv",
                                                           work / model / f"{model}_TextVQA_VAL_results.xlsx"]:
        f.unlink()
    res = report(work)
    c = _cell(res, model, "TextVQA")
    assert c["status"] == "missing" and "never evaluated" in c["reason"]
    assert res.scores[model]["TextVQA"] is None and res.scores[model]["OCR & Chart"] is None
    assert res.cur["b"]["OCR & Chart"] is not None  # b's leave-one-out variant is intact
    assert res.cur["a"]["OCR & Chart"] is None


def test_corrupt_headline_and_per_sample_sheets(work):
    model = RS.BASE
    run = work / model / RS.RUN
    (run / f"{model}_MME_score.csv").write_text('"perception"\n"lots"\n')
    (run / f"{model}_AI2D_TEST_exact_matching_result.xlsx").write_bytes(b"PK\x03\x04 truncated")
    res = report(work)
    c = _cell(res, model, "MME")
    assert c["status"] == "unreadable" and "MME_score.csv" in c["reason"] and "'lots'" in c["reason"]
    c = _cell(res, model, "AI2D")
    assert c["status"] == "ok" and "not a readable .xlsx" in c["per_sample"]
    assert any(m["level"] == "AI2D" and m["metric"] == "bootstrap CI" for m in res.missing_metrics)


def test_stale_cell_when_predictions_are_newer(work):
    model = RS.BASE
    pred = work / model / RS.RUN / f"{model}_ChartQA_TEST.xlsx"
    t = time.time() + 100
    os.utime(pred, (t, t))
    res = report(work)
    c = _cell(res, model, "ChartQA")
    assert c["status"] == "stale" and "older than the predictions" in c["reason"]
    assert c["score"] is not None


def test_suite_errors_are_specific(work, tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("benchmarks:\n  X: {category: C, datasets: [X], preset: mcq}\n"
                 "suites:\n  s: {benchmarks: [X, Nope]}\npresets:\n  mcq: {headline: {file: '{model}_{dataset}_acc.csv', column: Overall}}\n")
    with pytest.raises(SuiteError, match=r"benchmark 'Nope' is not defined"):
        report(work, suite="s", suite_file=f)
    with pytest.raises(SuiteError, match=r"unknown suite 'zzz'"):
        report(work, suite="zzz")
    f2 = tmp_path / "s2.yaml"
    f2.write_text("benchmarks:\n  X: {category: C, datasets: [X], headline: {file: '{model}_{data}.csv', column: O}}\n"
                  "suites:\n  s: {benchmarks: [X]}\n")
    with pytest.raises(SuiteError, match=r"s2.yaml: benchmark 'X'.*unknown placeholder"):
        report(work, suite="s", suite_file=f2)
    f3 = tmp_path / "s3.yaml"
    f3.write_text("benchmarks:\n  X: {category: C, datasets: [X], headline: {file: '{model}_x.csv', column: O},"
                  " per_sample: {file: '{model}_r.xlsx', rule: magic, column: hit}}\nsuites:\n  s: {benchmarks: [X]}\n")
    with pytest.raises(SuiteError, match=r"rule 'magic' is not one of"):
        report(work, suite="s", suite_file=f3)


def test_custom_mcq_dataset_in_users_suite(work, tmp_path):
    """A VLMEvalKit custom MCQ dataset writes the MCQ files under its own name."""
    for _, model, _ in RS.variants():
        for f in (work / model / RS.RUN).glob(f"{model}_AI2D_TEST*"):
            f.rename(f.with_name(f.name.replace("AI2D_TEST", "MyShapes")))
    f = tmp_path / "mine.yaml"
    src = Path(__file__).resolve().parents[1] / "benchmarks.yaml"
    import yaml

    raw = yaml.safe_load(src.read_text())
    raw["benchmarks"] = {"Shapes": {"category": "Mine", "datasets": ["MyShapes"], "preset": "mcq"}}
    raw["suites"] = {"mine": {"benchmarks": ["Shapes"]}}
    f.write_text(yaml.safe_dump(raw))
    res = report(work, suite="mine", suite_file=f)
    assert all(c["status"] == "ok" and c["per_sample"] == "ok" for c in res.cells)
    assert res.scores[FULL]["Overall"] == res.scores[FULL]["Shapes"]


def test_nothing_at_all_is_an_error(tmp_path):
    (tmp_path / "w").mkdir()
    with pytest.raises(ReportError, match="no results at all"):
        report(tmp_path / "w")
    with pytest.raises(ReportError, match="unknown base model"):
        build_report(tmp_path / "w", "not_a_base")


def test_overwrite_policy_and_atomicity(work, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    theirs = out / f"{RS.BASE}_paper15.md"
    theirs.write_text("my notes")
    (out / "keep.txt").write_text("user file")
    with pytest.raises(OutputConflict, match="not written by encred report"):
        report(work, write=True, out_dir=out)
    assert theirs.read_text() == "my notes" and sorted(p.name for p in out.iterdir()) == sorted(
        [theirs.name, "keep.txt"])
    theirs.unlink()
    first = report(work, write=True, out_dir=out)
    before = first.files["markdown"].read_text()
    # a failing writer leaves the previous report intact and no temporary files
    from vlmeval_encred.report import writers as W

    def boom(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(W, "fig_k_curve", boom)
    with pytest.raises(RuntimeError, match="disk full"):  # seed=1: new content (an identical one is skipped)
        report(work, write=True, out_dir=out, seed=1)
    monkeypatch.undo()
    assert first.files["markdown"].read_text() == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    # our own files are replaced; an edited one is not
    second = report(work, write=True, out_dir=out, figures=False)
    assert not (out / f"{RS.BASE}_paper15_k_curve.png").exists()  # ours, no longer produced
    assert (out / "keep.txt").read_text() == "user file"
    second.files["markdown"].write_text("edited by hand")
    with pytest.raises(OutputConflict, match="was changed since"):
        report(work, write=True, out_dir=out)
    report(work, write=True, out_dir=out, force=True)
    assert second.files["markdown"].read_text() != "edited by hand"


def test_cli(work, tmp_path, capsys):
    from vlmeval_encred.cli import main

    rc = main(["report", "--work-dir", str(work), "--model", RS.BASE, "--encoders", "a,b", "--n-boot", "100",
               "--out", str(tmp_path / "o"), "--no-figures"])
    out = capsys.readouterr().out
    assert rc == 0 and "60 ok" in out and "markdown:" in out
    rc = main(["report", "--work-dir", str(work), "--model", RS.BASE, "--encoders", "a,b", "--suite", "nope"])
    assert rc == 2 and "unknown suite 'nope'" in capsys.readouterr().err


# ---------------------------------------------------------------- failure modes (docs/failure-modes.md)


def _damage_per_sample(work: Path, masked: tuple[str, ...], dataset: str, how: str) -> Path:
    model = RS.variant_name(masked)
    f = work / model / RS.RUN / f"{model}_{dataset}_exact_matching_result.xlsx"
    if how == "truncated":  # a copy cut off mid-write: not a readable zip any more
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2])
    else:  # rows lost: still a readable sheet, but it no longer reproduces the headline
        import pandas as pd

        df = pd.read_excel(f)
        df.iloc[: len(df) // 2].to_excel(f, index=False, engine="xlsxwriter")
    return f


@pytest.mark.parametrize("how", ["truncated", "rows_lost"])
def test_partial_per_sample_file_marks_every_number_it_weakens(work, tmp_path, capsys, monkeypatch, how):
    """A damaged per-sample file of a leave-one-out variant: its headline is fine, so every cell is
    'ok', but CUR(a) loses its interval at AI2D, Knowledge and Overall.  That must show next to the
    number in the console, the Markdown, both figures, and under 'Not computed'."""
    from vlmeval_encred.cli import main
    from vlmeval_encred.report import writers as W

    bad = _damage_per_sample(work, ("a",), "AI2D_TEST", how)
    seen = {}
    heat, intervals = W.fig_cur_heatmap, W.fig_intervals
    monkeypatch.setattr(W, "fig_cur_heatmap", lambda *a, **k: (seen.update(heat=k), heat(*a, **k))[1])
    monkeypatch.setattr(W, "fig_intervals", lambda *a, **k: (seen.update(iv=(a[1], k)), intervals(*a, **k))[1])
    out = tmp_path / "o"
    rc = main(["report", "--work-dir", str(work), "--model", RS.BASE, "--encoders", "a,b", "--n-boot", "100",
               "--out", str(out), "--no-cache"])
    console = capsys.readouterr().out
    assert rc == 0
    assert "60 ok; 1 without usable per-sample data" in console
    assert f"per-sample data not usable: {RS.variant_name(('a',))}/AI2D: " in console and bad.name in console
    cur_line = next(line for line in console.splitlines() if line.startswith("CUR Overall (%): "))
    assert "a " in cur_line and "(no interval) †1" in cur_line and "b " in cur_line and "]" in cur_line
    assert f"†1 no interval: {RS.variant_name(('a',))}/AI2D: " in console

    md = (out / f"{RS.BASE}_paper15.md").read_text()
    row_a = next(line for line in md.splitlines() if line.startswith("| a |"))
    assert row_a.rstrip(" |").endswith("†1") and row_a.count("†1") == 2  # Knowledge and Overall
    assert "1 cell(s) without usable per-sample data" in md
    note = next(line for line in md.splitlines() if line.startswith("†1 no interval: "))
    assert bad.name in note
    not_computed = md.split("## Not computed", 1)[1].split("\n## ", 1)[0]
    for lvl in ("AI2D", "Knowledge", "Overall"):
        assert f"| bootstrap CI of CUR(a) | {lvl} |" in not_computed
    assert bad.name in not_computed
    assert "## Per-sample data not usable" in md

    res = json.loads((out / f"{RS.BASE}_paper15.json").read_text())
    w = {(x["subject"], x["level"]): x for x in res["weakened"]}
    assert w[("a", "Overall")]["interval"] is False and w[("a", "Overall")]["mark"] == "†1"
    assert ("b", "Overall") not in w  # b's inputs are intact
    assert seen["heat"]["marks"][("a", "Overall")] == "†1" and bad.name in seen["heat"]["notes"][0]
    rows, kw = seen["iv"]
    r = next(x for x in rows if (x["subject"], x["level"]) == ("a", "Overall"))
    assert r["lo"] is None and r["mark"] == "†1" and bad.name in kw["notes"][0]
    from openpyxl import load_workbook

    wb = load_workbook(out / f"{RS.BASE}_paper15.xlsx", read_only=True)
    assert {"Per-sample issues", "Weakened numbers"} <= set(wb.sheetnames)


def test_second_suite_into_the_same_out_keeps_the_first_report(work, tmp_path):
    """Two reports (another suite or another model) sharing one --out: neither deletes the other's files."""
    out = tmp_path / "shared"
    first = report(work, write=True, out_dir=out)
    before = {p: p.read_bytes() for k, p in first.files.items() if k != "manifest"}
    f = tmp_path / "two.yaml"
    import yaml

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "vlmeval_encred" / "benchmarks.yaml").read_text())
    raw["suites"] = {"two": {"benchmarks": ["AI2D", "MMVP"]}}
    f.write_text(yaml.safe_dump(raw))
    second = report(work, write=True, out_dir=out, suite="two", suite_file=f, figures=False)
    assert {p: p.read_bytes() for p in before} == before  # every file of the first report, unchanged
    assert all(p.exists() for p in second.files.values())
    # refreshing the first one (new content) is still allowed and leaves the second alone
    report(work, write=True, out_dir=out, seed=1)
    assert all(p.exists() for p in second.files.values())
    man = json.loads((out / MANIFEST).read_text())
    assert set(man["sets"]) == {f"{RS.BASE}_paper15", f"{RS.BASE}_two"}


def test_out_that_cannot_be_written_is_one_line(work, tmp_path, capsys, monkeypatch):
    from vlmeval_encred import safe_files as SF
    from vlmeval_encred.cli import main

    args = ["report", "--work-dir", str(work), "--model", RS.BASE, "--encoders", "a,b", "--n-boot", "0",
            "--no-figures", "--no-cache"]
    a_file = tmp_path / "taken.txt"
    a_file.write_text("x")
    rc = main(args + ["--out", str(a_file)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "taken.txt: it is an existing file, not a folder; choose another --out" in err

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(SF.tempfile, "mkstemp", denied)  # a read-only folder, also when tests run as root
    rc = main(args + ["--out", str(tmp_path / "ro")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "cannot write into" in err and "Permission denied; choose another --out" in err
    assert not list((tmp_path / "ro").iterdir())
