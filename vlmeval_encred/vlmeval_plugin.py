"""What the start-up hook does inside VLMEvalKit, once its modules have executed.

* :func:`after_config`: add every registry entry (masks and the registered token budgets;
  other ``_keep<NN>`` budgets are added on first lookup) to ``vlmeval.config.supported_VLM``
  (the very dict that ``run.py`` and ``vlmeval/inference.py`` look names up in)
  and set each wrapper class as an attribute of ``vlmeval.vlm`` so that
  ``run.py --config cfg.json`` with ``"class": "<Wrapper>"`` resolves it.  It also
  guards our names (:class:`GuardedModels`, :func:`check_argv`): a name that looks
  like one of ours but is not registered stops the process with our message and a
  non-zero exit instead of VLMEvalKit's bare ``KeyError``, which its ``run.py`` logs
  and then exits 0.
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
import sys
import warnings
from types import ModuleType
from typing import Any

_MARK = "_vlmeval_encred"


class UnknownModelName(SystemExit):
    """A model name that looks like one of ours but is not registered.

    A :class:`SystemExit` on purpose: VLMEvalKit's ``run.py`` wraps each (model, dataset)
    combination in ``except Exception``, logs the error and carries on to exit 0, so any
    ``Exception`` (the plain ``KeyError`` included) would leave a run that "succeeded" with no
    results.  ``SystemExit`` passes through those handlers; Python prints the message and the
    process exits with status 1.
    """


class UnknownDatasetName(SystemExit):
    """A ``--data`` name that differs from one of the paper's short names only in case or
    punctuation (``seed-i`` for ``SEED-I``).  VLMEvalKit would skip it with one log line and exit
    0, so a whole evaluation could "succeed" without the benchmark; a SystemExit for the same
    reason as :class:`UnknownModelName`."""


def check_data_argv(official: set[str]) -> None:
    """When this process is VLMEvalKit's entry point, stop on a misspelt paper short name in
    ``--data`` before anything runs (names VLMEvalKit knows, local TSVs and exact short names pass)."""
    import os

    from . import aliases

    args = _vlmeval_cli_args()
    if args is None:
        return
    lmu = os.environ.get("LMUData") or os.path.join(os.path.expanduser("~"), "LMUData")
    for name in _models_in(args, "--data"):
        if name in official or aliases.standing_for(name) or os.path.exists(os.path.join(lmu, f"{name}.tsv")):
            continue
        hint = aliases.near_miss(name)
        if hint:
            raise UnknownDatasetName(f"{hint}. Stopped before any model was built or dataset run.")


class GuardedModels(dict):
    """``supported_VLM`` with one change: a missing name that looks like ours raises
    :class:`UnknownModelName` (our message) instead of ``KeyError``.

    Everything else is a plain dict: ``in``, ``get`` and missing names of other models
    behave as before (``KeyError``), so VLMEvalKit and other plugins see no difference.
    """

    def _on_demand(self, key):
        """A token-budget name of ours that is valid but not pre-registered (e.g. ``..._keep10``):
        build its entry from the base's registered builder, store it and return it (else None)."""
        from .tokens import KEEP_SEP

        if not isinstance(key, str) or KEEP_SEP not in key:
            return None
        try:
            from .registry import parse_entry_name

            entry = parse_entry_name(key)
        except Exception:
            return None
        base = dict.get(self, entry.base.name)
        if entry.tokens is None or base is None or not getattr(base, _MARK, False):
            return None
        builder = functools.partial(base.func, **entry.kwargs())
        setattr(builder, _MARK, True)
        dict.__setitem__(self, key, builder)
        return builder

    def __contains__(self, key):
        return dict.__contains__(self, key) or self._on_demand(key) is not None

    def __missing__(self, key):
        built = self._on_demand(key)
        if built is not None:
            return built
        try:
            msg = guard_message(key, self) if isinstance(key, str) else None
        except Exception:  # the guard must never turn a plain KeyError into something worse
            msg = None
        if msg:
            raise UnknownModelName(msg)
        raise KeyError(key)


_FAILED_WRAPPERS: dict[str, str] = {}  # base name -> why its wrapper could not be imported


def looks_like_ours(name: str, known: list[str] | None = None) -> bool:
    """Does ``name`` resemble a vlmeval-encred entry name?

    Yes when it contains ``_mask_`` (any case, or ``-mask-``), starts with a registered base
    model's name, or its closest match among all known model names (``known``: VLMEvalKit's
    and ours) is one of ours with a difflib ratio of at least 0.8.  Names closer to one of
    VLMEvalKit's own models are left to VLMEvalKit.
    """
    from .registry import MASK_SEP, all_entry_names, bases
    from .validate import nearest

    low = name.lower()
    if MASK_SEP in low or "-mask-" in low:
        return True
    if any(low.startswith(b.name) for b in bases()):
        return True
    ours = all_entry_names()
    pool = list(dict.fromkeys([*ours, *(known or ())]))
    best = nearest(name, pool, n=1, cutoff=0.8)
    return bool(best) and best[0] in set(ours)


