"""The paper's short dataset names (``ChartQA``, ``SEED-I``, ``CV-Bench``...) as VLMEvalKit datasets.

``python run.py --model M --data ChartQA`` must run exactly what ``--data
ChartQA_TEST`` runs: the official TSV (images untouched, original indices),
the official prompt, the official evaluation, and result files under the
official names, so that every tool (ours, VLMEvalKit's, a reviewer's) finds
them.  An :class:`AliasDataset` therefore holds the official dataset objects
(``parts``, built by VLMEvalKit's own ``build_dataset``) and only forwards:

* ``run.py`` sees the alias (its name on the command line): ``TYPE`` and
  ``MODALITY`` of the parts (they must agree), ``data`` = the parts' rows.
  ``get_judge_kwargs`` gives the same judge for alias and official name, and
  none of the official targets hits a name-keyed special case in ``run.py``.
* inference: the plugin's wrapper of ``vlmeval.inference.infer_data_job``
  (:func:`vlmeval_encred.vlmeval_plugin.after_inference`) runs VLMEvalKit's own
  inference once per part *with the part object*, so the model is asked with
  the official dataset name (wrappers key prompts on ``'MMBench'``,
  ``'SEEDBench'``, ``'ScienceQA'``), and writes ``<model>_<official>.<fmt>``.
* evaluation: :meth:`AliasDataset.evaluate` receives ``<model>_<alias>.<fmt>``
  from ``run.py``, hands ``<model>_<official>.<fmt>`` to each part's own
  ``evaluate`` (which writes the official-named score files) and, in a run
  folder, links them one level up as upstream's ``run.py`` does for its own.

* run.py's own bookkeeping (the result file it checks in ``--mode eval``, ``--reuse``'s copies, the
  ``status.json`` behind its closing summary): :func:`wrap_run_bookkeeping` makes each of these
  ``vlmeval.smp`` functions act per official part, so the summary, ``--mode eval`` and ``--reuse``
  are those of the official names.

Why not VLMEvalKit's ``ConcatDataset``: it re-encodes every image, renumbers
indices, adds columns and names files after the alias -- results that differ
from the official run.  Alias definitions are data: ``benchmarks.yaml``
(``datasets:`` / ``parts:`` of each benchmark, ``combine:`` for the headline of
a multi-part one).
"""

from __future__ import annotations

import os
import os.path as osp
from typing import Any, Callable, Sequence

_TEMP_SUFFIXES = ("_checkpoint.pkl", "_PREV.pkl", "_structs.pkl")


class AliasError(ValueError):
    """An alias cannot be built as asked (parts of different kinds, a part missing...)."""


def alias_targets(name: str) -> list[str] | None:
    """Official dataset names behind the paper short name ``name`` (None for any other name)."""
    from .suites import paper_short_names

    return paper_short_names().get(name)


def standing_for(name: Any) -> list[str] | None:
    """The official names ``build_dataset(name)`` builds an alias over in this VLMEvalKit, else None.

    None for an official name, for any name that is not a paper short name, and for a short name
    the user has an own ``$LMUData/<name>.tsv`` for (VLMEvalKit's custom dataset, as without us)."""
    if not isinstance(name, str):
        return None
    targets = alias_targets(name)
    if not targets:
        return None
    import vlmeval.dataset as vd

    if name in set(getattr(vd, "SUPPORTED_DATASETS", ())):
        return None
    from vlmeval.smp import LMUDataRoot

    if osp.exists(osp.join(LMUDataRoot(), f"{name}.tsv")):
        return None
    return list(targets)


def _fold(name: str) -> str:
    return "".join(c for c in name.casefold() if c.isalnum())


def near_miss(name: Any) -> str | None:
    """For a name VLMEvalKit could not build that differs from a paper short name only in case,
    ``-``/``_``/spaces (``seed-i``, ``CVBench``, ``chart_qa``): one line naming the short name."""
    if not isinstance(name, str):
        return None
    from .suites import paper_short_names

    for short, targets in paper_short_names().items():
        if short != name and _fold(short) == _fold(name):
            return (f"vlmeval-encred: no dataset {name!r}; the paper's short name is {short!r} "
                    f"(= {' + '.join(targets)}); dataset names are case-sensitive")
    return None


