"""The sweep: every selected subset of one base model over datasets, in one pass.

Per sample the engine builds the message exactly as ``vlmeval/inference.py``'s
``infer_data`` does (dataset prompt, or the model's custom prompt when it
asks for one, with the dataset's ``dump_image``), pre-processes it as
``BaseModel.generate`` does, runs every encoder that some pending subset keeps
*once*, and decodes all pending subsets of the sample as one batch (families
whose fusion ends in ``inputs_embeds`` can decode through
:func:`.decoding.greedy_subsets`: the chat template's text before the image is
prefilled once and its key/value cache shared, finished rows leave the batch;
what that saved is in ``DatasetReport.decoding``).  Finished
samples go to an append-only checkpoint (see :mod:`.checkpoint`); when a
variant has every sample, its prediction file is written where and as
VLMEvalKit's own inference writes it (see :mod:`.predfiles`), so ``run.py``
for that variant goes straight to evaluation (:mod:`.evalcmd` builds that command).
A limited sweep writes into ``<work_dir>/encred_limit<N>/`` instead, out of reach of
a full run; :mod:`.locks` keeps two sweeps from writing the same files.

The model is loaded once, through ``vlmeval.config.supported_VLM`` like any
run, as the entry that masks only the encoders *no* selected subset keeps
(usually none), so the sweep never holds a tower it does not need.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .. import provenance
from ..registry import BaseModelSpec, Entry
from . import predfiles
from .checkpoint import SweepCheckpoint, checkpoint_path
from .decoding import DecodeStats, collect
from .locks import LockHeld, hold, output_lock
from .protocol import support_for

log = logging.getLogger("vlmeval_encred")


class SweepError(RuntimeError):
    """A sweep cannot run as asked (unsupported dataset kind, inconsistent state...)."""


@dataclass
class DatasetReport:
    dataset: str
    samples: int = 0
    computed_samples: int = 0
    skipped_variants: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    encoder_calls: dict[str, int] = field(default_factory=dict)
    decode_calls: int = 0
    seconds: float = 0.0
    reused_adaptive: int = 0
    """Answers taken from an adaptive sweep's checkpoint (``encred_adaptive/``) instead of computed."""
    decoding: DecodeStats = field(default_factory=DecodeStats)
    """What families decoding through :func:`.decoding.greedy_subsets` saved (prefix reuse, rows dropped)."""


@dataclass
class SweepReport:
    base: str
    variants: list[str]
    datasets: list[DatasetReport] = field(default_factory=list)
    load_seconds: float = 0.0
    work_dir: str = ""
    """Where the prediction files went: the work dir, or its ``encred_limit<N>/`` for a limited sweep."""
    limit: int | None = None


def load_mask(entries: Sequence[Entry]) -> tuple[str, ...]:
    """Encoders no selected entry keeps: the sweep model can do without them."""
    base = entries[0].base
    common = set(base.encoders)
    for e in entries:
        common &= set(e.masked)
    return tuple(x for x in base.encoders if x in common)


def build_message(model: Any, dataset: Any, line: Any) -> list[dict[str, Any]]:
    """The prompt ``infer_data`` would build for ``line``, pre-processed as ``BaseModel.generate`` does."""
    name = dataset.dataset_name
    if getattr(dataset, "force_use_dataset_prompt", False):
        struct = dataset.build_prompt(line)
    elif hasattr(model, "use_custom_prompt") and model.use_custom_prompt(name):
        struct = model.build_prompt(line, dataset=name)
    else:
        struct = dataset.build_prompt(line)
    kind = model.check_content(struct)
    if kind not in ("str", "dict", "liststr", "listdict"):
        raise SweepError(f"{name}: invalid prompt structure for index {line['index']}: {struct!r}")
    message = model.preproc_content(struct)
    for item in message:
        if item["type"] not in model.allowed_types:
            raise SweepError(f"{name}: message item type {item['type']!r} not allowed by {type(model).__name__}")
    return message


