"""Reading result sheets fast and only once: the two xlsx engines agree, the score cache is
invalidated by any change of a file, and an unchanged report is not rewritten.

Sheets are written the way VLMEvalKit's ``dump`` writes them (pandas ``to_excel`` with
xlsxwriter) and, for the engine comparison, also with openpyxl (what a user's own
tooling may produce).
"""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vlmeval_encred.report import build_report
from vlmeval_encred.report import score_cache as SC
from vlmeval_encred.report import xlsx as X
from vlmeval_encred.report.schema import load_suite
from vlmeval_encred.report.scores import per_sample
from vlmeval_encred.report.tables import TableError

pytest.importorskip("python_calamine")


def _frame(n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "index": np.arange(n),
        "question": [f"q{i} <b>&amp; \"quoted\" é 中文" if i % 3 else "" for i in range(n)],
        "hit": rng.integers(0, 2, n),
        "score": [bool(i % 2) for i in range(n)],
        "ratio": rng.random(n),
        "eval_match": [f"[{i % 2}.0, np.float64(0.5)]" for i in range(n)],
        "maybe": [None if i % 4 == 0 else float(i) for i in range(n)],
        "when": [dt.datetime(2025, 1, 1 + i % 28, 12, 0) for i in range(n)],
    })


def _write_openpyxl(df: pd.DataFrame, path: Path) -> None:
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.append(list(df.columns))
    for row in df.itertuples(index=False):
        ws.append([None if (isinstance(v, float) and np.isnan(v)) else
                   (v.item() if hasattr(v, "item") else v) for v in row])
    wb.save(path)


@pytest.mark.parametrize("writer", ["xlsxwriter", "openpyxl"])
def test_calamine_and_openpyxl_read_identical_frames(tmp_path, writer):
    df = _frame()
    path = tmp_path / f"sheet_{writer}.xlsx"
    if writer == "xlsxwriter":
        df.to_excel(path, index=False, engine="xlsxwriter")  # VLMEvalKit's dump()
    else:
        _write_openpyxl(df, path)
    a = X.read_xlsx(path, None, "calamine")
    b = X.read_xlsx(path, None, "openpyxl")
    assert a == b
    assert list(a) == list(df.columns)
    assert a["index"] == [float(i) for i in range(len(df))]
    assert all(type(v) is bool for v in a["score"])
    assert a["question"][0] is None and a["question"][1] == df["question"][1]
    assert [v is None for v in a["maybe"]] == list(df["maybe"].isna())
    assert a["ratio"] == pytest.approx(list(df["ratio"]), rel=1e-15)  # xlsxwriter writes 16 digits
    assert a["when"][0] == str(dt.datetime(2025, 1, 1, 12, 0))
    # pandas' own engines agree too on these files
    pd.testing.assert_frame_equal(pd.read_excel(path, engine="calamine"), pd.read_excel(path, engine="openpyxl"),
                                  check_dtype=False)


def test_engine_choice_and_errors(tmp_path, monkeypatch):
    monkeypatch.delenv(X.ENV_VAR, raising=False)
    assert X.engine() == "calamine"
    monkeypatch.setenv(X.ENV_VAR, "openpyxl")
    assert X.engine() == "openpyxl"
    monkeypatch.setenv(X.ENV_VAR, "xlrd")
    with pytest.raises(ValueError, match="expected one of calamine, openpyxl"):
        X.engine()
    monkeypatch.delenv(X.ENV_VAR)
    monkeypatch.setattr(X, "calamine_available", lambda: False)  # python-calamine not installed
    assert X.engine() == "openpyxl"
    with pytest.raises(ValueError, match="pip install python-calamine"):
        X.engine("calamine")
    monkeypatch.undo()
    bad = tmp_path / "bad.xlsx"
    bad.write_bytes(b"PK\x03\x04 truncated")
    for eng in X.ENGINES:
        with pytest.raises(TableError, match=f"bad.xlsx: not a readable .xlsx \\({eng}"):
            X.read_xlsx(bad, None, eng)
    ok = tmp_path / "ok.xlsx"
    pd.DataFrame({"index": [1], "hit": [1]}).to_excel(ok, index=False, engine="xlsxwriter")
    with pytest.raises(TableError, match="no column 'prediction'; columns: index, hit"):
        X.read_xlsx(ok, ["prediction"], "calamine")


