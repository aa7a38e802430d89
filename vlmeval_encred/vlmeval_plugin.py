"""What the start-up hook does inside VLMEvalKit, once its modules have executed.

* :func:`after_config`: add every registry entry to ``vlmeval.config.supported_VLM``
  (the very dict that ``run.py`` and ``vlmeval/inference.py`` look names up in)
  and set each wrapper class as an attribute of ``vlmeval.vlm`` so that
  ``run.py --config cfg.json`` with ``"class": "<Wrapper>"`` resolves it.
* :func:`after_dataset`: make the paper's short dataset names (``ChartQA``,
  ``SEED-I``, ...) fail with a message naming the official dataset instead of
  VLMEvalKit's silent skip.  See docs/datasets.md for why we do not alias them.

Both are idempotent: calling them twice changes nothing.
"""

from __future__ import annotations

import functools
import os
import warnings
from types import ModuleType

_MARK = "_vlmeval_encred"


class ShortDatasetNameError(ValueError):
    """A paper short name was given where VLMEvalKit needs an official dataset name."""


def after_config(config: ModuleType) -> int:
    """Register all entries in ``config.supported_VLM``; returns how many were added."""
    import vlmeval.vlm as vlm

    from .registry import entries

    supported = config.supported_VLM
    classes: dict[str, type] = {}
    failed: dict[str, str] = {}
    added = 0
    for entry in entries():
        wrapper = entry.base.wrapper
        if wrapper in failed:
            continue
        existing = supported.get(entry.name)
        if existing is not None and not getattr(existing, _MARK, False):
            warnings.warn(f"vlmeval-encred: VLMEvalKit already has a model named {entry.name!r}; "
                          "keeping VLMEvalKit's entry", RuntimeWarning, stacklevel=2)
            continue
        if wrapper not in classes:
            if _half_imported(wrapper):
                # The family module itself triggered this import of vlmeval (it imports
                # vlmeval.vlm.base); its class does not exist yet, so resolve it on use.
                classes[wrapper] = _deferred_class(wrapper)
            else:
                try:
                    classes[wrapper] = entry.base.load_wrapper_class()
                except Exception as exc:  # one family's import problem must not hide the others
                    failed[wrapper] = f"{type(exc).__name__}: {exc}"
                    continue
        builder = functools.partial(classes[wrapper], **entry.kwargs())
        setattr(builder, _MARK, True)
        supported[entry.name] = builder
        added += existing is None
    for cls in classes.values():
        if getattr(cls, "_deferred", False):
            continue
        if getattr(vlm, cls.__name__, cls) is not cls:
            warnings.warn(f"vlmeval-encred: vlmeval.vlm already has {cls.__name__!r}; not replaced",
                          RuntimeWarning, stacklevel=2)
            continue
        setattr(vlm, cls.__name__, cls)
    if failed:
        detail = "; ".join(f"{w} ({why})" for w, why in failed.items())
        warnings.warn(f"vlmeval-encred: models of these wrappers were not registered: {detail}",
                      RuntimeWarning, stacklevel=2)
    return added


def _half_imported(wrapper: str) -> bool:
    """True while a family module (this one or any other) is still executing.

    Family modules import ``vlmeval.vlm.base``, which executes ``vlmeval.config``; when a
    program imports a family module before vlmeval, registration runs in the middle of
    that import, and importing wrapper modules then would hit the half-made module.
    """
    import sys

    prefix = wrapper.partition(":")[0].rpartition(".")[0] + "."
    return any(name.startswith(prefix) and getattr(getattr(mod, "__spec__", None), "_initializing", False)
               for name, mod in list(sys.modules.items()))


def _deferred_class(wrapper: str):
    """A callable standing for a wrapper class whose module is still being imported."""
    import importlib

    module, _, attr = wrapper.partition(":")

    def build(*args, **kwargs):
        cls = getattr(importlib.import_module(module), attr)
        import vlmeval.vlm as vlm

        if not hasattr(vlm, attr):
            setattr(vlm, attr, cls)
        return cls(*args, **kwargs)

    build.__name__ = build.__qualname__ = attr
    build._deferred = True
    build.encred_wrapper = wrapper
    return build


def short_name_message(name: str, lmu_root: str) -> str | None:
    """The error for a paper short name that VLMEvalKit cannot build, else None."""
    from .suites import paper_short_names

    official = paper_short_names().get(name)
    if not official:
        return None
    if os.path.exists(os.path.join(lmu_root, f"{name}.tsv")):
        return None  # the user has their own TSV under that name: VLMEvalKit's usual behaviour
    alts = " and ".join(f"--data {d}" for d in official)
    return (f"{name!r} is the paper's short name, not a VLMEvalKit dataset. Its official "
            f"VLMEvalKit dataset{'s are' if len(official) > 1 else ' is'} {', '.join(official)}: "
            f"run with {alts}. (vlmeval-encred maps short names only in its reports, so that "
            f"result files keep the official names and official evaluation.)")


def after_dataset(dataset: ModuleType) -> None:
    """Wrap ``vlmeval.dataset.build_dataset`` so short names fail loudly."""
    original = dataset.build_dataset
    if getattr(original, _MARK, False):
        return
    official = set(getattr(dataset, "SUPPORTED_DATASETS", ()))

    @functools.wraps(original)
    def build_dataset(dataset_name, **kwargs):
        if dataset_name not in official:
            from vlmeval.smp import LMUDataRoot

            msg = short_name_message(dataset_name, LMUDataRoot())
            if msg:
                raise ShortDatasetNameError(msg)
        return original(dataset_name, **kwargs)

    setattr(build_dataset, _MARK, True)
    dataset.build_dataset = build_dataset
