"""The sweep: every selected subset of one base model over datasets, in one pass.

Per sample the engine builds the message exactly as ``vlmeval/inference.py``'s
``infer_data`` does (dataset prompt, or the model's custom prompt when it
asks for one, with the dataset's ``dump_image``), pre-processes it as
``BaseModel.generate`` does, runs every encoder that some pending subset keeps
*once*, and decodes all pending subsets of the sample as one batch (families
whose fusion ends in ``inputs_embeds`` can decode through
:func:`.decoding.greedy_subsets`: the chat template's text before the image is
prefilled once and its key/value cache shared, finished rows leave the batch;
what that saved is in ``DatasetReport.decoding``).  With ``decode_batch_tokens`` > 0 and a
family whose support has ``fuse``, decoding is deferred: consecutive samples are fused
and decoded together once their rows fill that many prompt positions
(:class:`DeferredDecode`), then checkpointed one by one.  Finished
samples go to an append-only checkpoint (see :mod:`.checkpoint`); when a
variant has every sample, its prediction file is written where and as
VLMEvalKit's own inference writes it (see :mod:`.predfiles`), so ``run.py``
for that variant goes straight to evaluation (:mod:`.evalcmd` builds that command).
A limited sweep writes into ``<work_dir>/encred_limit<N>/`` instead, out of reach of
a full run; :mod:`.locks` keeps two sweeps from writing the same files.

The model is loaded once, through ``vlmeval.config.supported_VLM`` like any
run, as the entry that masks only the encoders *no* selected subset keeps
(usually none), so the sweep never holds a tower it does not need.

Token-budget variants (``<...>_keep25``, docs/tokens.md) are rows like any other: they
reuse the same encoder outputs of the sample (each encoder still runs once per image for
all masks and budgets) and are answered by the family's ``fuse_and_generate(...,
tokens=...)`` (:func:`answer_budgets`); a family whose support does not sweep a stage is
refused before the model loads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .. import provenance
from ..registry import BaseModelSpec, Entry
from ..tokens import TokenError
from . import predfiles
from . import parallel
from .checkpoint import checkpoint_path
from .decoding import DecodeRequest, DecodeStats, collect, decode, padded_tokens
from .locks import LockHeld, output_lock
from .protocol import check_token_stages, support_for, support_for_class

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
              checkpoint_tag: str = "", split: parallel.Split | None = None,
              decode_batch_tokens: int = 0) -> SweepReport:
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

    ``split``: which samples this process computes and who writes (:mod:`.parallel`); default
    :func:`.parallel.from_env` -- one of torchrun's ranks when ``WORLD_SIZE`` > 1, else all.
    Whatever the split, the prediction files are the same bytes.

    ``decode_batch_tokens``: 0 (default, exact) decodes each sample's subsets on their own; N > 0,
    for a family whose support has ``fuse``, decodes rows of consecutive samples together in
    batches of at most N prompt positions (see :class:`DeferredDecode`; answers may differ from
    the exact ones in the last bits of the logits, docs/sweeps.md counts how often).

    Per dataset the sweep holds :mod:`.locks` (its checkpoint, and every selected variant's
    output) while it computes and writes; if another live process holds one, it raises
    :class:`SweepError` naming that process instead of computing the same files again.
    """
    if os.environ.get("SPLIT_THINK"):
        raise SweepError("SPLIT_THINK is set: VLMEvalKit would split thinking traces into an extra column; "
                         "the sweep does not reproduce that layout -- unset it or run variants one by one")
    entries = list(entries)
    if not entries:
        raise SweepError("no entries selected")
    check_budgets(base, entries, model)
    if int(decode_batch_tokens) < 0:
        raise SweepError(f"decode_batch_tokens must be >= 0 (0 = each sample on its own), got {decode_batch_tokens}")
    split = split or parallel.from_env()
    if split.parts > 1 and checkpoint_tag:
        raise SweepError("a lattice shard (checkpoint_tag) cannot also be split by samples")
    checkpoint_tag = checkpoint_tag or split.tag
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
        lock_paths = split.lock_paths(ck_path, [output_lock(work_dir, e.name, ds_name) for e in entries])
        try:
            with parallel.hold_all(split, lock_paths, what=f"{base.name} x {ds_name} in {work_dir}"):
                # answers an adaptive sweep already computed are reused, not recomputed (imported once, by
                # the writer; another rank that opened its view earlier at worst recomputes some of them)
                if not limit and split.writes:
                    from .adaptive import import_answers

                    rep.reused_adaptive = import_answers(work_dir, base, ds_name, ck_path, entries)
                model = _sweep_dataset(base, entries, dataset, ds_name, indices, rep, report, work_dir, ck_path,
                                       model, support_box, mask_mode, layout, run_id, decode_batch, sync_every,
                                       progress, on_sample, split, decode_batch_tokens)
        except LockHeld as exc:
            raise SweepError(str(exc)) from None
        rep.seconds = time.perf_counter() - t0
    return report


