"""The user's register of upstream clones: ``~/.config/vlmeval-encred/sources.toml``.

Why a register: the families' real code (EAGLE, Cambrian, DeepSeek-VL, ...) is other
projects' code, never shipped with this one.  It reaches us the way it reaches a user:
a clone they made.  ``encred sources add NAME PATH`` records where that clone is, once
per machine, so that every process (the test suite, ``encred doctor``, a torchrun rank)
finds the same code without environment variables.

Two kinds of entry:

* a working clone (or any folder holding the repository's files): used in place; its
  commit is read with ``git rev-parse HEAD`` each time it is asked for;
* a bare git directory plus a commit (what a mirror or ``git clone --bare`` gives):
  the commit's tree is extracted once into the cache (``<cache>/sources/<name>-<commit>``,
  the cache of :func:`vlmeval_encred.upstream.cache_root`), atomically, and that folder
  is used.

The file is TOML written by hand (three string fields per entry): the standard library
reads TOML but cannot write it, and a dependency for that alone is not worth it.  It is
replaced atomically (temporary file + ``os.replace``) under a lock, so two ``encred
sources add`` at once never leave a half-written file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


COMMIT_FILE = ".encred-source-commit"
"""In a tree extracted from a bare git directory (no ``.git``): the commit it is (read by flavour.py too)."""
MISSING_FILE = ".encred-source-missing"
"""In such a tree: the files whose content the repository lacked."""


class SourcesError(RuntimeError):
    """A source cannot be registered or used; the message says which and what to do."""


def config_path() -> Path:
    """``$XDG_CONFIG_HOME/vlmeval-encred/sources.toml`` (``~/.config`` when XDG_CONFIG_HOME is unset)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "vlmeval-encred" / "sources.toml"


@dataclass(frozen=True)
class Registered:
    """One line of the register."""

    name: str
    path: str            # the clone, or the bare git directory
    commit: str = ""     # only for a bare git directory: the commit extracted from it

    @property
    def bare(self) -> bool:
        return bool(self.commit)


def load() -> dict[str, Registered]:
    """Every registered source; an unreadable file is an error naming it (never silently empty)."""
    path = config_path()
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SourcesError(f"{path} is not valid TOML ({exc}); fix or delete it, then register the "
                           f"sources again with `encred sources add`") from None
    out = {}
    for name, fields in data.get("sources", {}).items():
        if not isinstance(fields, dict) or not isinstance(fields.get("path"), str):
            raise SourcesError(f"{path}: entry [sources.{name}] needs a string `path`; fix or remove it "
                               f"(`encred sources remove {name}`)")
        out[name] = Registered(name, fields["path"], str(fields.get("commit", "")))
    return out


def _toml_str(value: str) -> str:
    # JSON string syntax with ensure_ascii is valid TOML basic-string syntax.
    return json.dumps(value, ensure_ascii=True)


def _dump(entries: dict[str, Registered]) -> str:
    lines = ["# Upstream clones registered with `encred sources add`; edit with `encred sources`.", ""]
    for name in sorted(entries):
        e = entries[name]
        lines.append(f"[sources.{name}]")
        lines.append(f"path = {_toml_str(e.path)}")
        if e.commit:
            lines.append(f"commit = {_toml_str(e.commit)}")
        lines.append("")
    return "\n".join(lines)


@contextlib.contextmanager
def _locked() -> Iterator[Path]:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / ".sources.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield path


