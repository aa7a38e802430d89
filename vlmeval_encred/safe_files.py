"""One policy for every file this project writes into a folder the user names.

Why a policy at all: an output folder (``encred report --out``, ``encred rank --out``, the
demo's work folder) is the user's.  Several reports may share it (two models, two suites,
a comparison and an effective-rank table), and the user may keep notes or edited copies
next to them.  Losing any of that silently is worse than any error, so the rules are:

1. **Only our own, unchanged files of the same output set are replaced.**  An *output
   set* is what one writer produces under one name (e.g. the report of ``eagle_x5`` on
   ``paper15``).  The folder's manifest (:data:`MANIFEST`) records, per set, the files
   written and their SHA-256.  A file is replaced only if it belongs to the set being
   written and still has the recorded hash.
2. **Nothing else is deleted or replaced without ``force``.**  A same-named file that we
   did not write, that was edited by hand since, or that belongs to another output set
   stops the run *before anything is written*, with one message naming every such file
   and what to do (another ``--out``, move them away, or ``--force``).  Files of other
   output sets are never removed, even with ``force``.
3. **Writes are atomic.**  Every file goes to a temporary name in the target folder and
   is moved into place with :func:`os.replace` only when all files of the set are
   complete; a failure leaves the previous files exactly as they were.
4. **A folder that cannot be written is one line, not a traceback**: :class:`OutputError`
   says which folder and why, and what to do.

Files of the same set that a new run no longer produces (e.g. figures after
``--no-figures``) are removed only if unchanged (or with ``force``): they are this set's.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .hashing import file_sha256

MANIFEST = ".encred-report-manifest.json"
"""Name of the manifest in an output folder (kept from the first version of the report)."""
LEGACY_SET = ""
"""Output set of files listed by a manifest written before sets existed: replaceable if
unchanged and same-named, never removed as 'no longer produced' (we cannot tell whose they are)."""
TOOL = "vlmeval-encred"


class OutputError(RuntimeError):
    """The output folder cannot be used (not creatable, not a folder, not writable)."""


class OutputConflict(OutputError):
    """Writing would replace files that are not ours to replace; nothing was written.

    ``files`` maps each such path to why it is not ours (not written by this tool,
    edited since, or another output set's)."""

    def __init__(self, message: str, files: dict[Path, str] | None = None) -> None:
        super().__init__(message)
        self.files = dict(files or {})


def umask_mode() -> int:
    """Permissions a plain ``open()`` would give: ``mkstemp`` makes 0600, and a report is meant to be shared."""
    m = os.umask(0)
    os.umask(m)
    return 0o666 & ~m


def _cannot(folder: Path, exc: OSError, what: str = "write into", option: str = "--out") -> OutputError:
    reason = exc.strerror or type(exc).__name__
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        hint = f"it (or a parent) is an existing file, not a folder; choose another {option}"
    else:
        hint = f"choose another {option} (a folder you can write) or fix its permissions"
    return OutputError(f"cannot {what} {folder}: {reason}; {hint}")


def ensure_folder(folder: Path, option: str = "--out") -> None:
    """Create ``folder`` (and parents) or raise :class:`OutputError` with one line naming ``option``,
    the command-line option that chose the folder."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"cannot write into {folder}: it is an existing file, not a folder; "
                          f"choose another {option}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _cannot(folder, exc, "create", option) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write into {folder}: permission denied; choose another {option} "
                          "(a folder you can write) or fix its permissions")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file in the same folder and ``os.replace``."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _cannot(path.parent, exc) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except OSError as exc:
        _unlink(Path(tmp))
        raise _cannot(path.parent, exc) from None
    except BaseException:
        _unlink(Path(tmp))
        raise


def _unlink(p: Path) -> None:
    try:
        os.unlink(p)
    except FileNotFoundError:
        pass


@dataclass
class Manifest:
    """The folder's record of what we wrote: file name -> SHA-256, and output set -> file names."""

    files: dict[str, str] = field(default_factory=dict)
    sets: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: Path) -> "Manifest":
        path = folder / MANIFEST
        if not path.exists():
            return cls()
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            files = {str(k): str(v) for k, v in dict(raw["files"]).items()}
            sets = {str(k): [str(n) for n in v] for k, v in dict(raw.get("sets", {})).items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise OutputConflict(f"{path} is not a manifest this tool wrote; refusing to guess which files "
                                 "in the folder are ours (move it away or choose another --out)",
                                 {path: "unreadable manifest"}) from None
        listed = {n for ns in sets.values() for n in ns}
        if set(files) - listed:  # a manifest from before output sets: whose files these are is unknown
            sets.setdefault(LEGACY_SET, []).extend(sorted(set(files) - listed))
        return cls(files, sets)

    def owner(self, name: str) -> str | None:
        for s, names in self.sets.items():
            if name in names:
                return s
        return None

    def to_json(self) -> dict[str, Any]:
        return {"tool": TOOL, "files": dict(sorted(self.files.items())),
                "sets": {s: sorted(ns) for s, ns in sorted(self.sets.items()) if ns}}


@dataclass
class SafeWriter:
    """Write one output set into ``folder`` under the rules of this module.

    Usage: ``w = SafeWriter(folder, "eagle_x5_paper15"); w.check(names)``, then
    ``w.write(name, producer)`` per file (``producer(tmp_path)`` writes the content),
    then ``w.commit()``; on any error ``w.abort()`` removes the temporary files.
    """

    folder: Path
    output_set: str
    force: bool = False
    staged: dict[str, Path] = field(default_factory=dict)
    manifest: Manifest = field(default_factory=Manifest)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        ensure_folder(self.folder)
        self.manifest = Manifest.load(self.folder)

    def conflicts(self, names: list[str]) -> dict[Path, str]:
        """Each existing target that is not ours to replace -> why."""
        out: dict[Path, str] = {}
        for name in names:
            p = self.folder / name
            if not p.exists() and not p.is_symlink():
                continue
            owner = self.manifest.owner(name)
            if owner is None or name not in self.manifest.files:
                out[p] = f"not written by encred report or rank (not in {MANIFEST})"
            elif owner not in (self.output_set, LEGACY_SET):
                out[p] = f"written by encred for another output ({owner})"
            elif not p.is_file() or p.is_symlink() or file_sha256(p) != self.manifest.files[name]:
                out[p] = "was changed since encred wrote it (edited by hand?)"
        return out

    def check(self, names: list[str]) -> None:
        """Raise :class:`OutputConflict` naming every target we may not replace; nothing is written."""
        bad = self.conflicts(names)
        if bad and not self.force:
            listed = "; ".join(f"{p.name} ({why})" for p, why in bad.items())
            raise OutputConflict(f"refusing to replace {len(bad)} file(s) in {self.folder}: {listed}; "
                                 "choose another --out, move them away, or pass --force to replace them", bad)

    def write(self, name: str, producer: Callable[[Path], None]) -> None:
        """Stage ``name``: ``producer`` writes it to a temporary file next to its target."""
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.folder)
            os.close(fd)
        except OSError as exc:
            raise _cannot(self.folder, exc) from None
        try:
            producer(Path(tmp))
            os.chmod(tmp, umask_mode())
        except OSError as exc:
            _unlink(Path(tmp))
            raise _cannot(self.folder, exc) from None
        except BaseException:
            _unlink(Path(tmp))
            raise
        self.staged[name] = Path(tmp)

    def abort(self) -> None:
        for tmp in self.staged.values():
            _unlink(tmp)
        self.staged.clear()

    def commit(self) -> dict[str, Path]:
        """Move every staged file into place, drop this set's files it no longer has, save the manifest."""
        m = self.manifest
        try:
            hashes = {name: file_sha256(tmp) for name, tmp in self.staged.items()}
            for name, tmp in self.staged.items():
                os.replace(tmp, self.folder / name)
        except OSError as exc:
            self.abort()
            raise _cannot(self.folder, exc) from None
        for old in list(m.sets.get(self.output_set, [])):
            p = self.folder / old
            if old in hashes:
                continue
            if p.exists() and (self.force or (p.is_file() and file_sha256(p) == m.files.get(old))):
                p.unlink()  # this set's own file from an earlier run, which this run no longer makes
            m.files.pop(old, None)
        for s in list(m.sets):  # names this run wrote now belong to this set only
            m.sets[s] = [n for n in m.sets[s] if n not in hashes]
        m.sets[self.output_set] = sorted(hashes)
        m.files.update(hashes)
        atomic_write_text(self.folder / MANIFEST, json.dumps(m.to_json(), indent=1))
        done = {name: self.folder / name for name in self.staged}
        self.staged.clear()
        return done
