"""``encred sources``: the register of the user's upstream clones, in real subprocesses.

Each test gets its own config directory (XDG_CONFIG_HOME) and cache, and small git
repositories made here that have the layout of a known upstream repository (a folder with
the package our code imports); no upstream code is involved."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vlmeval_encred import sources, upstream
from conftest import HANG_GUARD


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env=dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
                                   GIT_COMMITTER_EMAIL="t@t")).stdout.strip()


@pytest.fixture()
def home(tmp_path, monkeypatch):
    """An empty register and cache for this test (and its subprocesses)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("VLMEVAL_ENCRED_ENV_CACHE", str(tmp_path / "cache"))
    for repo in upstream.known().values():
        monkeypatch.delenv(repo.env_var, raising=False)
    return tmp_path


@pytest.fixture()
def clone(tmp_path) -> Path:
    """A git clone with DeepSeek-VL's layout (a `deepseek_vl` package), two commits."""
    root = tmp_path / "DeepSeek-VL"
    (root / "deepseek_vl").mkdir(parents=True)
    (root / "deepseek_vl" / "__init__.py").write_text("WHICH = 'first'\n")
    git("init", "-q", cwd=root)
    git("add", ".", cwd=root)
    git("commit", "-qm", "one", cwd=root)
    (root / "deepseek_vl" / "__init__.py").write_text("WHICH = 'second'\n")
    git("commit", "-qam", "two", cwd=root)
    return root


def encred(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vlmeval_encred.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=HANG_GUARD)