def _build_dataset(name: str) -> Any:
    from vlmeval.dataset import build_dataset

    dataset = build_dataset(name)
    if dataset is None:
        raise SweepError(f"VLMEvalKit could not build dataset {name!r} (unknown name and no "
                         f"$LMUData/{name}.tsv); see `vlmutil dlist all`")
    if getattr(dataset, "MODALITY", "IMAGE") == "VIDEO" or getattr(dataset, "TYPE", "") == "MT":
        raise SweepError(f"{name}: video and multi-turn datasets use other inference loops in VLMEvalKit; "
                         "the sweep handles image datasets only -- run these variants one by one")
    return dataset


def _chunks(seq: list, size: int) -> list[list]:
    size = size if size and size > 0 else len(seq)
    return [seq[i:i + size] for i in range(0, len(seq), size)]


def run_sweep(base: BaseModelSpec, entries: Sequence[Entry], datasets: Sequence[str], work_dir: str,
              *, limit: int | None = None, decode_batch: int = 0, sync_every: int = 10, progress: bool = True,
              model: Any = None, on_sample: Callable[[str, Any], None] | None = None,
              checkpoint_tag: str = "") -> SweepReport:
    """Sweep ``entries`` of ``base`` over ``datasets`` into ``work_dir``; see the module docstring.

    ``decode_batch``: at most this many subsets per ``generate`` call (0: all of a sample's).
    ``model``: an already loaded wrapper of ``base`` (benchmarks reuse one); else loaded here.
    ``on_sample(dataset, index)``: called after each sample is checkpointed (tests use it to
    simulate a kill).
    ``limit``: the first N samples only; everything then goes to
    :func:`.predfiles.limited_work_dir` (``<work_dir>/encred_limit<N>/``), never where
    ``run.py`` looks for the full run (it would infer the remaining samples there).
    ``checkpoint_tag``: a checkpoint (and its lock) of its own, e.g. per cluster shard, so
    shards of one dataset running at once never share, rewrite or delete each other's.

    Per dataset the sweep holds :mod:`.locks` (its checkpoint, and every selected variant's
    output) while it computes and writes; if another live process holds one, it raises
    :class:`SweepError` naming that process instead of computing the same files again.
    """
    import os

    if os.environ.get("SPLIT_THINK"):
        raise SweepError("SPLIT_THINK is set: VLMEvalKit would split thinking traces into an extra column; "
                         "the sweep does not reproduce that layout -- unset it or run variants one by one")
    entries = list(entries)
    if not entries:
        raise SweepError("no entries selected")
    work_dir = predfiles.limited_work_dir(str(work_dir), limit)
    report = SweepReport(base.name, [e.name for e in entries], work_dir=work_dir, limit=limit or None)
    support_box: list[Any] = [None]
    mask_mode = base.modes[0]
    layout = predfiles.layout()
    run_id = predfiles.new_run_id() if layout == "run-folders" else None  # one run folder per sweep
    for ds_name in datasets:
        t0 = time.perf_counter()
        dataset = _build_dataset(ds_name)
        if limit:
            dataset.data = dataset.data.iloc[:limit]
        rep = DatasetReport(ds_name, samples=len(dataset.data))
        report.datasets.append(rep)
        indices = list(dataset.data["index"])
        ck_path = checkpoint_path(work_dir, base.name, ds_name, checkpoint_tag)
        lock_paths = [ck_path.with_suffix(".lock")] + [output_lock(work_dir, e.name, ds_name) for e in entries]
        try:
            with hold(lock_paths, what=f"{base.name} x {ds_name} in {work_dir}"):
                if not limit:  # answers an adaptive sweep already computed are reused, not recomputed
                    from .adaptive import import_answers

                    rep.reused_adaptive = import_answers(work_dir, base, ds_name, ck_path, entries)
                model = _sweep_dataset(base, entries, dataset, ds_name, indices, rep, report, work_dir, ck_path,
                                       model, support_box, mask_mode, layout, run_id, decode_batch, sync_every,
                                       progress, on_sample)
        except LockHeld as exc:
            raise SweepError(str(exc)) from None
        rep.seconds = time.perf_counter() - t0
    return report