def _sweep_dataset(base, entries, dataset, ds_name, indices, rep, report, work_dir, ck_path, model, support_box,
                   mask_mode, layout, run_id, decode_batch, sync_every, progress, on_sample, split,
                   decode_batch_tokens=0):
    """One dataset of :func:`run_sweep`, under its locks; returns the (possibly just loaded) model.

    This process computes the samples ``split`` gives it that no checkpoint of the (base,
    dataset) holds yet; the writer (see :mod:`.parallel`) then writes every pending variant's
    file from the union of the checkpoints."""
    from tqdm import tqdm

    pending = []
    for e in entries:
        found = predfiles.find_pred_file(work_dir, e.name, ds_name, layout)
        if found and predfiles.is_complete(found, indices):
            rep.skipped_variants.append(e.name)
        else:
            pending.append(e)
    if not pending:
        ck_path.unlink(missing_ok=True)
        if split.writes:
            parallel.remove_free_checkpoints(ck_path.parent, base.name, ds_name, written=[e.name for e in entries])
        return model
    ck = parallel.CheckpointView.open(ck_path, base.name, ds_name, sync_every=sync_every)
    data = dataset.data
    mine = split.positions(len(data))
    todo_pos = [p for p in mine if not all(e.name in ck.get(data.iloc[p]["index"]) for e in pending)]
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo_pos), disable=not progress or not split.writes,
               unit="sample", desc=f"sweep {base.name}/{ds_name} x{len(pending)} variants"
                                   + (f" (rank 0 of {split.parts})" if split.parts > 1 else ""))
    scope = contextlib.ExitStack()
    rep.decoding = scope.enter_context(collect())
    try:
        if todo_pos and model is None:
            t_load = time.perf_counter()
            model = load_model(base, entries)
            report.load_seconds += time.perf_counter() - t_load
        if todo_pos and support_box[0] is None:
            support_box[0] = support_for(model)
        support = support_box[0]
        if todo_pos:
            model.set_dump_image(dataset.dump_image)
        deferred = DeferredDecode.for_support(support, decode_batch_tokens) if todo_pos else None

        def record(idx: Any, preds: dict[str, str]) -> None:
            ck.add(idx, preds)
            rep.computed_samples += 1
            bar.update(1)
            if on_sample is not None:
                on_sample(ds_name, idx)

        for pos in todo_pos:
            line = data.iloc[pos]
            idx = line["index"]
            have = ck.get(idx)
            todo = [e for e in pending if e.name not in have]
            if not todo:
                continue
            if deferred is not None:
                finished = deferred.add(idx, fuse_sample(base, support, model, dataset, ds_name, line, todo,
                                                         mask_mode, decode_batch, rep))
            else:
                finished = [(idx, answer_sample(base, support, model, dataset, ds_name, line, todo, mask_mode,
                                                decode_batch, rep))]
            for done_idx, preds in finished:
                record(done_idx, preds)
        for done_idx, preds in (deferred.flush() if deferred is not None else []):
            record(done_idx, preds)
    finally:
        scope.close()
        bar.close()
        ck.close()
    # ranks: every rank's checkpoint is closed once all are here; the writer sums what they computed
    counts = parallel.all_gather(split, (rep.computed_samples, dict(rep.encoder_calls), rep.decode_calls,
                                         dict(vars(rep.decoding))))
    if split.mode == "ranks":
        rep.computed_samples = sum(c[0] for c in counts)
        rep.decode_calls = sum(c[2] for c in counts)
        rep.encoder_calls = {x: sum(c[1].get(x, 0) for c in counts) for x in base.encoders
                             if any(x in c[1] for c in counts)}
        for k, v in vars(rep.decoding).items():
            if isinstance(v, int):  # counters: every rank's summed
                setattr(rep.decoding, k, sum(c[3].get(k, 0) for c in counts))
    if split.mode == "jobs":
        with parallel.merge_lock(work_dir, base.name, ds_name):
            _write_if_complete(base, entries, pending, dataset, ds_name, indices, rep, work_dir, ck_path, model,
                               mask_mode, layout, run_id, split)
    elif split.writes:
        _write_if_complete(base, entries, pending, dataset, ds_name, indices, rep, work_dir, ck_path, model,
                           mask_mode, layout, run_id, split)
    parallel.barrier(split)  # ranks: the files exist (or the writer failed) before anyone goes on
    if not split.writes:
        ck.remove()
    return model


