"""Which VLMEvalKit is installed, and how to drive it: the one place that knows.

Users run two kinds of VLMEvalKit, which differ in what a plugin may call:

``ms-vlmeval`` (the PyPI wheel, ModelScope's build; any wheel that installs ``vlmeval``
with its own ``vlmeval/run.py`` is of this kind, e.g. nvidia-vlmeval, and named in ``label``)
    ``vlmeval`` in site-packages with its own ``vlmeval/run.py``; reachable as
    ``python -m vlmeval`` and ``vlmeval.run.main``; has ``--limit``; writes every
    file flat into ``<work_dir>/<model>/``.
``checkout`` (a git clone of open-compass/VLMEvalKit, ``cd VLMEvalKit && python run.py``)
    no ``vlmeval/run.py`` and no ``__main__``; the entry point is ``run.py`` at
    the repository root; no ``--limit``; each run writes into its own folder
    ``<work_dir>/<model>/T<YYYYmmdd-HHMMSS>/`` (older versions ``T<date>_G<hash>``)
    and links the newest files one level up; ``--reuse`` looks only in run
    folders.

:func:`detect` answers without importing ``vlmeval`` (whose import executes
its whole model registry, ~15 s): it locates the package with
``importlib.util.find_spec`` and reads a few files.  Every command that starts
VLMEvalKit (``encred demo``, ``sweep``, the cluster cells) asks this module
what to run; ``encred doctor`` prints it.
"""

from __future__ import annotations

import functools
import importlib.metadata as md
import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

ROOT_ENV = "ENCRED_VLMEVAL_ROOT"
"""A VLMEvalKit checkout to drive instead of the importable ``vlmeval`` (same as ``--vlmeval-root``)."""

# Written by ``encred sources add`` into a tree extracted from a bare git directory (no ``.git``).
from .sources import COMMIT_FILE as SNAPSHOT_COMMIT_FILE  # noqa: E402

MS_VLMEVAL_UPSTREAM = {"0.0.20": "354a485c"}
"""Upstream commit each ms-vlmeval release was cut from (measured; see docs/plugin.md)."""

_FLAT_PRED_ROOT = re.compile(r"^\s*pred_root\s*=\s*osp\.join\(\s*args\.work_dir\s*,\s*model_name\s*\)\s*$", re.M)


class FlavourError(RuntimeError):
    """No usable VLMEvalKit where one was expected."""