def _mcq_sheet(path: Path, hits: list[int]) -> None:
    n = len(hits)
    pd.DataFrame({"index": range(n), "question": [f"q{i}" for i in range(n)], "prediction": ["A"] * n,
                  "hit": hits}).to_excel(path, index=False, engine="xlsxwriter")


def test_cache_hits_and_invalidates_on_size_or_mtime(tmp_path):
    part = load_suite("paper15", None).benchmark("AI2D").parts[0]
    sheet = tmp_path / "m_AI2D_TEST_exact_matching_result.xlsx"
    _mcq_sheet(sheet, [1, 0, 1, 1])
    cache = SC.ScoreCache(tmp_path / "cache")
    calls = []

    def parse():
        calls.append(1)
        return per_sample(sheet, part.per_sample, part.headline)

    u1, k1 = cache.units(sheet, part.per_sample, part.headline, parse)
    u2, k2 = cache.units(sheet, part.per_sample, part.headline, parse)
    assert (cache.hits, cache.misses, len(calls)) == (1, 1, 1) and k1 == k2
    assert list(u2.ids) == list(u1.ids) and u2.x.tolist() == u1.x.tolist() and u2.norm == u1.norm
    assert u2.score() == pytest.approx(75.0)
    # same size, new mtime: a miss (the content could differ)
    st = sheet.stat()
    os.utime(sheet, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    _, k3 = cache.units(sheet, part.per_sample, part.headline, parse)
    assert k3 != k1 and len(calls) == 2
    # rewritten with other content (other size): a miss, and the new numbers
    _mcq_sheet(sheet, [0, 0, 0, 1, 1])
    u4, k4 = cache.units(sheet, part.per_sample, part.headline, parse)
    assert k4 not in (k1, k3) and len(calls) == 3 and u4.score() == pytest.approx(40.0)
    # another spec for the same file (a suite edit) is another entry
    other = load_suite("paper15", None).benchmark("MMVP").parts[0]
    assert SC.file_key(sheet, other.per_sample, other.headline) != k4
    # a damaged entry is recomputed and replaced, with a note
    entry = next((tmp_path / "cache").rglob(f"{k4}.npz"))
    entry.write_bytes(b"garbage")
    u5, _ = cache.units(sheet, part.per_sample, part.headline, parse)
    assert len(calls) == 4 and u5.score() == pytest.approx(40.0) and cache.errors
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_cache_off(monkeypatch, tmp_path):
    monkeypatch.setenv(SC.ENV_VAR, "off")
    assert SC.default_dir() is None
    monkeypatch.setenv(SC.ENV_VAR, str(tmp_path / "c"))
    assert SC.default_dir() == tmp_path / "c"
    monkeypatch.delenv(SC.ENV_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert SC.default_dir() == tmp_path / "xdg" / "vlmeval-encred" / "report"


def _suite_file(tmp_path: Path) -> Path:
    p = tmp_path / "suite.yaml"
    p.write_text("suites:\n  two: {categories: [General, Knowledge], benchmarks: [AI2D, SQA-I]}\n"
                 "benchmarks:\n"
                 "  AI2D: {category: General, datasets: [AI2D_TEST], preset: mcq}\n"
                 "  SQA-I: {category: Knowledge, datasets: [ScienceQA_TEST], preset: mcq}\n"
                 "presets:\n  mcq:\n"
                 "    headline: {file: '{model}_{dataset}_acc.csv', column: Overall, scale: 100}\n"
                 "    per_sample: {file: '{model}_{dataset}_{judge}_result.xlsx', rule: column, column: hit}\n")
    return p


def _work(tmp_path: Path, acc: dict[tuple[str, ...], float], n: int = 20) -> Path:
    work = tmp_path / "work"
    for kept, a in acc.items():
        masked = [e for e in ("x", "y") if e not in kept]
        model = "cm" + ("_mask_" + "_".join(masked) if masked else "")
        d = work / model
        d.mkdir(parents=True, exist_ok=True)
        for ds in ("AI2D_TEST", "ScienceQA_TEST"):
            hits = [1 if i < round(a * n) else 0 for i in range(n)]
            _mcq_sheet(d / f"{model}_{ds}_exact_matching_result.xlsx", hits)
            (d / f"{model}_{ds}_acc.csv").write_text(f'"split","Overall"\n"none","{sum(hits) / n}"\n')
    return work


def test_report_reuses_cache_and_skips_unchanged_output(tmp_path):
    acc = {("x", "y"): 0.9, ("x",): 0.6, ("y",): 0.7, (): 0.2}
    work = _work(tmp_path, acc)
    suite = _suite_file(tmp_path)
    out = tmp_path / "out"
    kw = dict(suite="two", suite_file=suite, encoders=["x", "y"], n_boot=100, out_dir=out,
              cache=tmp_path / "cache")
    first = build_report(work, "cm", **kw)
    entries = sorted((tmp_path / "cache").rglob("*.npz"))
    assert len(entries) == 8 and len(list((tmp_path / "cache").rglob("*.json"))) == 1
    mtimes = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    time.sleep(0.01)
    second = build_report(work, "cm", **kw)
    assert second.bootstrap == first.bootstrap and second.cur == first.cur
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes  # nothing rewritten
    assert any("nothing rewritten" in n for n in second.notes)
    # one sheet changes: its cell, the bootstrap and the files are recomputed
    model = "cm_mask_x"
    sheet = work / model / f"{model}_AI2D_TEST_exact_matching_result.xlsx"
    _mcq_sheet(sheet, [1] * 16 + [0] * 4)
    (work / model / f"{model}_AI2D_TEST_acc.csv").write_text('"split","Overall"\n"none","0.8"\n')
    third = build_report(work, "cm", **kw)
    assert third.scores[model]["AI2D"] == pytest.approx(80.0)
    assert third.bootstrap != first.bootstrap
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 9
    assert (out / "cm_two.md").stat().st_mtime_ns != mtimes[out / "cm_two.md"]
    # without a cache, the same numbers
    fresh = build_report(work, "cm", **{**kw, "cache": False, "write": False})
    assert fresh.bootstrap == third.bootstrap and fresh.scores == third.scores


def test_interval_from_a_shared_subset_of_samples_is_marked(tmp_path, capsys):
    """One variant scored on fewer samples (its own headline agrees with them): the bootstrap uses
    the samples all variants share -- an interval from partial data, marked next to every CUR it
    touches (console, Markdown), not only a note in the JSON."""
    from vlmeval_encred.cli import main

    acc = {("x", "y"): 0.9, ("x",): 0.6, ("y",): 0.7, (): 0.2}
    work = _work(tmp_path, acc)
    model = "cm_mask_x"  # keeps y; rescored on its first 10 samples only
    _mcq_sheet(work / model / f"{model}_AI2D_TEST_exact_matching_result.xlsx", [1] * 7 + [0] * 3)
    (work / model / f"{model}_AI2D_TEST_acc.csv").write_text('"split","Overall"\n"none","0.7"\n')
    out = tmp_path / "out"
    rc = main(["report", "--work-dir", str(work), "--model", "cm", "--encoders", "x,y", "--suite", "two",
               "--suite-file", str(_suite_file(tmp_path)), "--n-boot", "100", "--out", str(out), "--no-cache"])
    console = capsys.readouterr().out
    assert rc == 0
    cur_line = next(line for line in console.splitlines() if line.startswith("CUR Overall (%): "))
    assert cur_line.count("] †1") == 2  # both encoders: their intervals are computed, on fewer samples
    assert "†1 interval from partial data: AI2D/AI2D_TEST: variants were scored on different samples; " \
           "the bootstrap uses the 10 samples all of them share (of 20)" in console
    md = (out / "cm_two.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| x |"))
    assert row.count("†1") == 2 and "| x | " in row  # General (AI2D's category) and Overall, not Knowledge
    assert "†1 interval from partial data: AI2D/AI2D_TEST" in md