_LIVE: dict[str, "AliasDataset"] = {}
"""Aliases built in this process, by name (the last one built of each name)."""


def combine_rule(name: str) -> str:
    """How a multi-part benchmark's headline combines its parts (``benchmarks.yaml`` ``combine``)."""
    from .suites import load_raw

    return str((load_raw()["benchmarks"].get(name) or {}).get("combine", "mean"))


class AliasDataset:
    """A paper short name standing for one or more official VLMEvalKit datasets (see module doc)."""

    encred_alias = True

    def __init__(self, alias: str, parts: Sequence[Any]) -> None:
        if not parts:
            raise AliasError(f"alias {alias!r}: no official dataset to stand for")
        kinds = {(getattr(p, "TYPE", None), getattr(p, "MODALITY", "IMAGE")) for p in parts}
        if len(kinds) != 1:
            raise AliasError(f"alias {alias!r}: its datasets {[p.dataset_name for p in parts]} are of different "
                             f"kinds {sorted(map(str, kinds))}; run them by their official names")
        self.dataset_name = alias
        self.parts = list(parts)
        self.TYPE, self.MODALITY = next(iter(kinds))
        self._data = None

    # run.py reads these ----------------------------------------------------------------------
    @property
    def encred_alias_parts(self) -> list[Any]:
        return self.parts

    @property
    def data(self):
        """All parts' rows, unchanged (run.py only reads ``index`` to check prediction files)."""
        if self._data is None:
            import pandas as pd

            self._data = (self.parts[0].data if len(self.parts) == 1
                          else pd.concat([p.data for p in self.parts], ignore_index=True))
        return self._data

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def __getattr__(self, name: str) -> Any:
        # Everything else (img_root, dump_image, build_prompt, supported_datasets, meta_only ...)
        # is the official dataset's own, when there is exactly one; a two-part alias has no
        # single answer and says so.
        if name.startswith("__") or name in ("parts", "_data"):
            raise AttributeError(name)
        parts = self.__dict__.get("parts") or []
        if len(parts) == 1:
            return getattr(parts[0], name)
        raise AttributeError(f"{type(self).__name__} {self.__dict__.get('dataset_name')!r} stands for "
                             f"{[p.dataset_name for p in parts]}; {name!r} exists per part only")

    # evaluation --------------------------------------------------------------------------------
    def part_file(self, eval_file: str, part: Any) -> str:
        """``<dir>/<model>_<alias>.<ext>`` -> ``<dir>/<model>_<official>.<ext>``."""
        return part_path(eval_file, self.dataset_name, part.dataset_name)

    def evaluate(self, eval_file: str, **judge_kwargs: Any) -> Any:
        results = {}
        self.part_results = results
        for part in self.parts:
            pf = self.part_file(eval_file, part)
            if not osp.exists(pf):
                raise AliasError(f"{self.dataset_name}: no predictions {pf} for {part.dataset_name} (inference for "
                                 "the alias writes the official names; was it run with the vlmeval-encred hook?)")
            results[part.dataset_name] = part.evaluate(pf, **dict(judge_kwargs))
            link_run_files(pf)
        if len(self.parts) == 1:
            return results[self.parts[0].dataset_name]
        return _combined(self.dataset_name, results)


def part_path(path: str, alias: str, official: str) -> str:
    """``<dir>/<model>_<alias>.<ext>`` -> ``<dir>/<model>_<official>.<ext>``."""
    folder, base = osp.split(str(path))
    stem, ext = osp.splitext(base)
    tail = "_" + alias
    if not stem.endswith(tail):
        raise AliasError(f"{path}: expected a prediction file named <model>{tail}{ext}")
    return osp.join(folder, f"{stem[:-len(tail)]}_{official}{ext}")


def _overall(res: Any) -> float | None:
    import pandas as pd

    if isinstance(res, pd.DataFrame) and "Overall" in res.columns and len(res):
        return float(res["Overall"].iloc[0])
    if isinstance(res, dict) and isinstance(res.get("Overall"), (int, float)):
        return float(res["Overall"])
    return None


def _combined(alias: str, results: dict[str, Any]) -> Any:
    """One row per part and the benchmark's combination (``combine:`` in benchmarks.yaml)."""
    import pandas as pd

    vals = {name: _overall(r) for name, r in results.items()}
    rule = combine_rule(alias)
    rows = [{"split": name, "Overall": v} for name, v in vals.items()]
    if rule == "mean" and all(v is not None for v in vals.values()):
        rows.append({"split": f"{alias} (mean of parts)", "Overall": sum(vals.values()) / len(vals)})
    return pd.DataFrame(rows)


