"""Where the families' real upstream source code is, for tests, ``encred doctor`` and the wrappers.

The adapters wrap upstream classes (EAGLE, Cambrian, DeepSeek-VL, the MMVP LLaVA
fork, DINOv2, ...) and VLMEvalKit itself; none of that code is part of this project.
It reaches us the way it reaches a user: a clone they made.  Each repository is found,
in this order:

1. ``ENCRED_SRC_<NAME>`` (e.g. ``ENCRED_SRC_EAGLE=/home/me/EAGLE``): a clone, for one process;
2. the register written by ``encred sources add NAME PATH`` (:mod:`vlmeval_encred.sources`):
   a working clone used in place, or a bare git directory whose registered commit is
   extracted once into the cache.

A clone at another commit than the one our tests pin still works; a warning names both.
Each family declares its repositories with :func:`register_source` (next to its catalog
entries), so this module names none of them; VLMEvalKit, which every family shares, is
declared here.  Nothing here imports the upstream code; callers put
:func:`import_root` on ``sys.path`` (:func:`on_sys_path`, :func:`ensure_importable`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from . import sources


@dataclass(frozen=True)
class UpstreamRepo:
    """One upstream repository our code runs on."""

    name: str            # our short name: `encred sources add <name>`, ENCRED_SRC_<NAME>
    url: str
    commit: str          # the commit our real-code tests pin (full sha)
    package: str         # a package that must exist under import_root (a sanity check)
    import_root: str = ""  # path under the repository root that goes on sys.path ("" = the root)
    used_by: str = ""    # who needs it (a family name, or "VLMEvalKit integration"), for tables

    @property
    def env_var(self) -> str:
        return f"ENCRED_SRC_{self.name.upper()}"

    @property
    def add_command(self) -> str:
        return f"git clone {self.url} && encred sources add {self.name} <path to the clone>"


REPOS: dict[str, UpstreamRepo] = {}


def register_source(repo: UpstreamRepo) -> UpstreamRepo:
    """Declare an upstream repository (a family's module calls this next to its catalog entries)."""
    old = REPOS.get(repo.name)
    if old is not None and old != repo:
        raise ValueError(f"upstream source {repo.name!r} declared twice, differently: {old} vs {repo}")
    REPOS[repo.name] = repo
    return repo


register_source(UpstreamRepo(
    "vlmevalkit", "https://github.com/open-compass/VLMEvalKit", "e8e78f05f3080fe28154f2130321f17951c3be94",
    package="vlmeval", used_by="VLMEvalKit integration"))


def known() -> dict[str, UpstreamRepo]:
    """Every declared repository (the families' declarations are loaded on first use)."""
    from .registry import _ensure_catalog

    _ensure_catalog()
    return REPOS


def get(name: str) -> UpstreamRepo:
    repos = known()
    if name not in repos:
        import difflib

        near = difflib.get_close_matches(name, list(repos), n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise KeyError(f"no upstream repository named {name!r}{hint} (known: {', '.join(sorted(repos))})")
    return repos[name]


class UpstreamNotFound(RuntimeError):
    """No usable copy of an upstream repository here; the message says how to register one."""


class NotRegistered(UpstreamNotFound):
    """Nothing registered (nor ENCRED_SRC_<NAME> set) for this repository: the normal state of a fresh machine."""


def cache_root() -> Path:
    return Path(os.environ.get("VLMEVAL_ENCRED_ENV_CACHE", Path.home() / ".cache" / "vlmeval-encred"))


@dataclass(frozen=True)
class Located:
    """Where one repository was found, and at which commit."""

    repo: UpstreamRepo
    root: Path            # the repository's root folder (for a bare register entry: the extracted tree)
    origin: str           # "ENCRED_SRC_X", "registered clone" or "registered bare repository"
    registered: str       # the path as registered / given
    commit: str | None    # None when it cannot be told (a folder without git)

    @property
    def at_tested_commit(self) -> bool:
        return bool(self.commit) and (self.commit.startswith(self.repo.commit) or self.repo.commit.startswith(self.commit))


def _check_layout(repo: UpstreamRepo, root: Path, what: str) -> None:
    if not (root / repo.import_root / repo.package).is_dir():
        raise UpstreamNotFound(
            f"{what} ({root}) does not look like a clone of {repo.url}: expected a folder "
            f"{Path(repo.import_root) / repo.package} in it. Register a clone of {repo.url}: "
            f"encred sources add {repo.name} <path>")


def locate(name: str) -> Located:
    """Find repository ``name`` (module docstring for the order); raises :class:`UpstreamNotFound`."""
    repo = get(name)
    user = os.environ.get(repo.env_var)
    if user:
        root = Path(user).expanduser().resolve()
        _check_layout(repo, root, f"{repo.env_var}={user}")
        return Located(repo, root, repo.env_var, user, sources.clone_commit(root))
    try:
        entry = sources.load().get(name)
    except sources.SourcesError as exc:
        raise UpstreamNotFound(str(exc)) from None
    if entry is None:
        raise NotRegistered(f"no {name} source registered on this machine: {repo.add_command} "
                               f"(tested commit {repo.commit[:12]})")
    path = Path(entry.path).expanduser()
    if not path.exists():
        raise UpstreamNotFound(f"the registered {name} source {path} no longer exists "
                               f"({sources.config_path()}); register it again: encred sources add {name} <path>")
    if entry.bare:
        try:
            root = sources.extract(name, path, entry.commit, cache_root() / "sources")
        except sources.SourcesError as exc:
            raise UpstreamNotFound(str(exc)) from None
        _check_layout(repo, root, f"commit {entry.commit[:12]} of {path}")
        return Located(repo, root, "registered bare repository", entry.path, entry.commit)
    _check_layout(repo, path, f"the registered {name} source")
    return Located(repo, path.resolve(), "registered clone", entry.path, sources.clone_commit(path))


_WARNED: set[str] = set()


def _warn_commit(found: Located) -> None:
    if found.commit and not found.at_tested_commit and found.repo.name not in _WARNED:
        _WARNED.add(found.repo.name)
        warnings.warn(f"{found.repo.name} source {found.root} is at commit {found.commit[:12]}, "
                      f"our tests pin {found.repo.commit[:12]}: it may work, but it is not what was tested",
                      stacklevel=3)


def source_dir(name: str) -> Path:
    """Root of the upstream repository ``name``; raises :class:`UpstreamNotFound` saying how to register one."""
    found = locate(name)
    _warn_commit(found)
    return found.root


def import_root(name: str) -> Path:
    """The folder to put on ``sys.path`` so that the repository's package imports."""
    return source_dir(name) / get(name).import_root


def forget_modules(*packages: str) -> None:
    """Drop ``packages`` and their submodules from ``sys.modules`` (a stand-in may have been imported first)."""
    for mod in [m for m in sys.modules if m.split(".")[0] in packages]:
        del sys.modules[mod]


@contextlib.contextmanager
def on_sys_path(name: str, *, forget: bool = True) -> Iterator[Path]:
    """Import upstream ``name`` from its real source within the block; undo afterwards."""
    root = str(import_root(name))
    package = get(name).package
    if forget:
        forget_modules(package)
    sys.path.insert(0, root)
    try:
        yield Path(root)
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(root)
        if forget:
            forget_modules(package)


def ensure_importable(name: str) -> Path | None:
    """Make upstream ``name`` importable: the registered copy first (put on ``sys.path``), else an
    installed package (a user's ``pip install -e EAGLE``); returns the path used, None if installed.

    Raises :class:`UpstreamNotFound` when neither exists."""
    import importlib.util

    try:
        root = import_root(name)
    except UpstreamNotFound:
        if importlib.util.find_spec(get(name).package) is not None:
            return None
        raise
    if str(root) not in sys.path:
        forget_modules(get(name).package)
        sys.path.insert(0, str(root))
    return root


@dataclass(frozen=True)
class SourceRow:
    """One line of ``encred sources list`` and of ``encred doctor``'s table."""

    name: str
    url: str
    used_by: str
    tested_commit: str
    found: bool
    where: str            # the path and how it was found, or "not registered"
    commit: str           # the commit found ("" when not found or unknown)
    status: str           # "ok", "other commit", "unknown commit", or the reason it is not usable
    hint: str             # the one command that registers it, when it is not

    @property
    def ok(self) -> bool:
        return self.found


def table() -> list[SourceRow]:
    """Every declared repository and where it is on this machine (one function for both commands)."""
    rows = []
    for name, repo in sorted(known().items()):
        try:
            found = locate(name)
        except UpstreamNotFound as exc:
            registered = not isinstance(exc, NotRegistered)
            rows.append(SourceRow(name, repo.url, repo.used_by, repo.commit, False,
                                  "registered, unusable" if registered else "not registered", "",
                                  str(exc) if registered else "not registered", repo.add_command))
            continue
        if not found.commit:
            status = "unknown commit (not a git clone)"
        elif found.at_tested_commit:
            status = "ok"
        else:
            status = f"other commit than tested ({found.commit[:12]} vs {repo.commit[:12]})"
        where = f"{found.root} ({found.origin}" + (f" {found.registered})" if found.origin.endswith("bare repository")
                                                    else ")")
        rows.append(SourceRow(name, repo.url, repo.used_by, repo.commit, True, where, found.commit or "",
                              status, ""))
    return rows


def format_table(rows: list[SourceRow]) -> str:
    """Plain-text table: one repository per block (paths are long; columns would wrap)."""
    out = []
    for r in rows:
        out.append(f"{r.name:<12} {r.url}  (used by {r.used_by}; tested at {r.tested_commit[:12]})")
        if r.found:
            out.append(f"{'':<12} found: {r.where}")
            out.append(f"{'':<12} commit {r.commit[:12] or '?'}: {r.status}")
        else:
            out.append(f"{'':<12} {r.status if r.status != 'not registered' else 'not registered'}")
            out.append(f"{'':<12} to register: {r.hint}")
    return "\n".join(out)
