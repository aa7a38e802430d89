"""Tested environment recipes: a file of pins each, what a family's real upstream code needs.

Two places, one name space:

* a family's ``model_wrappers/<family>/recipe.txt``: the recipe is named after the family;
* this folder's ``<name>.txt`` (and an optional ``<name>.post`` script): recipes that belong
  to no family (the VLMEvalKit checkout flavour).

``scripts/env.sh --env <name>`` builds each as a cached overlay on the base
environment (looking in the same two places); users install the same file into their own
environment (``pip install -r <path>``, see docs/masking.md; :func:`path` gives it).  This
module compares a recipe with the running environment for ``encred doctor``.
"""

from __future__ import annotations

import importlib.metadata as md
from importlib import resources

from typing import TYPE_CHECKING, Mapping

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable


class EnvironmentMismatch(RuntimeError):
    """The installed packages cannot run a family's upstream code."""


FAMILY_RECIPE = "recipe.txt"


def _all() -> dict[str, Traversable]:
    from ..families import folder, names as family_names

    found = {p.name[:-4]: p for p in resources.files(__name__).iterdir() if p.name.endswith(".txt")}
    for fam in family_names():
        path = folder(fam) / FAMILY_RECIPE
        if path.is_file():
            if fam in found:
                raise KeyError(f"recipe {fam!r} exists twice: {found[fam]} and {path}")
            found[fam] = path
    return found


def names() -> list[str]:
    return sorted(_all())


def path(name: str) -> Traversable:
    """The file of recipe ``name``."""
    found = _all()
    if name not in found:
        raise KeyError(f"no environment recipe {name!r}; have: {', '.join(sorted(found))}")
    return found[name]


def requirements(name: str) -> list[Requirement]:
    """The pinned requirements of recipe ``name`` (comments, options and paths skipped)."""
    out = []
    for line in path(name).read_text().splitlines():
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
        try:
            where = str(path(recipe))
        except KeyError:
            where = f"<the {recipe} recipe>"
        hint = (f" Use the tested environment: pip install -r {where}"
                f" (or bash scripts/env.sh --env {recipe} ...); see docs/masking.md.") if recipe else ""
        raise EnvironmentMismatch(f"{what}: this environment cannot run its upstream code: "
                                  + "; ".join(bad) + "." + hint)
