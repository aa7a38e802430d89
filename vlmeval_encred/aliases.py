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
        folder, base = osp.split(eval_file)
        stem, ext = osp.splitext(base)
        tail = "_" + self.dataset_name
        if not stem.endswith(tail):
            raise AliasError(f"{eval_file}: expected a prediction file named <model>{tail}{ext}")
        return osp.join(folder, f"{stem[:-len(tail)]}_{part.dataset_name}{ext}")

    def evaluate(self, eval_file: str, **judge_kwargs: Any) -> Any:
        results = {}
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
    return AliasDataset(alias, parts)