def link_run_files(pred_file: str) -> list[str]:
    """Upstream run.py's links ``<model>/<file>`` -> ``<eval id>/<file>`` for an official-named set.

    run.py links only files containing ``<model>_<the name it was given>``; for the alias that
    misses most official names, so the alias links its parts' files itself (links only; a
    regular file of that name is never replaced)."""
    from .sweep.predfiles import is_run_id

    run = osp.dirname(pred_file)
    if not is_run_id(osp.basename(run)):
        return []
    stem = osp.splitext(osp.basename(pred_file))[0]
    meta = osp.dirname(run)
    made = []
    for name in sorted(os.listdir(run)):
        p = osp.join(run, name)
        if not osp.isfile(p) or not (name.startswith(stem + ".") or name.startswith(stem + "_")) \
                or name.endswith(_TEMP_SUFFIXES):
            continue
        link = osp.join(meta, name)
        if osp.lexists(link):
            if not osp.islink(link):
                continue
            os.remove(link)
        os.symlink(osp.join(osp.basename(run), name), link)
        made.append(link)
    return made


def build(alias: str, build_official: Callable[..., Any], **kwargs: Any) -> AliasDataset | None:
    """The alias dataset, its parts built by VLMEvalKit's ``build_dataset`` (None if one fails to build,
    as VLMEvalKit returns None for a dataset it cannot build)."""
    parts = []
    for name in alias_targets(alias) or []:
        ds = build_official(name, **kwargs)
        if ds is None:
            return None
        parts.append(ds)
    made = AliasDataset(alias, parts)
    _LIVE[alias] = made
    return made


# --- run.py's own bookkeeping, under the official names ----------------------------------------
#
# Besides the files, run.py keeps per-dataset state named after the name it was given: the
# prediction file it checks before ``--mode eval`` evaluates (``is_prediction_complete``), the
# predictions ``--reuse`` copies from earlier run folders (``prepare_reuse_files``) and the
# entries of the run's ``status.json`` that its closing "Run Summary Report" reads
# (``upsert_dataset_status``: prediction file, metrics, and -- through the dataset class -- the
# scale of the primary metric).  For an alias, run.py's result file ``<model>_<alias>.<fmt>``
# never exists, so these wrappers of ``vlmeval.smp``'s functions (run.py binds them from there
# after ``vlmeval.dataset`` has executed) do the same for each official part, exactly as a run
# under the official names does.  Any other name goes to VLMEvalKit's function untouched.

_SKIPPED_NO_PRED = ("No infer result found", "Incomplete infer result")


def _bind(sig, args, kwargs):
    try:
        return sig.bind(*args, **kwargs).arguments
    except TypeError:
        return None


def _live_alias_for_file(pred_file: Any, indices: Any) -> "AliasDataset | None":
    """The alias whose run.py result file ``pred_file`` is (it never exists; its parts' files do)."""
    if not isinstance(pred_file, (str, os.PathLike)) or not _LIVE or osp.exists(pred_file):
        return None
    stem = osp.splitext(osp.basename(str(pred_file)))[0]
    for name, alias in _LIVE.items():
        if stem.endswith("_" + name):
            try:
                if [str(i) for i in indices] == [str(i) for i in alias.data["index"]]:
                    return alias
            except Exception:
                continue
    return None


def _wrap_is_prediction_complete(orig):
    import inspect

    sig = inspect.signature(orig)

    def is_prediction_complete(*args, **kwargs):
        a = _bind(sig, args, kwargs)
        alias = _live_alias_for_file(a.get("pred_file"), a.get("dataset_indices", ())) if a else None
        if alias is None:
            return orig(*args, **kwargs)
        rest = {k: v for k, v in a.items() if k not in ("pred_file", "dataset_indices")}
        return all(orig(alias.part_file(a["pred_file"], p), list(p.data["index"]), **rest) for p in alias.parts)

    return is_prediction_complete