def _sweep_dataset(base, entries, dataset, ds_name, indices, rep, report, work_dir, ck_path, model, support_box,
                   mask_mode, layout, run_id, decode_batch, sync_every, progress, on_sample):
    """One dataset of :func:`run_sweep`, under its locks; returns the (possibly just loaded) model."""
    from tqdm import tqdm

    pending = []
    for e in entries:
        found = predfiles.find_pred_file(work_dir, e.name, ds_name, layout)
        if found and predfiles.is_complete(found, indices):
            rep.skipped_variants.append(e.name)
        else:
            pending.append(e)
    if not pending:
        if ck_path.exists():
            ck_path.unlink()
        return model
    if model is None:
        t_load = time.perf_counter()
        model = load_model(base, entries)
        report.load_seconds += time.perf_counter() - t_load
    if support_box[0] is None:
        support_box[0] = support_for(model)
    support = support_box[0]
    model.set_dump_image(dataset.dump_image)
    ck = SweepCheckpoint.open(ck_path, sync_every=sync_every)
    data = dataset.data
    already = sum(1 for i in indices if all(e.name in ck.get(i) for e in pending))
    bar = tqdm(total=len(indices), initial=already, disable=not progress, unit="sample",
               desc=f"sweep {base.name}/{ds_name} x{len(pending)} variants")
    scope = contextlib.ExitStack()
    rep.decoding = scope.enter_context(collect())
    try:
        for pos in range(len(data)):
            line = data.iloc[pos]
            idx = line["index"]
            have = ck.get(idx)
            todo = [e for e in pending if e.name not in have]
            if not todo:
                continue
            preds = answer_sample(base, support, model, dataset, ds_name, line, todo, mask_mode, decode_batch, rep)
            ck.add(idx, preds)
            rep.computed_samples += 1
            bar.update(1)
            if on_sample is not None:
                on_sample(ds_name, idx)
    finally:
        scope.close()
        bar.close()
        ck.close()
    for e in pending:
        preds = {i: ck.get(i)[e.name] for i in indices}
        path = predfiles.target_pred_file(work_dir, e.name, ds_name, run_id)
        frame = predfiles.prediction_frame(dataset, preds)
        predfiles.write_atomically(frame, path)
        provenance.write(path, provenance.record(
            path, writer="encred sweep", model=model, entry_name=e.name,
            fp=provenance.fingerprint(frame["index"], frame["prediction"]),
            extra={"dataset": ds_name, "samples": len(indices), "masked": list(e.masked), "mode": mask_mode,
                   "loaded_as": base.entry_name(load_mask(entries))}))
        predfiles.link_up(path)
        rep.written.append(path)
    ck.remove()
    return model


def answer_sample(base: BaseModelSpec, support: Any, model: Any, dataset: Any, ds_name: str, line: Any,
                  todo: Sequence[Entry], mask_mode: str, decode_batch: int, rep: DatasetReport) -> dict[str, str]:
    """Every entry of ``todo`` answers one sample: each needed encoder once, subsets decoded in batches."""
    message = build_message(model, dataset, line)
    inputs = support.prepare(model, message, ds_name)
    needed = [x for x in base.encoders if any(x in e.kept for e in todo)]
    feats = support.encode(model, inputs, needed) if needed else {}
    for x in needed:
        rep.encoder_calls[x] = rep.encoder_calls.get(x, 0) + 1
    preds: dict[str, str] = {}
    for chunk in _chunks(list(todo), decode_batch):
        per_subset = [{x: (feats[x] if x in e.kept else None) for x in base.encoders} for e in chunk]
        outs = support.fuse_and_generate(model, inputs, per_subset, mask_mode)
        if len(outs) != len(chunk):
            raise SweepError(f"{type(support).__name__}.fuse_and_generate returned {len(outs)} "
                             f"answers for {len(chunk)} subsets")
        rep.decode_calls += 1
        preds.update({e.name: str(o) for e, o in zip(chunk, outs)})
    return preds


def load_model(base: BaseModelSpec, entries: Sequence[Entry]) -> Any:
    """The wrapper VLMEvalKit would build for the entry masking :func:`load_mask`'s encoders."""
    from vlmeval.config import supported_VLM

    name = base.entry_name(load_mask(entries))
    if name not in supported_VLM:
        raise SweepError(f"{name!r} is not in vlmeval.config.supported_VLM: the vlmeval-encred hook did not "
                         "register it (is VLMEVAL_ENCRED_DISABLE set, or did the family fail to import?)")
    return supported_VLM[name]()
