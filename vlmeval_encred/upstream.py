"""Where the families' real upstream source code is, for tests and ``encred doctor``.

The adapters wrap upstream classes (EAGLE, Cambrian, DeepSeek-VL, the MMVP LLaVA
fork, DINOv2) and VLMEvalKit itself; none of that code is copied into this
project.  To run the adapters against the *real* classes we need a copy of each
repository on disk, found in this order:

1. ``ENCRED_SRC_<NAME>`` (e.g. ``ENCRED_SRC_EAGLE=/home/me/EAGLE``): the user's own
   checkout, used as it is;
2. an archive ``<owner>-<repo>-<commit>.tar.gz`` in ``ENCRED_UPSTREAM_ARCHIVES`` or
   in ``../shared/upstream`` next to this checkout (the project's pinned test
   fixtures), extracted once into a cache keyed by the archive's sha256.

Nothing here imports the upstream code; callers put :func:`source_dir`'s result
on ``sys.path`` (see :func:`on_sys_path`) or install it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .hashing import file_sha256


@dataclass(frozen=True)
class UpstreamRepo:
    """One upstream repository: how its archive is named and which folder holds its importable code."""

    name: str            # our short name, also the suffix of ENCRED_SRC_<NAME>
    archive_prefix: str  # "<owner>-<repo>-" of the snapshot archive
    top: str             # folder inside the archive
    import_root: str     # path under the repository root that goes on sys.path ("" = the root)
    package: str         # a package that must exist under import_root (a sanity check)
    url: str

    @property
    def env_var(self) -> str:
        return f"ENCRED_SRC_{self.name.upper()}"


REPOS: dict[str, UpstreamRepo] = {r.name: r for r in [
    UpstreamRepo("eagle", "NVlabs-EAGLE-", "EAGLE", "", "eagle", "https://github.com/NVlabs/EAGLE"),
    UpstreamRepo("cambrian", "cambrian-mllm-cambrian-", "cambrian", "", "cambrian",
                 "https://github.com/cambrian-mllm/cambrian"),
    UpstreamRepo("deepseek_vl", "deepseek-ai-DeepSeek-VL-", "DeepSeek-VL", "", "deepseek_vl",
                 "https://github.com/deepseek-ai/DeepSeek-VL"),
    UpstreamRepo("mmvp", "tsb0601-MMVP-", "MMVP", "LLaVA", "llava", "https://github.com/tsb0601/MMVP"),
    UpstreamRepo("dinov2", "facebookresearch-dinov2-", "dinov2", "", "dinov2",
                 "https://github.com/facebookresearch/dinov2"),
    # NVIDIA's vision code of Eagle2-9B (multi-backbone tower, SigLIP and ConvNeXt towers, config class)
    # as kept under Eagle2_5/eaglevl/model/multimodal_encoder; the chat model is not in it.
    UpstreamRepo("eagle2", "NVlabs-Eagle-", "Eagle", "Eagle2_5", "eaglevl", "https://github.com/NVlabs/Eagle"),
    UpstreamRepo("vlmevalkit", "open-compass-VLMEvalKit-", "VLMEvalKit", "", "vlmeval",
                 "https://github.com/open-compass/VLMEvalKit"),
]}


class UpstreamNotFound(RuntimeError):
    """No copy of an upstream repository is available; the message says how to provide one."""


def cache_root() -> Path:
    return Path(os.environ.get("VLMEVAL_ENCRED_ENV_CACHE", Path.home() / ".cache" / "vlmeval-encred")) / "upstream"


def archive_dirs() -> list[Path]:
    """Folders searched for snapshot archives: ENCRED_UPSTREAM_ARCHIVES, then ../shared/upstream of this checkout."""
    dirs = []
    if os.environ.get("ENCRED_UPSTREAM_ARCHIVES"):
        dirs.append(Path(os.environ["ENCRED_UPSTREAM_ARCHIVES"]))
    here = Path(__file__).resolve()
    for parent in here.parents[1:4]:  # <checkout>/vlmeval_encred/upstream.py -> <checkout>/../shared
        dirs.append(parent / "shared" / "upstream")
    return [d for d in dict.fromkeys(dirs) if d.is_dir()]


def find_archive(repo: UpstreamRepo) -> Path | None:
    for d in archive_dirs():
        hits = sorted(d.glob(f"{repo.archive_prefix}*.tar.gz"))
        if hits:
            return hits[-1]
    return None


def _extract(archive: Path, repo: UpstreamRepo) -> Path:
    """Extract once into cache/<name>-<sha12>; concurrent callers race safely (rename is atomic)."""
    dest = cache_root() / f"{repo.name}-{file_sha256(archive)[:12]}"
    if (dest / ".complete").exists():
        return dest / repo.top
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{repo.name}-", dir=dest.parent))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        (tmp / ".complete").write_text(str(archive))
        try:
            os.rename(tmp, dest)
        except OSError:  # another process won the race, or a stale incomplete copy is in the way
            if not (dest / ".complete").exists():
                shutil.rmtree(dest, ignore_errors=True)
                os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest / repo.top


def source_dir(name: str) -> Path:
    """Root of the upstream repository ``name`` (see module docstring for the search order).

    Raises :class:`UpstreamNotFound` naming the environment variable to set.
    """
    repo = REPOS[name]
    user = os.environ.get(repo.env_var)
    if user:
        root = Path(user).expanduser().resolve()
        if not (root / repo.import_root / repo.package).is_dir():
            raise UpstreamNotFound(
                f"{repo.env_var}={user} does not look like a checkout of {repo.url}: "
                f"expected a folder {Path(repo.import_root) / repo.package} in it")
        return root
    archive = find_archive(repo)
    if archive is None:
        raise UpstreamNotFound(
            f"no copy of {repo.url} found: set {repo.env_var} to a local clone, or "
            f"ENCRED_UPSTREAM_ARCHIVES to a folder holding {repo.archive_prefix}<commit>.tar.gz")
    return _extract(archive, repo)


def import_root(name: str) -> Path:
    """The folder to put on ``sys.path`` so that the repository's package imports."""
    return source_dir(name) / REPOS[name].import_root


def forget_modules(*packages: str) -> None:
    """Drop ``packages`` and their submodules from ``sys.modules`` (a stand-in may have been imported first)."""
    for mod in [m for m in sys.modules if m.split(".")[0] in packages]:
        del sys.modules[mod]


@contextlib.contextmanager
def on_sys_path(name: str, *, forget: bool = True) -> Iterator[Path]:
    """Import upstream ``name`` from its real source within the block; undo afterwards."""
    root = str(import_root(name))
    package = REPOS[name].package
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
    """Make upstream ``name`` importable: our located copy first (put on ``sys.path``), else an
    installed package (a user's ``pip install -e EAGLE``); returns the path used, None if installed.

    Raises :class:`UpstreamNotFound` when neither exists."""
    import importlib.util

    try:
        root = import_root(name)
    except UpstreamNotFound:
        if importlib.util.find_spec(REPOS[name].package) is not None:
            return None
        raise
    if str(root) not in sys.path:
        forget_modules(REPOS[name].package)
        sys.path.insert(0, str(root))
    return root


def describe() -> dict[str, str]:
    """Where each repository would come from, or why it cannot (for ``encred doctor``)."""
    out = {}
    for name, repo in REPOS.items():
        if os.environ.get(repo.env_var):
            out[name] = f"{repo.env_var}={os.environ[repo.env_var]}"
        else:
            archive = find_archive(repo)
            out[name] = f"archive {archive}" if archive else f"not found (set {repo.env_var})"
    return out
