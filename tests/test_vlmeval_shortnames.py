"""Paper short names through VLMEvalKit's own run.py, past the result files.

tests/test_vlmeval_flavours.py shows that ``--data SEED-I`` writes the files of ``--data
SEEDBench_IMG``.  Here: everything else run.py does with the name -- the closing "Run Summary
Report" and the ``status.json`` it is read from, ``--mode eval``, ``--mode infer``, ``--reuse``,
a short and its official name in one command, a misspelt short name -- is what the official
names give.  Same set-up as the flavour tests (encred_tiny, greedy; stand-in TSVs under the
official names; the installed VLMEvalKit's entry point through the offline launcher), on both
ms-vlmeval (flat) and the upstream checkout (run folders).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import explain, vlmeval_env
from test_vlmeval_flavours import BASE, _flavour, _run, _standins

pytestmark = pytest.mark.envs("base", "vlmeval_checkout")

OFFICIAL = ["SEEDBench_IMG", "CV-Bench-2D", "CV-Bench-3D"]
SHORT = ["SEED-I", "CV-Bench"]
COMMON = ["--model", BASE, "--judge", "exact_matching", "--api-nproc", "1"]


def _summary(proc) -> dict[str, list[str]]:
    """The rows of run.py's closing "Run Summary Report" table: benchmark -> its cells."""
    out = proc.stdout + proc.stderr
    at = out.rfind("Run Summary Report:")
    assert at >= 0, explain(proc)
    lines = out[at:].splitlines()[2:]  # the report line, then the logger line the table follows
    rows: dict[str, list[str]] = {}
    for line in lines[2:]:  # header, dashes
        if not line.strip() or line.startswith("["):
            break
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = cells[1:]
    assert rows, out[at:at + 3000]
    return rows


def _run_dirs(work: Path) -> list[Path]:
    d = work / BASE
    if _flavour().layout == "flat":
        return [d]
    return sorted(p for p in d.iterdir() if p.is_dir() and p.name.startswith("T"))


def _status(work: Path) -> dict[str, dict]:
    """status.json of the newest run: dataset -> its entry without timestamps; each named
    prediction file must exist."""
    run = _run_dirs(work)[-1]
    data = json.loads((run / "status.json").read_text())["datasets"]
    for name, entry in data.items():
        entry.pop("updated_at", None)
        pf = entry.get("prediction_file")
        if pf:
            assert (run / pf).is_file() or Path(pf).is_file(), (name, pf, sorted(p.name for p in run.iterdir()))
    return data


def _env(lmu: Path, **extra: str) -> dict[str, str]:
    return vlmeval_env(lmu, PYTHONHASHSEED="0", **extra)


@pytest.fixture(scope="module")
def official_run(tmp_path_factory):
    """One run under the official names: what every short-name run is compared with."""
    root = tmp_path_factory.mktemp("official")
    lmu = root / "LMUData"
    _standins(lmu, set(OFFICIAL) | {"ChartQA_TEST"})
    work = root / "work"
    proc = _run([*COMMON, "--data", *OFFICIAL, "--work-dir", str(work)], _env(lmu))
    assert proc.returncode == 0, explain(proc)
    return dict(lmu=lmu, work=work, summary=_summary(proc), status=_status(work))


def _copy(official_run, tmp_path: Path) -> Path:
    work = tmp_path / "work"
    shutil.copytree(official_run["work"], work, symlinks=True)
    return work


# --- case 1: the closing summary ----------------------------------------------------------------

def test_run_summary_of_short_names_is_the_official_runs(official_run, tmp_path):
    """Was: rows ``SEED-I``/``CV-Bench`` whose prediction file ``<m>_SEED-I.xlsx`` does not
    exist (no infer/judge fail rates) and SEED-I's accuracy on 0-1 where the official row says
    33.33 (the alias' class picked the scale, not SEEDBench_IMG's)."""
    work = tmp_path / "work"
    proc = _run([*COMMON, "--data", *SHORT, "--work-dir", str(work)], _env(official_run["lmu"]))
    assert proc.returncode == 0, explain(proc)
    assert _summary(proc) == official_run["summary"], explain(proc)
    assert _status(work) == official_run["status"]
    assert official_run["summary"]["SEEDBench_IMG"][2:4] == ["Overall Acc", "33.33"]  # the 0-100 scale


# --- case 2: --mode eval --------------------------------------------------------------------------

def test_mode_eval_with_short_names_evaluates_the_official_predictions(official_run, tmp_path):
    """Was: ``--mode eval --data SEED-I`` skipped with "No reusable completed prediction found"
    and exit 0 although ``<m>_SEEDBench_IMG.xlsx`` was there.  Now it evaluates the official
    predictions as ``--mode eval --data SEEDBench_IMG`` does, without building the model."""
    work = _copy(official_run, tmp_path)
    for p in (work / BASE).rglob("*_acc.csv"):  # CV-Bench's evaluate returns an existing score file
        p.unlink()
    proc = _run([*COMMON, "--mode", "eval", "--data", *SHORT, "--work-dir", str(work)],
                _env(official_run["lmu"], ENCRED_TEST_FORBID_BUILD=BASE))
    assert proc.returncode == 0, explain(proc)
    log = proc.stdout + proc.stderr
    assert "No reusable completed prediction" not in log and "TRIPWIRE" not in log, explain(proc)
    assert _summary(proc) == official_run["summary"], explain(proc)
    for name in OFFICIAL:  # scored again, in this run (a new run folder on the checkout)
        scores = [p for p in _run_dirs(work)[-1].glob(f"{BASE}_{name}_acc.csv") if p.is_file()]
        assert scores, (name, explain(proc))


