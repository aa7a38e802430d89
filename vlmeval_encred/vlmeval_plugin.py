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


def after_inference(inference: ModuleType) -> None:
    """Wrap ``vlmeval.inference.infer_data_job`` so each prediction file of our models gets a
    provenance sidecar (:mod:`vlmeval_encred.provenance`).

    ``run.py`` binds ``infer_data_job`` with ``from vlmeval.inference import ...`` right after this
    module executes, so it gets the wrapped function.  Answers are untouched; only rank 0 (which
    wrote the merged file) writes the sidecar.  Predictions that were complete before the call
    (reused by ``--reuse`` or a flat earlier run) keep the record of the run that made them.
    """
    original = getattr(inference, "infer_data_job", None)
    if original is None or getattr(original, _MARK, False):
        return
    import inspect

    sig = inspect.signature(original)

    @functools.wraps(original)
    def infer_data_job(*args, **kwargs):
        try:
            bound = sig.bind_partial(*args, **kwargs)
            work_dir, model_name, dataset = (bound.arguments.get(k) for k in ("work_dir", "model_name", "dataset"))
            pred = _pred_path(work_dir, model_name, dataset)
            done_before = pred is not None and _complete(pred, dataset)
        except Exception:
            pred, done_before = None, False
        result = original(*args, **kwargs)
        if pred is not None and int(os.environ.get("RANK", "0")) == 0:
            try:
                from . import provenance
                from .sweep.predfiles import is_run_id

                parent = os.path.dirname(str(work_dir))
                siblings = [str(work_dir)]
                if is_run_id(os.path.basename(str(work_dir))):
                    siblings = [os.path.join(parent, n) for n in sorted(os.listdir(parent), reverse=True)
                                if is_run_id(n) and os.path.join(parent, n) != str(work_dir)] + [parent]
                provenance.after_inference(pred, None if done_before else result, model_name,
                                           dataset.dataset_name, siblings)
            except Exception as exc:  # provenance must never fail a run
                warnings.warn(f"vlmeval-encred: no provenance record for {pred}: {type(exc).__name__}: {exc}",
                              RuntimeWarning, stacklevel=2)
        return result

    setattr(infer_data_job, _MARK, True)
    inference.infer_data_job = infer_data_job


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
