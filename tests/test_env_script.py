"""scripts/env.sh and the test harness, as CI and a second checkout use them (real subprocesses).

* Two checkouts share the cached environments but never each other's code: each is installed
  into a layer of its own (``.venvs/<env>``), and a source checkout binds its own
  ``model_wrappers`` even when imported through PYTHONPATH beside another installed checkout.
* A real-code test without its registered source is reported "not run here" (tolerated by
  ENCRED_NO_SKIPS and counted in CI's table); any other skip still fails CI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import HANG_GUARD, ROOT

PROBE = ("import vlmeval_encred, vlmeval_encred.model_wrappers as m, shutil; "
         "print(vlmeval_encred.__file__); print(m.__file__); print(shutil.which('encred'))")


@pytest.fixture(scope="module")
def second_clone(tmp_path_factory) -> Path:
    """A clean clone of this checkout's committed code, as a user's second clone or a CI run."""
    dest = tmp_path_factory.mktemp("clone") / "vlmeval-encred"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True, timeout=HANG_GUARD)
    return dest


def test_a_second_checkout_never_repoints_the_first(second_clone):
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "ENCRED_ENV", "PYTHONPATH")}
    other = subprocess.run(["bash", "scripts/env.sh", "python", "-c", PROBE], cwd=second_clone, env=env,
                           capture_output=True, text=True, timeout=HANG_GUARD)
    assert other.returncode == 0, other.stderr[-3000:]
    core, family, script = other.stdout.split()
    assert core.startswith(str(second_clone)) and family.startswith(str(second_clone))
    assert script.startswith(str(second_clone / ".venvs"))
    # this checkout's own layer still runs this checkout's code
    mine = ROOT / ".venvs" / "base" / "bin" / "python"
    if not mine.exists():
        pytest.fail(f"{mine} missing: run the tests through `bash scripts/env.sh` (README)")
    again = subprocess.run([str(mine), "-c", PROBE], capture_output=True, text=True, timeout=HANG_GUARD, env=env)
    core, family, _ = again.stdout.split()
    assert core.startswith(str(ROOT / "vlmeval_encred")) and family.startswith(str(ROOT / "model_wrappers"))
    encred = (ROOT / ".venvs" / "base" / "bin" / "encred").read_text().splitlines()[0]
    assert encred == f"#!{ROOT / '.venvs' / 'base' / 'bin' / 'python'}"


def test_pythonpath_to_another_clone_gets_that_clones_family_code(second_clone):
    env = dict(os.environ, PYTHONPATH=str(second_clone))
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=HANG_GUARD, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    core, family, _ = proc.stdout.split()
    assert core == str(second_clone / "vlmeval_encred" / "__init__.py")
    assert family == str(second_clone / "model_wrappers" / "__init__.py"), \
        "the core of one clone ran with the family code of another"


def _pytest(tmp_path, test_file: str, **env_extra: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    log = tmp_path / "realcode.jsonl"
    env = dict(os.environ, ENCRED_NO_SKIPS="1", ENCRED_REALCODE_LOG=str(log),
               XDG_CONFIG_HOME=str(tmp_path / "empty-config"), **env_extra)
    env.pop("PYTEST_ADDOPTS", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file],
                          cwd=tmp_path, capture_output=True, text=True, timeout=HANG_GUARD, env=env)
    rows = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    return proc, rows


def test_missing_source_is_not_run_here_and_counted(tmp_path):
    proc, rows = _pytest(tmp_path, str(ROOT / "tests" / "test_eagle1_catalog.py"))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "not run here: no eagle source (encred sources add eagle" in proc.stdout + proc.stderr or \
        "not run" in proc.stdout
    assert len(rows) == 1 and rows[0]["source"] == "eagle" and rows[0]["passed"] == 0
    assert rows[0]["not run"] >= 1 and rows[0]["path"] == ""
    table = subprocess.run([sys.executable, str(ROOT / "tests" / "realcode_table.py"), str(tmp_path / "realcode.jsonl")],
                           capture_output=True, text=True, timeout=HANG_GUARD)
    assert "no source on this machine" in table.stdout and "No upstream source is registered" in table.stdout


def test_any_other_skip_still_fails_ci(tmp_path):
    test = tmp_path / "test_other_skip.py"
    test.write_text("import pytest\n\ndef test_x():\n    pytest.skip('some other reason')\n")
    # the project's conftest (its hooks are what is under test), copied beside the test
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    proc, _ = _pytest(tmp_path, str(test))
    assert proc.returncode != 0 and "ENCRED_NO_SKIPS: skipped in CI" in proc.stdout