def listing() -> dict[str, dict]:
    proc = encred("sources", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    return {r["name"]: r for r in json.loads(proc.stdout)["sources"]}


def test_empty_register_lists_every_repository_with_the_command_that_registers_it(home):
    rows = listing()
    assert set(rows) == set(upstream.known()) and "vlmevalkit" in rows
    for name, r in rows.items():
        assert not r["found"] and r["status"] == "not registered"
        assert f"encred sources add {name} " in r["hint"] and upstream.get(name).url in r["hint"]
        assert len(r["tested_commit"]) == 40
    text = encred("sources", "list").stdout
    assert "not registered" in text and "encred sources add deepseek_vl" in text


def test_add_a_working_clone_list_it_and_warn_about_another_commit(home, clone):
    proc = encred("sources", "add", "deepseek_vl", str(clone))
    assert proc.returncode == 0, proc.stderr
    head = git("rev-parse", "HEAD", cwd=clone)
    assert "registered deepseek_vl" in proc.stdout
    assert f"at commit {head[:12]}" in proc.stdout and upstream.get("deepseek_vl").commit[:12] in proc.stdout
    row = listing()["deepseek_vl"]
    assert row["found"] and row["commit"] == head and str(clone) in row["where"]
    assert row["status"].startswith("other commit than tested")
    # the register is a real TOML file in the XDG config directory
    assert sources.config_path() == home / "config" / "vlmeval-encred" / "sources.toml"
    assert "deepseek_vl" in sources.load()
    # the clone is used in place: a new commit there is what the next process sees
    (clone / "deepseek_vl" / "__init__.py").write_text("WHICH = 'third'\n")
    git("commit", "-qam", "three", cwd=clone)
    assert listing()["deepseek_vl"]["commit"] == git("rev-parse", "HEAD", cwd=clone)
    # a process that imports through the register gets this clone, with the commit warning
    with pytest.warns(UserWarning, match="our tests pin"):
        upstream._WARNED.discard("deepseek_vl")
        assert upstream.source_dir("deepseek_vl") == clone.resolve()


def test_bare_directory_needs_a_commit_and_is_extracted_once_per_commit(home, clone, tmp_path):
    bare = tmp_path / "mirror.git"
    git("clone", "-q", "--bare", str(clone), str(bare), cwd=tmp_path)
    first = git("rev-list", "--max-parents=0", "HEAD", cwd=clone)
    proc = encred("sources", "add", "deepseek_vl", str(bare))
    assert proc.returncode == 2 and "bare git directory" in proc.stderr and "--commit" in proc.stderr
    proc = encred("sources", "add", "deepseek_vl", str(bare), "--commit", "0123abc")
    assert proc.returncode == 2 and "has no commit '0123abc'" in proc.stderr
    proc = encred("sources", "add", "deepseek_vl", str(bare), "--commit", first[:9])
    assert proc.returncode == 0, proc.stderr
    extracted = home / "cache" / "sources" / f"deepseek_vl-{first}"
    assert (extracted / "deepseek_vl" / "__init__.py").read_text() == "WHICH = 'first'\n"
    assert (extracted / ".encred-source-commit").read_text().strip() == first
    row = listing()["deepseek_vl"]
    assert row["found"] and row["commit"] == first and str(bare) in row["where"]
    assert sources.load()["deepseek_vl"] == sources.Registered("deepseek_vl", str(bare.resolve()), first)
    # a working clone cannot take --commit: it is used as checked out
    proc = encred("sources", "add", "deepseek_vl", str(clone), "--commit", first)
    assert proc.returncode == 2 and "only for a bare git directory" in proc.stderr


def test_environment_variable_overrides_the_register_for_one_process(home, clone, tmp_path, monkeypatch):
    assert encred("sources", "add", "deepseek_vl", str(clone)).returncode == 0
    other = tmp_path / "other"
    (other / "deepseek_vl").mkdir(parents=True)
    monkeypatch.setenv("ENCRED_SRC_DEEPSEEK_VL", str(other))
    row = listing()["deepseek_vl"]
    assert row["where"].startswith(str(other.resolve())) and "ENCRED_SRC_DEEPSEEK_VL" in row["where"]
    assert row["status"].startswith("unknown commit")


def test_wrong_input_gets_one_line_and_a_failing_status(home, clone, tmp_path):
    proc = encred("sources", "add", "deepseekvl", str(clone))
    assert proc.returncode == 2 and "did you mean deepseek_vl" in proc.stderr
    proc = encred("sources", "add", "eagle", str(clone))
    assert proc.returncode == 2 and "does not look like a clone of https://github.com/NVlabs/EAGLE" in proc.stderr
    proc = encred("sources", "add", "deepseek_vl", str(tmp_path / "nowhere"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert not sources.config_path().exists(), "a refused add wrote the register"
    proc = encred("sources", "remove", "deepseek_vl")
    assert proc.returncode == 1 and "was not registered" in proc.stderr
    for proc in (proc,):
        assert "Traceback" not in proc.stderr


def test_remove_forgets_the_entry_and_leaves_the_files(home, clone):
    assert encred("sources", "add", "deepseek_vl", str(clone)).returncode == 0
    proc = encred("sources", "remove", "deepseek_vl")
    assert proc.returncode == 0 and "removed deepseek_vl" in proc.stdout
    assert (clone / "deepseek_vl" / "__init__.py").exists()
    assert not listing()["deepseek_vl"]["found"]


def test_a_moved_clone_is_an_error_not_a_missing_source(home, clone, tmp_path):
    """'Not registered' is the normal state of a fresh machine; a registered clone that has gone is a
    broken set-up, and the real-code tests fail on it instead of reporting 'not run here'."""
    assert encred("sources", "add", "deepseek_vl", str(clone)).returncode == 0
    clone.rename(tmp_path / "moved")
    with pytest.raises(upstream.UpstreamNotFound, match="no longer exists") as err:
        upstream.locate("deepseek_vl")
    assert not isinstance(err.value, upstream.NotRegistered)
    row = listing()["deepseek_vl"]
    assert not row["found"] and row["where"] == "registered, unusable" and "no longer exists" in row["status"]


def test_a_corrupt_register_is_named_never_read_as_empty(home):
    path = sources.config_path()
    path.parent.mkdir(parents=True)
    path.write_text("[sources.eagle\npath = 1\n")
    proc = encred("sources", "add", "deepseek_vl", "/nonexistent")
    assert proc.returncode == 2
    with pytest.raises(sources.SourcesError, match=str(path)):
        sources.load()
    assert path.read_text() == "[sources.eagle\npath = 1\n", "the unreadable register was replaced"


def test_writes_are_atomic_and_keep_other_entries(home, clone, tmp_path):
    other = tmp_path / "dinov2"
    (other / "dinov2").mkdir(parents=True)
    assert encred("sources", "add", "deepseek_vl", str(clone)).returncode == 0
    assert encred("sources", "add", "dinov2", str(other)).returncode == 0
    assert set(sources.load()) == {"deepseek_vl", "dinov2"}
    leftovers = [p.name for p in sources.config_path().parent.iterdir() if p.name.startswith(".sources-")]
    assert not leftovers, leftovers
    # paths with quotes and backslashes survive the round trip
    odd = tmp_path / 'we"ird\\name'
    (odd / "dinov2").mkdir(parents=True)
    assert encred("sources", "add", "dinov2", str(odd)).returncode == 0
    assert sources.load()["dinov2"].path == str(odd.resolve())


def test_doctor_shows_the_same_table(home, clone):
    """One function (upstream.table) for both commands.  The family chosen cannot run under the base
    environment's transformers, so doctor fails fast after printing the table."""
    assert encred("sources", "add", "deepseek_vl", str(clone)).returncode == 0
    proc = encred("doctor", "--family", "deepseek_vl", "--subsets", "1", "--json")
    assert proc.stdout.strip(), proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert {r["name"]: r for r in doc["sources"]} == listing()