@dataclass(frozen=True)
class Flavour:
    """One VLMEvalKit installation, as far as vlmeval-encred needs to know it."""

    kind: str                  # "ms-vlmeval" | "checkout"
    version: str               # the distribution's version, or vlmeval.__version__ of a checkout
    commit: str | None         # git commit of a checkout when known (full or abbreviated)
    root: Path                 # checkout root / the site-packages folder holding ``vlmeval``
    package_dir: Path          # the ``vlmeval`` package folder
    run_py: Path               # the run.py users run
    layout: str                # "flat" | "run-folders"
    has_limit: bool            # run.py accepts --limit
    has_module_main: bool      # ``python -m vlmeval`` works
    based_on: str | None = None  # ms-vlmeval: the upstream commit it was cut from
    distribution: str | None = None  # the wheel's name (ms-vlmeval, nvidia-vlmeval, ...) when installed as one

    @property
    def label(self) -> str:
        """Short human/sidecar label, e.g. ``ms-vlmeval 0.0.20`` or ``checkout e8e78f0 (0.2rc1)``."""
        if self.kind == "ms-vlmeval":
            return f"{self.distribution or 'ms-vlmeval'} {self.version}"
        return f"checkout {self.commit[:8] if self.commit else 'unknown-commit'} ({self.version})"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("root", "package_dir", "run_py"):
            d[k] = str(d[k])
        d["label"] = self.label
        return d

    def command(self, args: Sequence[str], *, python: str | None = None, nproc: int = 1) -> list[str]:
        """argv that runs this VLMEvalKit's run.py with ``args`` (torchrun when ``nproc > 1``).

        A checkout's run.py is run as a script (run it with ``cwd=self.cwd``, as users do);
        ms-vlmeval's through ``-m vlmeval``.  Arguments the installed run.py lacks are refused
        here rather than passed on (argparse would stop with a usage line).
        """
        if "--limit" in args and not self.has_limit:
            raise FlavourError(f"{self.label} ({self.run_py}) has no --limit; run without a sample limit "
                               "or with ms-vlmeval")
        py = python or sys.executable
        target = ["-m", "vlmeval"] if self.kind == "ms-vlmeval" and self.has_module_main else [str(self.run_py)]
        if nproc > 1:
            return [py, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", *target, *args]
        return [py, *target, *args]

    @property
    def cwd(self) -> Path | None:
        """Working directory for :meth:`command`: the checkout root (users ``cd VLMEvalKit``)."""
        return self.root if self.kind == "checkout" else None


def _read(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _git_commit(root: Path) -> str | None:
    if (root / ".git").exists():
        try:
            out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                 text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    marker = _read(root / SNAPSHOT_COMMIT_FILE).strip()
    return marker or None


def _owning_dist(package_dir: Path) -> tuple[str, str] | None:
    """(distribution name, version) of the wheel that installed *this* ``vlmeval`` folder, if any.

    Looks only at ``*vlmeval*.dist-info`` folders beside the package (a wheel's metadata lives
    in the same site-packages), so an overlay environment that sees ms-vlmeval's metadata
    elsewhere while ``vlmeval`` resolves to a checkout is not fooled, and no scan of every
    installed distribution is needed.  ms-vlmeval, nvidia-vlmeval and others alike.
    """
    for info in sorted(package_dir.parent.glob("*vlmeval*.dist-info")):
        try:
            dist = md.Distribution.at(info)
            files = dist.files or []
        except Exception:
            continue
        if any(str(f).replace("\\", "/") == "vlmeval/__init__.py" for f in files):
            return dist.metadata["Name"] or info.name.split("-")[0], dist.version
    return None


def describe_root(root: str | os.PathLike) -> Flavour:
    """The flavour of the VLMEvalKit checkout (or site-packages folder) at ``root``."""
    root = Path(root).expanduser().resolve()
    pkg = root / "vlmeval"
    if not (pkg / "__init__.py").is_file():
        raise FlavourError(f"{root} holds no vlmeval package (expected {pkg}/__init__.py); give the root "
                           "of a VLMEvalKit checkout (the folder with run.py and vlmeval/)")
    return _describe(pkg)


def _describe(pkg: Path) -> Flavour:
    pkg = pkg.resolve()
    root = pkg.parent
    owner = _owning_dist(pkg)
    own_run = pkg / "run.py"
    if owner is not None or (own_run.is_file() and not (root / "run.py").is_file()):
        kind, run_py = "ms-vlmeval", own_run
        dist, version = owner or ("ms-vlmeval", _init_version(pkg))
        commit = None
        based_on = MS_VLMEVAL_UPSTREAM.get(version) if dist.lower() in ("ms-vlmeval", "ms_vlmeval") else None
    else:
        kind, run_py = "checkout", root / "run.py"
        if not run_py.is_file():
            raise FlavourError(f"vlmeval at {pkg} is neither ms-vlmeval (no vlmeval/run.py) nor a checkout "
                               f"(no {run_py}); point --vlmeval-root / {ROOT_ENV} at the checkout")
        version, commit, based_on = _init_version(pkg), _git_commit(root), None
    text = _read(run_py)
    layout = "flat" if _FLAT_PRED_ROOT.search(text) else "run-folders"
    return Flavour(kind=kind, version=version, commit=commit, root=root, package_dir=pkg, run_py=run_py,
                   layout=layout, has_limit="'--limit'" in text or '"--limit"' in text,
                   has_module_main=(pkg / "__main__.py").is_file(), based_on=based_on,
                   distribution=dist if kind == "ms-vlmeval" else None)


def _init_version(pkg: Path) -> str:
    m = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", _read(pkg / "__init__.py"), re.M)
    return m.group(1) if m else "unknown"


def detect(root: str | os.PathLike | None = None) -> Flavour:
    """The VLMEvalKit to drive: ``root`` (``--vlmeval-root``), else ``$ENCRED_VLMEVAL_ROOT``, else
    the one ``import vlmeval`` would load (found without importing it)."""
    root = root or os.environ.get(ROOT_ENV) or None
    if root:
        return describe_root(root)
    return _detect_importable()


@functools.lru_cache(maxsize=1)
def _detect_importable() -> Flavour:
    mod = sys.modules.get("vlmeval")
    origin = getattr(mod, "__file__", None) if mod is not None else None
    if origin is None:
        spec = importlib.util.find_spec("vlmeval")
        if spec is None or not spec.origin:
            raise FlavourError("no VLMEvalKit found: `import vlmeval` fails in this Python "
                               f"({sys.executable}); install ms-vlmeval, or `pip install -e` your VLMEvalKit "
                               f"checkout, or pass --vlmeval-root / set {ROOT_ENV}")
        origin = spec.origin
    return _describe(Path(origin).parent)


def current() -> Flavour | None:
    """:func:`detect`, or None where no VLMEvalKit can be found."""
    try:
        return detect()
    except FlavourError:
        return None


def installed() -> Flavour | None:
    """The VLMEvalKit this process imports (``--vlmeval-root`` aside), or None: what provenance
    records, since prompts and files of this process come from it."""
    try:
        return _detect_importable()
    except FlavourError:
        return None
