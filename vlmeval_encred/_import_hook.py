"""Start-up hook that lets an unchanged VLMEvalKit see this package's models.

``vlmeval_encred_hook.pth`` calls :func:`install` at interpreter start.  It
only puts a :class:`sys.meta_path` finder in place (standard library only, a
few microseconds); nothing is imported until some code imports
``vlmeval.config`` or ``vlmeval.dataset``.  Right after VLMEvalKit has
executed one of those modules, the finder's loader calls into
:mod:`vlmeval_encred.vlmeval_plugin`, which adds our entries to
``vlmeval.config.supported_VLM`` in place and guards the paper's short
dataset names.  (``importlib.abc`` is avoided on purpose: it pulls in
``importlib.resources`` and costs ~9 ms at start-up; the import system only
needs the methods.)  Every torchrun rank is a fresh interpreter and so gets the
same treatment.  A failure in the plugin never breaks VLMEvalKit: it becomes
one warning.
"""

from __future__ import annotations

import os
import sys
import warnings

_DISABLE_VAR = "VLMEVAL_ENCRED_DISABLE"  # duplicated from vlmeval_encred to keep start-up import-free
_AFTER = {"vlmeval.config": "after_config", "vlmeval.dataset": "after_dataset",
          "vlmeval.inference": "after_inference"}


def disabled() -> bool:
    return os.environ.get(_DISABLE_VAR, "").strip().lower() in {"1", "true", "yes", "on"}


class _PostExecLoader:
    """Delegates to the real loader, then runs our plugin step once."""

    def __init__(self, inner, fullname: str) -> None:
        self._inner = inner
        self._fullname = fullname

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module) -> None:
        self._inner.exec_module(module)
        _run_plugin_step(self._fullname, module)

    def __getattr__(self, name):  # get_source, get_code, get_resource_reader, ...
        return getattr(self._inner, name)


class EncredFinder:
    """Finds nothing itself; wraps the loader that the other finders return."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _AFTER:
            return None
        for finder in sys.meta_path:
            if finder is self or isinstance(finder, EncredFinder):
                continue
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and not isinstance(spec.loader, _PostExecLoader):
            spec.loader = _PostExecLoader(spec.loader, fullname)
        return spec


_warned = False


def _run_plugin_step(fullname: str, module) -> None:
    global _warned
    if disabled():
        return
    try:
        from vlmeval_encred import vlmeval_plugin

        getattr(vlmeval_plugin, _AFTER[fullname])(module)
    except Exception as exc:  # never break VLMEvalKit; one warning per process
        if _warned:
            return
        _warned = True
        warnings.warn(
            f"vlmeval-encred: could not register its models/datasets with VLMEvalKit "
            f"({type(exc).__name__}: {exc}); VLMEvalKit works as without the plugin. "
            f"Set {_DISABLE_VAR}=1 to silence this.", RuntimeWarning, stacklevel=2)


def install() -> None:
    """Put the finder first on sys.meta_path (idempotent, never raises)."""
    try:
        if disabled() or any(isinstance(f, EncredFinder) for f in sys.meta_path):
            return
        sys.meta_path.insert(0, EncredFinder())
        # Already imported (e.g. install() called late): run the step now.
        for name in _AFTER:
            mod = sys.modules.get(name)
            if mod is not None and getattr(getattr(mod, "__spec__", None), "_initializing", False) is False:
                _run_plugin_step(name, mod)
    except Exception:  # start-up must never fail because of us
        pass
