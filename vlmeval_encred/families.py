"""Where the model families are: one subpackage of ``vlmeval_encred.model_wrappers`` each.

The core names no family.  A family is a folder ``model_wrappers/<family>/`` (installed as
``vlmeval_encred.model_wrappers.<family>``) holding everything about it (docs/plugin.md,
"Adding a family"):

* ``catalog.py``: its base models (``register_base``), the upstream repositories its real
  code comes from (``register_source``) and the hooks below (``provide``); standard library
  and core registry only, so that importing every catalog stays cheap (``encred models``);
* ``recipe.txt`` (optional): the tested environment, named after the family;
* ``costdata.yaml`` (optional): its bases' architecture numbers for ``encred profile --plan``;
* the code, imported only through the ``"module:attr"`` strings the catalog gives.

Discovery is a folder scan (:func:`names`, ``pkgutil.iter_modules``), so adding a family is
adding a folder; a folder without ``catalog.py`` is not a family.

Hooks: a catalog says what else it offers with ``provide(kind, key, "module:attr")``;
the core asks :func:`provided` for a kind and imports a target only when it is used.
Kinds in use:

* ``selftest``: key = self-test name (``encred doctor --family``), target = a
  :class:`~vlmeval_encred.realcode.checks.RealCodeSelfTest`;
* ``tiny``: key = the ``<name>`` of an ``encred-tiny:<name>`` checkpoint, target = a
  :class:`~vlmeval_encred.tiny_models.TinyRecipe`;
* ``demo``: key = the base model ``encred demo`` runs, target = its wrapper class.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

PACKAGE = "vlmeval_encred.model_wrappers"
CATALOG = "catalog"

_HOOKS: dict[str, dict[str, str]] = {}
_loaded = False


@functools.lru_cache(maxsize=None)
def _scan() -> tuple[str, ...]:
    pkg = importlib.import_module(PACKAGE)
    out = []
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.ispkg and not info.name.startswith("_") and folder(info.name).joinpath(CATALOG + ".py").is_file():
            out.append(info.name)
    return tuple(sorted(out))


def names() -> list[str]:
    """Every family folder (a subpackage of the model_wrappers package with a ``catalog`` module), sorted."""
    return list(_scan())


def folder(name: str) -> Traversable:
    """The family's folder (its data files: ``recipe.txt``, ``costdata.yaml``)."""
    return resources.files(PACKAGE).joinpath(name)


def load_catalogs() -> None:
    """Import every family's catalog (cheap: registrations only; a second call costs a dict lookup each)."""
    global _loaded
    if _loaded:
        return
    for name in _scan():
        importlib.import_module(f"{PACKAGE}.{name}.{CATALOG}")
    _loaded = True


def provide(kind: str, key: str, target: str) -> None:
    """Declare that ``target`` (``"module:attr"``) serves hook ``kind`` under ``key`` (from a catalog)."""
    if ":" not in target:
        raise ValueError(f"hook {kind}/{key}: target {target!r} must be 'module:attr'")
    table = _HOOKS.setdefault(kind, {})
    if table.get(key, target) != target:
        raise ValueError(f"hook {kind}/{key} declared twice, differently: {table[key]} vs {target}")
    table[key] = target


def provided(kind: str) -> dict[str, str]:
    """``key -> "module:attr"`` of every family's ``kind`` hooks (catalogs loaded first)."""
    load_catalogs()
    return dict(_HOOKS.get(kind, {}))


def resolve(target: str) -> Any:
    """Import ``"module:attr"`` and return the attribute."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


_OWN_MODULES = ("catalog", "modeling", "selftest", "tiny", "compat")


def forward_to_modeling(package: str):
    """A module ``__getattr__`` for a family's ``__init__``: other names come from its ``modeling``
    on first use, so ``from vlmeval_encred.model_wrappers.<family> import ADAPTER`` works while
    importing the package (as every catalog import does) imports nothing heavy."""

    def __getattr__(name: str):
        # the family's own submodules (asked for while they are being imported) and dunders stay unforwarded
        if name.startswith("__") or name in _OWN_MODULES:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(package + ".modeling"), name)

    return __getattr__
