"""Where VLMEvalKit keeps a prediction file, in either layout, and what it holds.

``infer_data_job`` writes ``get_pred_file_path(pred_root, ...)``:
``<model>_<dataset>.<PRED_FORMAT>`` (xlsx unless ``$PRED_FORMAT`` says tsv or
json), holding ``dataset.data`` without its ``image`` column plus a
``prediction`` column of ``str(response)``.  ``pred_root`` depends on the
installed VLMEvalKit (:mod:`vlmeval_encred.flavour`):

* ``flat`` (ms-vlmeval 0.0.20): ``<work_dir>/<model>/``; a later ``run.py``
  finds a complete file there and evaluates without building the model.
* ``run-folders`` (upstream checkout): ``<work_dir>/<model>/<eval id>/`` with
  ``<eval id>`` = ``T<YYYYmmdd-HHMMSS>`` (VLMEvalKit's own ``build_eval_id``)
  and a relative link to each file in ``<work_dir>/<model>/``.  ``run.py
  --reuse`` copies the prediction of the newest run folder (by mtime) that has
  one into its new run folder, and then only evaluates.  A flat file is
  invisible to it, so the sweep writes a run folder of its own.

Everything here calls VLMEvalKit's own helpers (``get_pred_file_path``,
``dump``, ``is_prediction_complete``, ``build_eval_id``) so a change of format
upstream is followed, not duplicated.
"""

from __future__ import annotations

import os
import os.path as osp
import re
from typing import Any, Mapping


_RUN_ID = re.compile(r"^T\d{8}-\d{6}$|^T\d{8}_G[0-9a-fA-F]+$")


def layout() -> str:
    """``flat`` or ``run-folders`` for the installed VLMEvalKit (flat when none is found)."""
    from ..flavour import current

    fl = current()
    return fl.layout if fl else "flat"


def model_dir(work_dir: str, model_name: str) -> str:
    """``run.py``'s ``pred_root_meta``: every run of a model lives under it."""
    return osp.join(work_dir, model_name)


def is_run_id(name: str) -> bool:
    return bool(_RUN_ID.match(name))


def run_dirs(work_dir: str, model_name: str, exclude: str | None = None) -> list[str]:
    """Run folders of a model, newest first by mtime (the order ``--reuse`` searches them in)."""
    root = model_dir(work_dir, model_name)
    try:
        names = os.listdir(root)
    except OSError:
        return []
    dirs = [osp.join(root, n) for n in names if is_run_id(n) and osp.isdir(osp.join(root, n))]
    if exclude is not None:
        dirs = [d for d in dirs if osp.abspath(d) != osp.abspath(exclude)]
    return sorted(dirs, key=osp.getmtime, reverse=True)


def _name(work_dir: str, model_name: str, dataset_name: str) -> str:
    from vlmeval.smp import get_pred_file_path

    return osp.basename(get_pred_file_path(model_dir(work_dir, model_name), model_name, dataset_name,
                                           use_env_format=True))


def find_pred_file(work_dir: str, model_name: str, dataset_name: str, layout_: str | None = None) -> str | None:
    """The prediction file the installed ``run.py`` would pick up (with ``--reuse`` for run folders)."""
    name = _name(work_dir, model_name, dataset_name)
    if (layout_ or layout()) == "flat":
        p = osp.join(model_dir(work_dir, model_name), name)
        return p if osp.isfile(p) else None
    for d in run_dirs(work_dir, model_name):
        p = osp.join(d, name)
        if osp.isfile(p):
            return p
    return None


def pred_file(work_dir: str, model_name: str, dataset_name: str) -> str:
    """:func:`find_pred_file`, else where a flat layout would put it (for messages and flat writers)."""
    return (find_pred_file(work_dir, model_name, dataset_name)
            or osp.join(model_dir(work_dir, model_name), _name(work_dir, model_name, dataset_name)))