def _wrap_prepare_reuse_files(orig):
    import inspect

    sig = inspect.signature(orig)

    def prepare_reuse_files(*args, **kwargs):
        a = _bind(sig, args, kwargs)
        alias = a.get("dataset") if a else None
        if not getattr(alias, "encred_alias", False):
            return orig(*args, **kwargs)
        ctxs = {}
        for part in alias.parts:
            b = dict(a, dataset_name=part.dataset_name, dataset=part,
                     result_file=alias.part_file(a["result_file"], part))
            ctxs[part.dataset_name] = orig(**b)
        alias.reuse_sources = {n: c.get("source_eval_id") for n, c in ctxs.items()}
        out = dict(next(iter(ctxs.values())))
        out["source_eval_id"] = next((s for s in alias.reuse_sources.values() if s), None)
        out["prediction_complete"] = all(c.get("prediction_complete") for c in ctxs.values())
        return out

    return prepare_reuse_files


def _part_skip_reason(alias: "AliasDataset | None", a: dict, part: str) -> str:
    """Eval mode found the alias incomplete: say for each part what it lacks (or that another part does),
    as run.py says it for an official name (it looked at the alias' file, which never exists)."""
    if alias is None:
        return a["skip_reason"]
    from vlmeval.smp import get_pred_file_path

    p = next(x for x in alias.parts if x.dataset_name == part)
    pf = get_pred_file_path(str(a["run_dir"]), a["model_name"], part, use_env_format=True)
    if not osp.exists(pf):
        return "No infer result found"
    complete = _ORIG.get("is_prediction_complete")
    if complete is None:
        from vlmeval.smp import is_prediction_complete as complete
    if not complete(pf, list(p.data["index"]), True):
        return "Incomplete infer result"
    return f"not evaluated: another part of {alias.dataset_name} has no complete predictions"


def _wrap_upsert_dataset_status(orig):
    import inspect

    sig = inspect.signature(orig)

    def upsert_dataset_status(*args, **kwargs):
        a = _bind(sig, args, kwargs)
        if a is None:
            return orig(*args, **kwargs)
        name, obj = a.get("dataset_name"), a.get("dataset_obj")
        alias = obj if getattr(obj, "encred_alias", False) else None
        if alias is not None:
            names = [p.dataset_name for p in alias.parts]
        else:
            names = standing_for(name)
            if not names:
                return orig(*args, **kwargs)
            live = _LIVE.get(name)
            alias = live if live is not None and [p.dataset_name for p in live.parts] == names else None
        objs = {p.dataset_name: p for p in alias.parts} if alias is not None else {}
        out = None
        for part in names:
            b = dict(a, dataset_name=part)
            if "dataset_obj" in b:
                b["dataset_obj"] = objs.get(part)
            pf = b.get("prediction_file")
            if isinstance(pf, (str, os.PathLike)) and str(pf):
                try:
                    b["prediction_file"] = part_path(str(pf), name, part)
                except AliasError:
                    pass
            if b.get("metrics_source") is not None and "metrics_source" in b and len(names) > 1:
                res = getattr(alias, "part_results", None) or {}
                if part in res:
                    b["metrics_source"] = res[part]
                else:
                    del b["metrics_source"]
            if b.get("source_run") and alias is not None:
                b["source_run"] = (getattr(alias, "reuse_sources", None) or {}).get(part) or b["source_run"]
            if b.get("skip_reason") in _SKIPPED_NO_PRED:  # run.py judged by its (never existing) alias file
                b["skip_reason"] = _part_skip_reason(alias, b, part)
            out = orig(**b)
        return out

    return upsert_dataset_status


_ORIG: dict[str, Callable[..., Any]] = {}
_WRAPPERS = {"is_prediction_complete": _wrap_is_prediction_complete,
             "prepare_reuse_files": _wrap_prepare_reuse_files,
             "upsert_dataset_status": _wrap_upsert_dataset_status}


def wrap_run_bookkeeping(smp: Any) -> None:
    """Wrap ``vlmeval.smp``'s per-dataset bookkeeping functions (idempotent; a missing one is left alone)."""
    import functools

    for fname, make in _WRAPPERS.items():
        orig = getattr(smp, fname, None)
        if orig is None or getattr(orig, "_encred_alias", False):
            continue
        _ORIG[fname] = orig
        wrapped = functools.wraps(orig)(make(orig))
        wrapped._encred_alias = True
        setattr(smp, fname, wrapped)