def guard_message(name: str, supported=None) -> str | None:
    """Our one-line message for ``name``, or ``None`` when VLMEvalKit should handle it."""
    if supported is not None and name in supported:
        return None
    known = [k for k in (supported or {}) if isinstance(k, str)]
    if not looks_like_ours(name, known):
        return None
    from .registry import MASK_SEP, RegistryError, parse_entry_name, unknown_entry_message

    base = name.partition(MASK_SEP)[0]
    try:
        parse_entry_name(name)
    except RegistryError:
        why = unknown_entry_message(name)
    else:  # a valid name of ours that is not in supported_VLM: its family did not register here
        why = (f"model {name!r} is one of vlmeval-encred's, but its family was not registered in this "
               f"environment ({_FAILED_WRAPPERS.get(base, 'its wrapper could not be imported')}); "
               "`encred doctor` checks the environment")
    return f"vlmeval-encred: {why}. Stopped before loading any weights."


def _vlmeval_cli_args() -> list[str] | None:
    """The command-line arguments when this process is VLMEvalKit's own entry point, else ``None``.

    ``python run.py ...`` (an upstream checkout, or torchrun's per-rank ``python run.py``),
    ``python -m vlmeval ...`` (``sys.argv[0]`` is then ``.../vlmeval/__main__.py``) and
    ``python -m vlmeval.run ...``.  While ``-m`` is still importing the package ``sys.argv[0]``
    is ``'-m'``, and the module comes from ``sys.orig_argv``.
    """
    argv = list(sys.argv)
    if not argv:
        return None
    a0 = argv[0]
    if os.path.basename(a0) == "__main__.py":  # `-m pkg` runs pkg/__main__.py with argv[0] its path
        return argv[1:] if os.path.basename(os.path.dirname(os.path.abspath(a0))) == "vlmeval" else None
    if a0 == "-m":
        orig = list(getattr(sys, "orig_argv", []))
        try:
            mod = orig[orig.index("-m") + 1]
        except (ValueError, IndexError):
            return None
        return argv[1:] if mod in ("vlmeval", "vlmeval.run") else None
    if os.path.basename(a0) == "run.py":  # a checkout's run.py, or `python -m vlmeval.run`
        return argv[1:]
    return None


def _models_in(args: list[str], flag: str = "--model") -> list[str]:
    """The values of ``flag`` (``--model a b``, ``--model=a``, repeated)."""
    out: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith(flag + "="):
            out.append(a.split("=", 1)[1])
        elif a == flag:
            i += 1
            while i < len(args) and not args[i].startswith("-"):
                out.append(args[i])
                i += 1
            continue
        i += 1
    return out


def check_argv(supported) -> None:
    """When this process is VLMEvalKit's entry point, check its ``--model`` names now.

    Runs as ``vlmeval.config`` finishes executing, i.e. before ``run.py`` parses its arguments,
    builds any dataset (which may download it) or runs an earlier model of the list for hours.
    ``--config`` runs are left to :class:`GuardedModels` (their names are the config's keys).
    """
    args = _vlmeval_cli_args()
    if args is None or any(a == "--config" or a.startswith("--config=") for a in args):
        return
    for name in _models_in(args):
        msg = guard_message(name, supported)
        if msg:
            raise UnknownModelName(msg)


def _guard(config: ModuleType) -> dict:
    """Replace ``config.supported_VLM`` by a :class:`GuardedModels` holding the same entries.

    Runs right after ``vlmeval.config`` executed, so ``from vlmeval.config import supported_VLM``
    anywhere afterwards binds the guarded dict; a module that took the old one earlier (an import
    cycle) is re-pointed too.
    """
    old = config.supported_VLM
    if isinstance(old, GuardedModels) or not isinstance(old, dict):
        return old
    new = GuardedModels(old)
    for mod in list(sys.modules.values()):
        ns = getattr(mod, "__dict__", None)
        if isinstance(ns, dict) and ns.get("supported_VLM") is old:
            ns["supported_VLM"] = new
    config.supported_VLM = new
    return new


def after_config(config: ModuleType) -> int:
    """Register all entries in ``config.supported_VLM``; returns how many were added."""
    import vlmeval.vlm as vlm

    from .registry import entries

    supported = _guard(config)
    classes: dict[str, type] = {}
    failed: dict[str, str] = {}
    added = 0
    for entry in entries(tokens=True):  # the mask lattice and the registered token budgets
        wrapper = entry.base.wrapper
        if wrapper in failed:
            _FAILED_WRAPPERS[entry.base.name] = f"{wrapper}: {failed[wrapper]}"
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
                    _FAILED_WRAPPERS[entry.base.name] = f"{wrapper}: {failed[wrapper]}"
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
    try:
        check_argv(supported)  # raises UnknownModelName (a SystemExit) for a wrong name of ours
    except Exception:  # a bug in the check must not break VLMEvalKit; GuardedModels still guards
        pass
    return added


def _half_imported(wrapper: str) -> bool:
    """True while a family module (this one or any other) is still executing.

    Family modules import ``vlmeval.vlm.base``, which executes ``vlmeval.config``; when a
    program imports a family module before vlmeval, registration runs in the middle of
    that import, and importing wrapper modules then would hit the half-made module.
    """
    import sys

    from .families import PACKAGE

    module = wrapper.partition(":")[0]
    # every family's modules (model_wrappers/<family>/...), else the wrapper's own package
    prefix = (PACKAGE if module.startswith(PACKAGE + ".") else module.rpartition(".")[0]) + "."
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
    check_data_argv(official)  # raises UnknownDatasetName (a SystemExit) for a misspelt short name

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