def _save(path: Path, entries: dict[str, Registered]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".sources-", suffix=".toml", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(_dump(entries))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def put(entry: Registered) -> Path:
    """Add or replace one entry, atomically; returns the register's path."""
    with _locked() as path:
        entries = load()
        entries[entry.name] = entry
        _save(path, entries)
    return path


def drop(name: str) -> bool:
    """Remove one entry; False when it was not registered."""
    with _locked() as path:
        entries = load()
        if name not in entries:
            return False
        del entries[name]
        _save(path, entries)
    return True


# --- git ------------------------------------------------------------------------------

def git(*args: str, cwd: Path | None = None, git_dir: Path | None = None) -> str | None:
    """Output of one git command, or None when git or the repository cannot answer."""
    cmd = ["git"]
    if git_dir is not None:
        cmd.append(f"--git-dir={git_dir}")
    cmd.extend(args)
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def is_bare(path: Path) -> bool:
    """A git directory with no work tree (``git clone --bare``, a mirror).  Read from its layout:
    ``rev-parse --is-bare-repository`` answers false for a bare directory without a config file."""
    return (not (path / ".git").exists() and (path / "HEAD").is_file() and (path / "objects").is_dir()
            and git("rev-parse", "--git-dir", git_dir=path) is not None)


def clone_commit(path: Path) -> str | None:
    """HEAD of a working clone, or the commit an extracted tree records, or None."""
    if (path / ".git").exists():
        head = git("rev-parse", "HEAD", cwd=path)
        if head:
            return head
    marker = path / COMMIT_FILE
    if marker.is_file():
        return marker.read_text().strip() or None
    return None


def resolve_commit(bare: Path, commit: str) -> str:
    full = git("rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}", git_dir=bare)
    if not full:
        raise SourcesError(f"{bare} has no commit {commit!r}; list its commits with "
                           f"`git --git-dir={bare} log --oneline` and pass one with --commit")
    return full


def _write_tree(bare: Path, commit: str, tree: Path) -> list[str]:
    """Write every file of ``commit`` under ``tree``; returns the paths whose content the
    repository lacks.  Why not ``git archive``: it aborts on the first missing object, and
    mirrors and partial clones often lack large binary files (sample images) that no code reads."""
    listing = subprocess.run(["git", f"--git-dir={bare}", "ls-tree", "-r", "-z", commit],
                             capture_output=True, timeout=600)
    if listing.returncode != 0:
        raise SourcesError(f"`git ls-tree {commit}` failed in {bare}: {listing.stderr.decode().strip()}")
    entries = []
    for rec in listing.stdout.split(b"\0"):
        if not rec:
            continue
        meta, path = rec.split(b"\t", 1)
        mode, kind, sha = meta.decode().split()
        if kind == "blob":
            entries.append((mode, sha, path.decode()))
    missing = []
    with subprocess.Popen(["git", f"--git-dir={bare}", "cat-file", "--batch"], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE) as cat:
        for mode, sha, rel in entries:
            cat.stdin.write(sha.encode() + b"\n")
            cat.stdin.flush()
            header = cat.stdout.readline().split()
            if len(header) < 3 or header[1] != b"blob":
                missing.append(rel)
                continue
            data = cat.stdout.read(int(header[2]))
            cat.stdout.read(1)  # the newline after each object
            dest = tree / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if mode == "120000":
                os.symlink(data.decode(), dest)
                continue
            dest.write_bytes(data)
            if mode == "100755":
                dest.chmod(0o755)
        cat.stdin.close()
    return missing


def extract(name: str, bare: Path, commit: str, cache: Path) -> Path:
    """The tree of ``commit`` of bare repository ``bare``, extracted once into
    ``cache/<name>-<commit>`` (atomic: concurrent callers race safely).  Files whose content
    the repository lacks are listed in ``.encred-source-missing`` of the extracted tree."""
    dest = cache / f"{name}-{commit}"
    if (dest / COMMIT_FILE).is_file():
        return dest
    cache.mkdir(parents=True, exist_ok=True)
    tree = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache))
    try:
        missing = _write_tree(bare, commit, tree)
        if missing:
            (tree / MISSING_FILE).write_text("".join(m + "\n" for m in missing))
        (tree / COMMIT_FILE).write_text(commit + "\n")
        try:
            os.rename(tree, dest)
        except OSError:  # another process won the race, or a stale incomplete copy is in the way
            if not (dest / COMMIT_FILE).is_file():
                shutil.rmtree(dest, ignore_errors=True)
                os.rename(tree, dest)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    return dest


def missing_files(root: Path) -> list[str]:
    """Files of an extracted tree whose content its bare repository lacked (see :func:`extract`)."""
    marker = root / MISSING_FILE
    return marker.read_text().split() if marker.is_file() else []