def sample_features(base: BaseModelSpec, support: Any, model: Any, dataset: Any, ds_name: str, line: Any,
                    todo: Sequence[Entry], rep: DatasetReport) -> tuple[Any, dict[str, Any]]:
    """(the support's prepared inputs, each encoder some entry of ``todo`` keeps run once) for one sample."""
    message = build_message(model, dataset, line)
    inputs = support.prepare(model, message, ds_name)
    needed = [x for x in base.encoders if any(x in e.kept for e in todo)]
    feats = support.encode(model, inputs, needed) if needed else {}
    for x in needed:
        rep.encoder_calls[x] = rep.encoder_calls.get(x, 0) + 1
    return inputs, feats


def answer_sample(base: BaseModelSpec, support: Any, model: Any, dataset: Any, ds_name: str, line: Any,
                  todo: Sequence[Entry], mask_mode: str, decode_batch: int, rep: DatasetReport) -> dict[str, str]:
    """Every entry of ``todo`` answers one sample: each needed encoder once, subsets decoded in batches."""
    inputs, feats = sample_features(base, support, model, dataset, ds_name, line, todo, rep)
    preds: dict[str, str] = {}
    plain = [e for e in todo if e.tokens is None]
    for chunk in _chunks(plain, decode_batch):
        per_subset = [{x: (feats[x] if x in e.kept else None) for x in base.encoders} for e in chunk]
        outs = support.fuse_and_generate(model, inputs, per_subset, mask_mode)
        if len(outs) != len(chunk):
            raise SweepError(f"{type(support).__name__}.fuse_and_generate returned {len(outs)} "
                             f"answers for {len(chunk)} subsets")
        rep.decode_calls += 1
        preds.update({e.name: str(o) for e, o in zip(chunk, outs)})
    if len(plain) < len(todo):
        preds.update(answer_budgets(base, support, model, inputs, feats,
                                    [e for e in todo if e.tokens is not None], mask_mode, decode_batch, rep))
    return preds


def row_tokens(entries: Sequence[Entry]) -> list[Any]:
    """Each row's :class:`~vlmeval_encred.tokens.TokenSpec` (None: unpruned), what ``tokens=`` gets."""
    return [e.tokens for e in entries]


def answer_budgets(base: BaseModelSpec, support: Any, model: Any, inputs: Any, feats: dict[str, Any],
                   todo: Sequence[Entry], mask_mode: str, decode_batch: int, rep: DatasetReport) -> dict[str, str]:
    """The token-budget entries of one sample, from the encoder outputs the mask rows used.

    Kept apart from the mask rows so that families without budgets never see ``tokens=``."""
    preds: dict[str, str] = {}
    for chunk in _chunks(list(todo), decode_batch):
        per_subset = [{x: (feats[x] if x in e.kept else None) for x in base.encoders} for e in chunk]
        try:
            outs = support.fuse_and_generate(model, inputs, per_subset, mask_mode, tokens=row_tokens(chunk))
        except TokenError as exc:  # e.g. an llm-stage K the loaded language model does not have
            raise SweepError(f"{', '.join(e.name for e in chunk)}: {exc}") from None
        if len(outs) != len(chunk):
            raise SweepError(f"{type(support).__name__}.fuse_and_generate returned {len(outs)} "
                             f"answers for {len(chunk)} token-budget rows")
        rep.decode_calls += 1
        preds.update({e.name: str(o) for e, o in zip(chunk, outs)})
    return preds


