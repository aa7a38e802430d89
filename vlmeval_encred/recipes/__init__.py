"""Tested environment recipes, one per family: ``<name>.txt`` pins what its real upstream code needs.

``scripts/env.sh --env <name>`` builds each as a cached overlay on the base
environment; users install the same file into their own environment
(``pip install -r <this folder>/<name>.txt``, see docs/masking.md).  This module
compares a recipe with the running environment for ``encred doctor``.
"""

from __future__ import annotations

import importlib.metadata as md
from importlib import resources

from typing import Mapping

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet


class EnvironmentMismatch(RuntimeError):
    """The installed packages cannot run a family's upstream code."""


def names() -> list[str]:
    return sorted(p.name[:-4] for p in resources.files(__name__).iterdir() if p.name.endswith(".txt"))


def requirements(name: str) -> list[Requirement]:
    """The pinned requirements of recipe ``name`` (comments, options and paths skipped)."""
    path = resources.files(__name__) / f"{name}.txt"
    if not path.is_file():
        raise KeyError(f"no environment recipe {name!r}; have: {', '.join(names())}")
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        try:
            out.append(Requirement(line))
        except InvalidRequirement:
            continue
    return out


def mismatches(name: str) -> list[str]:
    """Human-readable differences between recipe ``name`` and the installed packages."""
    bad = []
    for req in requirements(name):
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            have = md.version(req.name)
        except md.PackageNotFoundError:
            bad.append(f"{req.name}: not installed (recipe: {req})")
            continue
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            bad.append(f"{req.name} {have} installed, recipe wants {req}")
    return bad


def check_requires(requires: Mapping[str, str], what: str, recipe: str = "") -> None:
    """Raise :class:`EnvironmentMismatch` naming each package whose version does not fit.

    Called before a model loads, so a wrong environment costs seconds, not a download."""
    bad = []
    for pkg, spec in requires.items():
        try:
            have = md.version(pkg)
        except md.PackageNotFoundError:
            bad.append(f"{pkg} is not installed (needs {pkg}{spec})")
            continue
        if not SpecifierSet(spec).contains(have, prereleases=True):
            bad.append(f"{pkg} {have} is installed, {what} needs {pkg}{spec}")
    if bad:
        hint = (f" Use the tested environment: pip install -r {resources.files(__name__) / (recipe + '.txt')}"
                f" (or bash scripts/env.sh --env {recipe} ...); see docs/masking.md.") if recipe else ""
        raise EnvironmentMismatch(f"{what}: this environment cannot run its upstream code: "
                                  + "; ".join(bad) + "." + hint)
