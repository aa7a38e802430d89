"""Where VLMEvalKit (ms-vlmeval 0.0.20 layout) keeps a prediction file, and what it holds.

``run.py`` infers into ``<work_dir>/<model>/`` (flat, no run-id folder in
this release) and ``infer_data_job`` writes ``get_pred_file_path(...)``:
``<model>_<dataset>.<PRED_FORMAT>`` (xlsx unless ``$PRED_FORMAT`` says tsv or
json), holding ``dataset.data`` without its ``image`` column plus a
``prediction`` column of ``str(response)``.  When that file exists and covers
every index, a later ``run.py`` loads it as previous results and evaluates
without building the model.  Everything here calls VLMEvalKit's own helpers
(``get_pred_file_path``, ``dump``, ``is_prediction_complete``) so a change of
format upstream is followed, not duplicated.
"""

from __future__ import annotations

import os
import os.path as osp
from typing import Any, Mapping


def model_dir(work_dir: str, model_name: str) -> str:
    """``run.py``'s ``pred_root`` for a model in ms-vlmeval 0.0.20."""
    return osp.join(work_dir, model_name)


def pred_file(work_dir: str, model_name: str, dataset_name: str) -> str:
    from vlmeval.smp import get_pred_file_path

    return get_pred_file_path(model_dir(work_dir, model_name), model_name, dataset_name, use_env_format=True)


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
