"""The one overwrite policy (vlmeval_encred.safe_files): output sets sharing a folder, files we
did not write, hand edits, atomicity and folders that cannot be written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vlmeval_encred import safe_files as SF


def _write(folder: Path, output_set: str, files: dict[str, str], force: bool = False) -> dict[str, Path]:
    w = SF.SafeWriter(folder, output_set, force=force)
    w.check(list(files))
    try:
        for name, text in files.items():
            w.write(name, lambda p, t=text: p.write_text(t))
        return w.commit()
    except BaseException:
        w.abort()
        raise


def test_two_output_sets_share_a_folder_and_neither_loses_files(tmp_path):
    _write(tmp_path, "m1_paper15", {"m1.md": "one", "m1.png": "fig"})
    _write(tmp_path, "m2_paper15", {"m2.md": "two"})
    assert (tmp_path / "m1.md").read_text() == "one" and (tmp_path / "m1.png").read_text() == "fig"
    # a refresh of m1 without its figure removes m1's own figure only
    _write(tmp_path, "m1_paper15", {"m1.md": "one again"})
    assert not (tmp_path / "m1.png").exists()
    assert (tmp_path / "m2.md").read_text() == "two"
    man = json.loads((tmp_path / SF.MANIFEST).read_text())
    assert man["sets"] == {"m1_paper15": ["m1.md"], "m2_paper15": ["m2.md"]}
    assert set(man["files"]) == {"m1.md", "m2.md"}


def test_refusal_names_every_file_and_what_to_do(tmp_path):
    _write(tmp_path, "a", {"a.md": "ours"})
    (tmp_path / "a.md").write_text("edited")
    (tmp_path / "b.md").write_text("theirs")
    _write(tmp_path, "other", {"c.md": "other set"})
    with pytest.raises(SF.OutputConflict) as ei:
        _write(tmp_path, "a", {"a.md": "new", "b.md": "new", "c.md": "new", "d.md": "new"})
    msg = str(ei.value)
    assert "refusing to replace 3 file(s)" in msg and "\n" not in msg
    assert "a.md (was changed since encred wrote it" in msg and "b.md (not written by encred" in msg
    assert "c.md (written by encred for another output (other))" in msg
    assert "another --out" in msg and "--force" in msg
    assert set(ei.value.files) == {tmp_path / n for n in ("a.md", "b.md", "c.md")}
    assert not (tmp_path / "d.md").exists()  # nothing written
    assert [(tmp_path / n).read_text() for n in ("a.md", "b.md", "c.md")] == ["edited", "theirs", "other set"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    _write(tmp_path, "a", {"a.md": "new", "b.md": "new"}, force=True)
    assert (tmp_path / "a.md").read_text() == "new" and (tmp_path / "c.md").read_text() == "other set"


def test_manifest_of_the_first_version_is_read_and_its_files_are_not_removed(tmp_path):
    (tmp_path / "old.md").write_text("old report")
    from vlmeval_encred.hashing import file_sha256

    (tmp_path / SF.MANIFEST).write_text(json.dumps({"tool": "vlmeval-encred report",
                                                     "files": {"old.md": file_sha256(tmp_path / "old.md")}}))
    _write(tmp_path, "new", {"new.md": "x"})
    assert (tmp_path / "old.md").read_text() == "old report"  # whose it is cannot be told: kept
    _write(tmp_path, "new", {"old.md": "replaced"})  # same-named and unchanged: ours to replace
    assert (tmp_path / "old.md").read_text() == "replaced"
    (tmp_path / SF.MANIFEST).write_text("{not json")
    with pytest.raises(SF.OutputConflict, match="is not a manifest this tool wrote"):
        _write(tmp_path, "new", {"new.md": "y"})


def test_folder_that_is_a_file_or_not_writable_is_one_line(tmp_path, monkeypatch):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(SF.OutputError, match=r"file.txt: it is an existing file, not a folder; choose another --out"):
        SF.SafeWriter(f, "s")
    with pytest.raises(SF.OutputError, match=r"cannot create .*file.txt/sub.*choose another --out"):
        SF.SafeWriter(f / "sub", "s")

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")
    w = SF.SafeWriter(tmp_path / "ro", "s")
    monkeypatch.setattr(SF.tempfile, "mkstemp", denied)
    with pytest.raises(SF.OutputError, match=r"cannot write into .*ro: Permission denied; choose another --out"):
        w.write("x.md", lambda p: p.write_text("x"))


def test_read_only_folder_is_refused_before_writing(tmp_path, monkeypatch):
    """A folder the user cannot write.  CI runs as root, which writes into read-only folders, so the
    permission answer is simulated (os.access, which SafeWriter asks); the real chmod is kept too,
    so that a non-root run exercises the real thing."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.geteuid() == 0:
        real_access = os.access
        monkeypatch.setattr(SF.os, "access", lambda p, mode, *a, **k: False if Path(p) == ro else real_access(p, mode, *a, **k))
    try:
        with pytest.raises(SF.OutputError, match="permission denied; choose another --out"):
            SF.SafeWriter(ro, "s")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


def test_a_failing_producer_leaves_the_previous_files(tmp_path):
    _write(tmp_path, "s", {"a.md": "v1", "b.md": "v1"})

    def boom(p):
        raise RuntimeError("disk full")
    w = SF.SafeWriter(tmp_path, "s")
    w.write("a.md", lambda p: p.write_text("v2"))
    with pytest.raises(RuntimeError):
        w.write("b.md", boom)
    w.abort()
    assert (tmp_path / "a.md").read_text() == "v1" and (tmp_path / "b.md").read_text() == "v1"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