def new_run_id() -> str:
    """A run-folder name as the installed VLMEvalKit makes them."""
    from vlmeval import smp

    if hasattr(smp, "build_eval_id"):
        return smp.build_eval_id()
    return f"T{smp.timestr('day')}_G{smp.githash(digits=8)}"  # older upstream naming


def target_pred_file(work_dir: str, model_name: str, dataset_name: str, run_id: str | None) -> str:
    """Where a writer puts a new prediction: flat, or inside run folder ``run_id``."""
    base = model_dir(work_dir, model_name)
    if run_id:
        base = osp.join(base, run_id)
    return osp.join(base, _name(work_dir, model_name, dataset_name))


def link_up(path: str) -> str | None:
    """Upstream's convenience link ``<model>/<file>`` -> ``<eval id>/<file>`` (relative).

    Replaces an earlier link, never a regular file (someone's results)."""
    run = osp.dirname(path)
    if not is_run_id(osp.basename(run)):
        return None
    link = osp.join(osp.dirname(run), osp.basename(path))
    if osp.lexists(link):
        if not osp.islink(link):
            return None
        os.remove(link)
    os.symlink(osp.join(osp.basename(run), osp.basename(path)), link)
    return link


def is_complete(path: str, indices: list[Any]) -> bool:
    """VLMEvalKit's own test of whether it would skip inference (failed answers count as missing)."""
    from vlmeval.smp import is_prediction_complete

    return bool(is_prediction_complete(path, dataset_indices=indices, retry_failed=True))


def prediction_frame(dataset: Any, predictions: Mapping[Any, str]):
    """The frame ``infer_data_job`` dumps: dataset rows, ``prediction`` = ``str(response)``, no image."""
    data = dataset.data.copy()
    missing = [i for i in data["index"] if i not in predictions]
    if missing:
        raise KeyError(f"{dataset.dataset_name}: no prediction for {len(missing)} indices, e.g. {missing[:5]}")
    data["prediction"] = [str(predictions[i]) for i in data["index"]]
    if "image" in data:
        data.pop("image")
    return data


def write_atomically(frame: Any, path: str) -> None:
    """``vlmeval.smp.dump`` into a sibling temporary file with the same suffix, then ``os.replace``."""
    from vlmeval.smp import dump

    os.makedirs(osp.dirname(path), exist_ok=True)
    stem, suffix = osp.splitext(path)
    tmp = f"{osp.dirname(path)}/.{osp.basename(stem)}.{os.getpid()}.tmp{suffix}"
    try:
        dump(frame, tmp)
        if not osp.exists(tmp):  # vlmeval.dump falls back to .pkl silently when a writer is missing
            raise OSError(f"vlmeval.smp.dump did not write {tmp} (is the writer for {suffix} installed?)")
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, osp.splitext(tmp)[0] + ".pkl"):
            if osp.exists(leftover):
                os.remove(leftover)


LIMIT_PREFIX = "encred_limit"


def limited_work_dir(work_dir: str, limit: int | None) -> str:
    """Where a run limited to the first ``limit`` samples keeps its VLMEvalKit outputs.

    ``<work_dir>/encred_limit<N>/`` -- a VLMEvalKit work dir of its own, never ``work_dir``:
    a prediction of N samples where ``run.py`` looks for the full run would make the next
    ``run.py`` (ms-vlmeval without ``--limit``; an upstream checkout, which has no
    ``--limit``, with ``--reuse``) build the model and infer every remaining sample.
    ``work_dir`` itself when ``limit`` is falsy."""
    return osp.join(work_dir, f"{LIMIT_PREFIX}{int(limit)}") if limit else work_dir


def limit_of(dirname: str) -> int | None:
    """N for a ``encred_limit<N>`` folder name, else None."""
    m = re.fullmatch(re.escape(LIMIT_PREFIX) + r"(\d+)", dirname)
    return int(m.group(1)) if m else None
