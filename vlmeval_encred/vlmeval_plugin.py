"""What the start-up hook does inside VLMEvalKit, once its modules have executed.

* :func:`after_config`: add every registry entry to ``vlmeval.config.supported_VLM``
  (the very dict that ``run.py`` and ``vlmeval/inference.py`` look names up in)
  and set each wrapper class as an attribute of ``vlmeval.vlm`` so that
  ``run.py --config cfg.json`` with ``"class": "<Wrapper>"`` resolves it.
* :func:`after_dataset`: the paper's short dataset names (``ChartQA``,
  ``SEED-I``, ``CV-Bench``, ...) build an alias over the official datasets
  (:mod:`vlmeval_encred.aliases`, docs/datasets.md).
* :func:`after_inference`: inference of an alias runs per official part; each
  prediction file of our models gets a provenance sidecar
  (:mod:`vlmeval_encred.provenance`).

Both are idempotent: calling them twice changes nothing.
"""

from __future__ import annotations

import functools
import os
import warnings
from types import ModuleType
from typing import Any

_MARK = "_vlmeval_encred"


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


def after_dataset(dataset: ModuleType) -> None:
    """Wrap ``vlmeval.dataset.build_dataset`` so the paper's short names build an alias dataset.

    Official names, and any name the user has a ``$LMUData/<name>.tsv`` for, go to VLMEvalKit
    untouched; a paper short name (``ChartQA``, ``CV-Bench``...) becomes a
    :class:`vlmeval_encred.aliases.AliasDataset` over the official dataset objects.
    """
    import sys

    from . import aliases

    smp = sys.modules.get("vlmeval.smp")
    if smp is not None:  # run.py binds these from vlmeval.smp after vlmeval.dataset has executed
        aliases.wrap_run_bookkeeping(smp)
    original = dataset.build_dataset
    if getattr(original, _MARK, False):
        return
    official = set(getattr(dataset, "SUPPORTED_DATASETS", ()))

    @functools.wraps(original)
    def build_dataset(dataset_name, **kwargs):
        if dataset_name not in official and aliases.standing_for(dataset_name):
            return aliases.build(dataset_name, original, **kwargs)
        built = original(dataset_name, **kwargs)
        if built is None:
            hint = aliases.near_miss(dataset_name)
            if hint:  # VLMEvalKit skips an unknown name with one line; say which name was meant
                from vlmeval.smp import get_logger

                get_logger("vlmeval_encred").error(hint)
        return built

    setattr(build_dataset, _MARK, True)
    dataset.build_dataset = build_dataset


def after_inference(inference: ModuleType) -> None:
    """Wrap ``vlmeval.inference.infer_data_job`` (aliases per part; provenance sidecars).

    ``run.py`` binds ``infer_data_job`` with ``from vlmeval.inference import ...`` right after this
    module executes, so it gets the wrapped function.  For an alias dataset, VLMEvalKit's own
    ``infer_data_job`` runs once per official part with that part's dataset object (the model sees
    the official name; files get official names).  Answers are untouched.  After each call rank 0
    (which wrote the merged file) writes the sidecar; predictions that were complete before the
    call (``--reuse`` copied them, or an earlier flat run) keep the record of the run that made them.
    """
    original = getattr(inference, "infer_data_job", None)
    if original is None or getattr(original, _MARK, False):
        return
    import inspect

    sig = inspect.signature(original)

    def one(bound) -> Any:
        work_dir, model_name, dataset = (bound.arguments.get(k) for k in ("work_dir", "model_name", "dataset"))
        try:
            pred = _pred_path(work_dir, model_name, dataset)
            done_before = pred is not None and _complete(pred, dataset)
        except Exception:
            pred, done_before = None, False
        result = original(*bound.args, **bound.kwargs)
        if pred is not None and int(os.environ.get("RANK", "0")) == 0:
            try:
                from . import provenance

                provenance.after_inference(pred, None if done_before else result, model_name,
                                           dataset.dataset_name, _sibling_runs(str(work_dir)))
            except Exception as exc:  # provenance must never fail a run
                warnings.warn(f"vlmeval-encred: no provenance record for {pred}: {type(exc).__name__}: {exc}",
                              RuntimeWarning, stacklevel=3)
        return result

    @functools.wraps(original)
    def infer_data_job(*args, **kwargs):
        try:
            bound = sig.bind(*args, **kwargs)
        except TypeError:  # a call we do not understand: VLMEvalKit's own function, untouched
            return original(*args, **kwargs)
        parts = getattr(bound.arguments.get("dataset"), "encred_alias_parts", None)
        if not parts:
            return one(bound)
        model = bound.arguments.get("model")
        for part in parts:
            bound.arguments["dataset"] = part
            bound.arguments["model"] = model
            model = one(bound)  # the model built for the first part serves the next
        return model

    setattr(infer_data_job, _MARK, True)
    inference.infer_data_job = infer_data_job


def _sibling_runs(work_dir: str) -> list[str]:
    """Folders a reused prediction may have been copied from: the other run folders, then the flat one."""
    from .sweep.predfiles import is_run_id

    if not is_run_id(os.path.basename(work_dir)):
        return [work_dir]
    parent = os.path.dirname(work_dir)
    runs = [os.path.join(parent, n) for n in os.listdir(parent) if is_run_id(n)]
    runs = sorted((r for r in runs if os.path.abspath(r) != os.path.abspath(work_dir) and os.path.isdir(r)),
                  key=os.path.getmtime, reverse=True)
    return runs + [parent]


def _pred_path(work_dir, model_name, dataset) -> str | None:
    if work_dir is None or model_name is None or dataset is None:
        return None
    from vlmeval.smp import get_pred_file_path

    return get_pred_file_path(str(work_dir), model_name, dataset.dataset_name, use_env_format=True)


def _complete(pred: str, dataset) -> bool:
    if not os.path.exists(pred):
        return False
    from vlmeval.smp import is_prediction_complete

    return bool(is_prediction_complete(pred, dataset_indices=list(dataset.data["index"]), retry_failed=True))