def check_budgets(base: BaseModelSpec, entries: Sequence[Entry], model: Any = None) -> None:
    """Refuse, before any model loads, budgets the family's SweepSupport does not sweep.

    The support comes from the wrapper class (``model``'s when one is given); a family with no
    support at all is left to the usual :class:`.protocol.SweepUnsupportedError` at load."""
    wanted = [(e.name, e.tokens.stage) for e in entries if e.tokens is not None]
    if not wanted:
        return
    from .protocol import SweepUnsupportedError

    try:
        cls = type(model) if model is not None else base.load_wrapper_class()
        support = support_for_class(cls)
    except (ImportError, SweepUnsupportedError):  # loading the model reports these with its own guidance
        return
    check_token_stages(support, base.family, wanted)


# --- cross-sample decode batches (--decode-batch-tokens): fuse now, decode once a batch is full --------
def fuse_sample(base: BaseModelSpec, support: Any, model: Any, dataset: Any, ds_name: str, line: Any,
                todo: Sequence[Entry], mask_mode: str, decode_batch: int,
                rep: DatasetReport) -> list[tuple[list[Entry], "DecodeRequest | list[str]"]]:
    """As :func:`answer_sample`, stopping before decoding: one (entries, ``support.fuse`` request) per
    chunk of at most ``decode_batch`` subsets, for :class:`DeferredDecode` to decode later.

    Answered at once instead (entries, answers): token-budget rows (:func:`answer_budgets`, batch 1
    by design) and chunks whose ``fuse`` refuses with a ``ValueError`` -- a family's way of saying
    the shared-prefix decoder cannot reproduce this wrapper (sampling, beams, ``drop``-mode rows of
    different lengths); ``fuse_and_generate`` then decodes them as the wrapper would."""
    inputs, feats = sample_features(base, support, model, dataset, ds_name, line, todo, rep)
    parts: list[tuple[list[Entry], Any]] = []
    plain = [e for e in todo if e.tokens is None]
    for chunk in _chunks(plain, decode_batch):
        per_subset = [{x: (feats[x] if x in e.kept else None) for x in base.encoders} for e in chunk]
        rep.decode_calls += 1
        try:
            req = support.fuse(model, inputs, per_subset, mask_mode)
        except ValueError as exc:
            log.debug("%s.fuse refused (%s); decoding with fuse_and_generate", type(support).__name__, exc)
            outs = support.fuse_and_generate(model, inputs, per_subset, mask_mode)
            if len(outs) != len(chunk):
                raise SweepError(f"{type(support).__name__}.fuse_and_generate returned {len(outs)} "
                                 f"answers for {len(chunk)} subsets")
            parts.append((list(chunk), [str(o) for o in outs]))
            continue
        if not isinstance(req, DecodeRequest) or req.rows != len(chunk):
            got = f"{req.rows} rows" if isinstance(req, DecodeRequest) else type(req).__name__
            raise SweepError(f"{type(support).__name__}.fuse returned {got} for {len(chunk)} subsets "
                             "(needs a DecodeRequest with one row per subset)")
        parts.append((list(chunk), req))
    budgets = [e for e in todo if e.tokens is not None]
    if budgets:
        preds = answer_budgets(base, support, model, inputs, feats, budgets, mask_mode, decode_batch, rep)
        parts.append((budgets, [preds[e.name] for e in budgets]))
    return parts


@dataclass
class DeferredDecode:
    """Samples fused but not decoded yet, until their rows fill a decode batch of ``batch_tokens``
    prompt positions (:func:`.decoding.padded_tokens`); then one :func:`.decoding.decode` call
    answers them all and the engine checkpoints them one by one, in order.

    Why here and not in the family: the engine knows which samples come next; a family sees
    one sample at a time.  Kill safety is unchanged in kind: a sample is checkpointed whole
    after its batch is decoded, so a kill loses the samples not yet decoded (at most one
    batch's worth) and never writes part of one."""

    batch_tokens: int
    pending: list[tuple[Any, list[tuple[list[Entry], DecodeRequest]]]] = field(default_factory=list)

    @classmethod
    def for_support(cls, support: Any, batch_tokens: int) -> "DeferredDecode | None":
        """A batcher when ``batch_tokens`` > 0 and the family's support has ``fuse``; else None
        (the sample-by-sample path: ``fuse_and_generate``)."""
        if batch_tokens and callable(getattr(support, "fuse", None)):
            return cls(int(batch_tokens))
        return None

    def _requests(self) -> list[DecodeRequest]:
        return [req for _, parts in self.pending for _, req in parts if isinstance(req, DecodeRequest)]

    def add(self, idx: Any, parts: list[tuple[list[Entry], Any]]) -> list[tuple[Any, dict[str, str]]]:
        """Queue one sample; returns the samples answered now (index, preds), in queue order."""
        done = []
        new = [req for _, req in parts if isinstance(req, DecodeRequest)]
        if self.pending and padded_tokens(self._requests() + new) > self.batch_tokens:
            done = self.flush()
        self.pending.append((idx, parts))
        if padded_tokens(self._requests()) >= self.batch_tokens:
            done += self.flush()
        return done

    def flush(self) -> list[tuple[Any, dict[str, str]]]:
        """Decode every queued sample; (index, {variant: answer}) per sample, in queue order."""
        if not self.pending:
            return []
        answers = iter(decode(self._requests(), batch_tokens=self.batch_tokens))
        done = []
        for idx, parts in self.pending:
            preds: dict[str, str] = {}
            for chunk, req in parts:
                outs = next(answers) if isinstance(req, DecodeRequest) else req  # else: answered at once
                preds.update({e.name: str(o) for e, o in zip(chunk, outs)})
            done.append((idx, preds))
        self.pending = []
        return done


