"""Tiny random checkpoints, built offline, behind ``encred-tiny:<name>`` model paths.

Why: the test suite and the CPU smoke entries (a family's ``*_tiny_random`` bases) must
exercise the *same* loader code as a real checkpoint -- ``from_pretrained`` on a
directory with ``config.json``, weights, tokenizer, processor and chat template
-- on a machine that cannot download anything.  So a wrapper passes every
``model_path`` through :func:`resolve_model_path`; a real Hub id or local path
comes back unchanged, an ``encred-tiny:`` path is built once into the cache
(``$VLMEVAL_ENCRED_CACHE``, default ``~/.cache/vlmeval-encred/models``) and
its directory is returned.

Building is atomic: everything is written into a temporary directory beside
the target and moved into place with :func:`os.replace`, so a crashed or
concurrent build never leaves a half-written checkpoint that a later run would
load.  Each recipe (a family's :class:`TinyRecipe`, declared in its catalog with
``provide("tiny", name, "module:attr")``) carries a version; changing a recipe bumps it, which gives
a new directory instead of silently reusing a stale one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

TINY_PREFIX = "encred-tiny:"
_MARKER = "encred_tiny.json"


class TinyModelError(ValueError):
    """An ``encred-tiny:`` path names no known recipe, or a build failed."""


def cache_root() -> Path:
    """Where tiny checkpoints live: ``$VLMEVAL_ENCRED_CACHE`` or ``~/.cache/vlmeval-encred/models``."""
    env = os.environ.get("VLMEVAL_ENCRED_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vlmeval-encred" / "models"


# --------------------------------------------------------------------------- recipes and cache


@dataclass(frozen=True)
class TinyRecipe:
    """How to build one ``encred-tiny:<name>`` checkpoint."""

    name: str
    version: int
    build: Callable[[Path], None]
    description: str = ""
    params: dict = field(default_factory=dict)


def recipes() -> dict[str, TinyRecipe]:
    """Every ``encred-tiny:<name>`` the families declare (their catalogs' ``tiny`` hooks), imported lazily."""
    from .families import provided

    return dict(provided("tiny"))


def is_tiny(model_path: str) -> bool:
    return isinstance(model_path, str) and model_path.startswith(TINY_PREFIX)


def build_atomically(target: Path, build: Callable[[Path], None], meta: dict | None = None) -> Path:
    """Run ``build(tmp)`` in a temporary sibling of ``target`` and move it into place.

    If another process finished the same target first, its copy is kept and ours
    is discarded (both are identical by construction).
    """
    if (target / _MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp)
        marker = tmp / _MARKER
        with open(marker.with_suffix(".tmp"), "w") as fh:
            json.dump(meta or {}, fh, indent=1, sort_keys=True, default=str)
        os.replace(marker.with_suffix(".tmp"), marker)
        if target.exists() and not (target / _MARKER).is_file():
            shutil.rmtree(target)  # a directory from an interrupted, pre-marker layout
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / _MARKER).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure_tiny(name: str) -> Path:
    """Build (once) and return the directory of ``encred-tiny:<name>``."""
    known = recipes()
    if name not in known:
        raise TinyModelError(f"unknown tiny model {TINY_PREFIX}{name}; known: "
                             + ", ".join(TINY_PREFIX + n for n in sorted(known)))
    from .families import resolve

    recipe: TinyRecipe = resolve(known[name])
    target = cache_root() / f"{name}-v{recipe.version}"
    meta = dict(recipe=name, version=recipe.version, description=recipe.description, params=recipe.params)
    return build_atomically(target, recipe.build, meta)


def resolve_model_path(model_path: str) -> str:
    """A real checkpoint id/path unchanged; an ``encred-tiny:`` path as its built directory."""
    if is_tiny(model_path):
        return str(ensure_tiny(model_path[len(TINY_PREFIX):]))
    return model_path