def test_mode_eval_without_complete_predictions_says_what_is_missing_per_part(official_run, tmp_path):
    """``--mode eval --data SEED-I CV-Bench`` with SEED's predictions cut short and CV-Bench-3D's
    gone: nothing is evaluated (as for the official names; CV-Bench needs both parts) and the
    summary says per official dataset what is missing, as run.py says it for the official names.
    Was: rows ``SEED-I``/``CV-Bench`` both "No infer result found" (run.py looked at the alias'
    file), hiding that SEED's predictions are there but incomplete and 2D's are complete."""
    import pandas as pd

    work = _copy(official_run, tmp_path)
    for p in (work / BASE).rglob(f"{BASE}_CV-Bench-3D.xlsx"):
        p.unlink()
    for p in (work / BASE).rglob(f"{BASE}_SEEDBench_IMG.xlsx"):
        if p.is_file() and not p.is_symlink():
            pd.read_excel(p).iloc[:3].to_excel(p, index=False)
    proc = _run([*COMMON, "--mode", "eval", "--data", *SHORT, "--work-dir", str(work)],
                _env(official_run["lmu"], ENCRED_TEST_FORBID_BUILD=BASE))
    assert proc.returncode == 0, explain(proc)
    rows = _summary(proc)
    assert "CV-Bench" not in rows and "SEED-I" not in rows, rows
    assert rows["SEEDBench_IMG"][4] == "Incomplete infer result", rows
    assert rows["CV-Bench-3D"][4] == "No infer result found", rows
    assert rows["CV-Bench-2D"][4] == "not evaluated: another part of CV-Bench has no complete predictions", rows


# --- new cases: --mode infer, --reuse, a short and its official name together, a misspelt name ---

def test_mode_infer_with_a_short_name_reports_the_official_predictions(official_run, tmp_path):
    """Was: row ``SEED-I`` with no infer fail rate (its prediction file did not exist)."""
    work = tmp_path / "work"
    proc = _run([*COMMON, "--mode", "infer", "--data", "SEED-I", "--work-dir", str(work)], _env(official_run["lmu"]))
    assert proc.returncode == 0, explain(proc)
    rows = _summary(proc)
    assert list(rows) == ["SEEDBench_IMG"], rows
    assert rows["SEEDBench_IMG"][0] == "0.00% (0/6)" and rows["SEEDBench_IMG"][4] == "mode_infer", rows
    st = _status(work)["SEEDBench_IMG"]
    assert st["prediction_file"].endswith(f"{BASE}_SEEDBench_IMG.xlsx") and st["skip_reason"] == "mode_infer"


def test_reuse_with_a_short_name_takes_the_official_predictions(official_run, tmp_path):
    """``--reuse --data SEED-I`` after an official-name run: no model is built, the official
    predictions are evaluated.  On the checkout (run folders) it was: ``--reuse`` looked for
    ``<m>_SEED-I.xlsx`` in the earlier run folders, found nothing and answered every question
    again; now the new run folder gets the official file and status.json its source run."""
    work = _copy(official_run, tmp_path)
    before = _run_dirs(work)
    proc = _run([*COMMON, "--reuse", "--data", "SEED-I", "--work-dir", str(work)],
                _env(official_run["lmu"], ENCRED_TEST_FORBID_BUILD=BASE))
    assert proc.returncode == 0, explain(proc)
    assert "TRIPWIRE" not in proc.stdout + proc.stderr, explain(proc)
    assert _summary(proc)["SEEDBench_IMG"] == official_run["summary"]["SEEDBench_IMG"], explain(proc)
    if _flavour().layout == "run-folders":
        new = _run_dirs(work)[-1]
        assert new not in before and (new / f"{BASE}_SEEDBench_IMG.xlsx").is_file()
        assert _status(work)["SEEDBench_IMG"]["source_run"] == before[-1].name


def test_short_and_official_name_in_one_command_give_one_official_row(official_run, tmp_path):
    """``--data SEED-I SEEDBench_IMG``: was two rows (one of them ``SEED-I`` with a missing file
    and another scale); now one ``SEEDBench_IMG`` row, as ``--data SEEDBench_IMG SEEDBench_IMG``."""
    work = tmp_path / "work"
    proc = _run([*COMMON, "--data", "SEED-I", "SEEDBench_IMG", "--work-dir", str(work)], _env(official_run["lmu"]))
    assert proc.returncode == 0, explain(proc)
    assert _summary(proc) == {"SEEDBench_IMG": official_run["summary"]["SEEDBench_IMG"]}, explain(proc)
    assert list(_status(work)) == ["SEEDBench_IMG"]


def test_misspelt_short_name_says_which_name_was_meant(official_run, tmp_path):
    """``--data seed-i``: VLMEvalKit would skip an unknown name with "Dataset seed-i is not valid" and
    exit 0 (for any unknown name); a name that differs from a paper short name only in case or
    punctuation stops the run first, with one line naming ``SEED-I``, and a failing exit."""
    proc = _run([*COMMON, "--data", "seed-i", "--work-dir", str(tmp_path / "work")], _env(official_run["lmu"]))
    log = proc.stdout + proc.stderr
    assert "no dataset 'seed-i'; the paper's short name is 'SEED-I' (= SEEDBench_IMG)" in log, explain(proc)
    assert proc.returncode != 0 and "Stopped before any model was built" in log, explain(proc)
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").rglob("*.xlsx"))