def _write_if_complete(base, entries, pending, dataset, ds_name, indices, rep, work_dir, ck_path, model, mask_mode,
                       layout, run_id, split):
    """Write every pending variant's prediction file from the union of the checkpoints, then delete them.

    ``jobs`` parts (independent cluster jobs, under the merge lock) write only once the union holds
    every sample, taking the output locks to write; any other writer must find it complete."""
    if split.mode == "jobs":  # another part may have written some or all of them meanwhile
        pending = [e for e in pending if not ((f := predfiles.find_pred_file(work_dir, e.name, ds_name, layout))
                                              and predfiles.is_complete(f, indices))]
    done = parallel.read_all(ck_path.parent, base.name, ds_name)
    missing = [i for i in indices if any(e.name not in done.get(str(i), {}) for e in pending)]
    if missing:
        if split.mode == "jobs":
            return  # another part still computes; the last one to finish writes
        raise SweepError(f"{ds_name}: after every part finished, {len(missing)} samples have no answer in "
                         f"{ck_path.parent} (e.g. index {missing[0]}); run the sweep again to compute them")
    if split.mode == "jobs":
        outs = [output_lock(work_dir, e.name, ds_name) for e in pending]
        scope = parallel.hold_all(split, outs, what=f"{base.name} x {ds_name} in {work_dir}")
    else:
        scope = contextlib.nullcontext()
    with scope:
        for e in pending:
            preds = {i: done[str(i)][e.name] for i in indices}
            path = predfiles.target_pred_file(work_dir, e.name, ds_name, run_id)
            frame = predfiles.prediction_frame(dataset, preds)
            predfiles.write_atomically(frame, path)
            provenance.write(path, provenance.record(
                path, writer="encred sweep", model=model, entry_name=e.name,
                fp=provenance.fingerprint(frame["index"], frame["prediction"]),
                extra={"dataset": ds_name, "samples": len(indices), "masked": list(e.masked), "mode": mask_mode,
                       **({"tokens": e.tokens.as_kwargs()} if e.tokens is not None else {}),
                       "loaded_as": base.entry_name(load_mask(entries)),
                       "processes": split.parts if split.parts > 1 else 1}))
            predfiles.link_up(path)
            rep.written.append(path)
    parallel.remove_free_checkpoints(ck_path.parent, base.name, ds_name, own=ck_path,
                                     written=[e.name for e in entries], wait_s=10.0 if split.mode == "jobs" else 0.0)


def load_model(base: BaseModelSpec, entries: Sequence[Entry]) -> Any:
    """The wrapper VLMEvalKit would build for the entry masking :func:`load_mask`'s encoders."""
    from vlmeval.config import supported_VLM

    name = base.entry_name(load_mask(entries))
    if name not in supported_VLM:
        raise SweepError(f"{name!r} is not in vlmeval.config.supported_VLM: the vlmeval-encred hook did not "
                         "register it (is VLMEVAL_ENCRED_DISABLE set, or did the family fail to import?)")
    # as VLMEvalKit's infer_data: transformers >= 4.50 would turn WORLD_SIZE into tensor parallelism
    ws = os.environ.pop("WORLD_SIZE", None)
    try:
        return supported_VLM[name]()
    finally:
        if ws is not None:
            os.environ["WORLD_SIZE"] = ws
