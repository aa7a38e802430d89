"""Sample-parallel sweeps: the samples of each dataset split across processes or jobs.

Three ways a sweep process can run, one :class:`Split` each:

* ``single`` -- one process computes every sample (``encred sweep``; a lattice shard of
  ``--cluster --shard-by subsets``);
* ``ranks`` -- one of ``torchrun --nproc-per-node N`` (or ``encred sweep --gpus N``, which
  starts torchrun itself): rank ``r`` of ``N`` computes dataset positions ``r, r+N, r+2N...``
  -- VLMEvalKit's own torchrun split (``infer_data``: ``range(rank, len(dataset),
  world_size)``) -- every needed encoder once per image and every pending subset of its
  samples, appending to a checkpoint of its own; then every rank meets at a
  ``all_gather_object`` of its counts (the barrier), rank 0 reads every rank's checkpoint
  and writes each variant's prediction file exactly as a one-process sweep would (rows in
  ``dataset.data`` order, so the same bytes whatever the split), a second barrier, and each
  rank deletes its checkpoint;
* ``jobs`` -- one of ``K`` independent cluster jobs (``--cluster --shard-by samples``):
  the same split and checkpoints, but no collective to wait on: whichever job finds, under a
  blocking per-(base, dataset) merge lock, that the checkpoints together hold every sample
  writes the files (the last one to finish).

Merging is per-rank files, not messages: each part's checkpoint is
``<base>_<dataset>@part<k>of<K>.jsonl`` (see :mod:`.checkpoint`), append-only and flushed
per sample, so a killed rank loses at most the sample in flight and a rerun -- with any
number of processes, or none -- reads every checkpoint of the (base, dataset) as already
done (:func:`read_all`), computes only what none holds, and duplicates nothing.

Locks (:mod:`.locks`; non-blocking, freed by the kernel when a holder dies): in ``ranks``
mode rank 0 holds its checkpoint's lock and every selected variant's output lock, every
other rank only its own checkpoint's lock, so no two ranks ever ask for the same lock; if
any rank cannot take its locks (another sweep is writing), every rank learns it through an
``all_gather_object`` and stops with that message instead of waiting at a barrier.  ``jobs``
hold their checkpoint lock while computing and take the output locks only to write.

Collectives: ``torch.distributed`` with gloo on the CPU, nccl when CUDA is there (the
process group is started here unless the caller -- VLMEvalKit's run.py -- already did);
only small Python objects travel, never tensors.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from .checkpoint import SweepCheckpoint, parse_checkpoint_name
from .locks import LockHeld, hold, locks_dir

MODES = ("single", "ranks", "jobs")


@dataclass(frozen=True)
class Split:
    """Which samples this process computes, and who writes the prediction files."""

    part: int = 0
    parts: int = 1
    mode: str = "single"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.mode!r}")
        if not 0 <= self.part < self.parts:
            raise ValueError(f"part {self.part} is not in 0..{self.parts - 1}")

    @property
    def tag(self) -> str:
        """Checkpoint tag of this part ('' for a single process)."""
        return f"part{self.part}of{self.parts}" if self.parts > 1 else ""

    def positions(self, n: int) -> range:
        """Row positions of a dataset of ``n`` rows this part computes: VLMEvalKit's
        ``range(rank, len(dataset), world_size)``."""
        return range(self.part, n, self.parts)

    @property
    def writes(self) -> bool:
        """Whether this process may write prediction files (always ``single`` and ``jobs``; rank 0)."""
        return self.mode != "ranks" or self.part == 0

    def lock_paths(self, ck_path: Path, outputs: Sequence[Path]) -> list[Path]:
        """Locks held while computing: output locks by the single process or rank 0 only."""
        own = [Path(ck_path).with_suffix(".lock")]
        return own + list(outputs) if self.mode == "single" or (self.mode == "ranks" and self.part == 0) else own


# --------------------------------------------------------------------------- torch.distributed
_STARTED_HERE = False


def world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def from_env() -> Split:
    """The :class:`Split` of this process: ``ranks`` under torchrun with several processes (the
    process group started if needed), else ``single``."""
    rank, size, _ = world()
    if size <= 1:
        return Split()
    init_distributed()
    return Split(rank, size, "ranks")


def init_distributed() -> None:
    """Start the default process group (gloo on CPU, nccl with CUDA) unless one is running,
    with VLMEvalKit's ``$DIST_TIMEOUT`` (default 3600 s) as its timeout."""
    global _STARTED_HERE
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    _, _, local = world()
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local)  # as VLMEvalKit's run.py does before building the model
        backend = "nccl"
    dist.init_process_group(backend=backend,
                            timeout=datetime.timedelta(seconds=int(os.environ.get("DIST_TIMEOUT", 3600))))
    _STARTED_HERE = True


def shutdown() -> None:
    """Destroy the process group if :func:`init_distributed` started it."""
    global _STARTED_HERE
    if _STARTED_HERE:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        _STARTED_HERE = False


def is_main() -> bool:
    """Rank 0, or not distributed: the process that prints and writes."""
    return world()[0] == 0


def all_gather(split: Split, obj: Any) -> list[Any]:
    """Every rank's ``obj`` (rank order) in ``ranks`` mode -- also a barrier; ``[obj]`` otherwise."""
    if split.mode != "ranks":
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * split.parts
    dist.all_gather_object(out, obj)
    return out


def barrier(split: Split) -> None:
    if split.mode == "ranks":
        all_gather(split, None)  # all_gather_object works on every backend without a device tensor here


@contextlib.contextmanager
def hold_all(split: Split, paths: Sequence[Path], what: str) -> Iterator[None]:
    """:func:`.locks.hold` of this process's locks; in ``ranks`` mode a lock one rank cannot take
    stops every rank (each raises :class:`LockHeld` with that rank's message) -- none waits at a
    barrier for a rank that has left."""
    if split.mode != "ranks":
        with hold(paths, what=what):
            yield
        return
    stack = contextlib.ExitStack()
    err = None
    try:
        stack.enter_context(hold(paths, what=what))
    except LockHeld as exc:
        err = str(exc)
    errors = [e for e in all_gather(split, err) if e]
    if errors:
        stack.close()
        raise LockHeld(errors[0])
    with stack:
        yield


# --------------------------------------------------------------------------- checkpoints of all parts
def checkpoints(ck_dir: Path, base: str, dataset: str) -> list[Path]:
    """Every checkpoint of (base, dataset) in ``ck_dir``: one process's, lattice shards', parts'."""
    if not ck_dir.is_dir():
        return []
    out = []
    for f in sorted(ck_dir.glob(f"{base}_*.jsonl")):
        parsed = parse_checkpoint_name(base, f.name)
        if parsed is not None and parsed[0] == dataset:
            out.append(f)
    return out


def read_checkpoint(path: Path) -> dict[str, dict[str, str]]:
    """A checkpoint's samples, read only (a torn last line -- a writer killed, or still writing -- is skipped)."""
    done: dict[str, dict[str, str]] = {}
    try:
        fh = open(path, encoding="utf-8")
    except FileNotFoundError:
        return done
    with fh:
        for line in fh:
            try:
                rec = json.loads(line)
                done.setdefault(str(rec["index"]), {}).update(dict(rec["preds"]))
            except (ValueError, KeyError, TypeError):
                continue
    return done


def read_all(ck_dir: Path, base: str, dataset: str, exclude: Path | None = None) -> dict[str, dict[str, str]]:
    """The union of every checkpoint of (base, dataset): index -> {variant: answer}."""
    done: dict[str, dict[str, str]] = {}
    for f in checkpoints(ck_dir, base, dataset):
        if exclude is not None and f == Path(exclude):
            continue
        for k, preds in read_checkpoint(f).items():
            done.setdefault(k, {}).update(preds)
    return done


class CheckpointView:
    """This process's :class:`.checkpoint.SweepCheckpoint` (appended to) over what every other
    checkpoint of the (base, dataset) held when it was opened (read only)."""

    def __init__(self, own: SweepCheckpoint, prior: dict[str, dict[str, str]]):
        self.own, self.prior = own, prior

    @classmethod
    def open(cls, ck_path: Path, base: str, dataset: str, sync_every: int = 10) -> "CheckpointView":
        own = SweepCheckpoint.open(ck_path, sync_every=sync_every)
        return cls(own, read_all(Path(ck_path).parent, base, dataset, exclude=ck_path))

    def get(self, index: object) -> dict[str, str]:
        key = str(index)
        return {**self.prior.get(key, {}), **self.own.get(key)}

    def add(self, index: object, preds: dict[str, str]) -> None:
        self.own.add(index, preds)

    def close(self) -> None:
        self.own.close()

    def remove(self) -> None:
        self.own.remove()


def remove_free_checkpoints(ck_dir: Path, base: str, dataset: str, own: Path | None = None,
                            written: Sequence[str] = (), wait_s: float = 0.0) -> list[Path]:
    """After the prediction files of the variants ``written`` (complete now) exist: delete ``own`` and
    every other checkpoint of (base, dataset) that holds answers of those variants only and that no
    live process holds (its lock can be taken, retried for up to ``wait_s`` seconds: a finished
    cluster part releases its lock moments after giving up the merge); returns the removed paths.
    A checkpoint a live process still appends to, or one with progress for other variants (a lattice
    shard's), is kept; a part that finds the files written removes its own."""
    import time

    removed = []
    keep_for = set(written)
    deadline = time.monotonic() + wait_s
    for f in checkpoints(Path(ck_dir), base, dataset):
        if own is not None and f == Path(own):
            f.unlink(missing_ok=True)
            removed.append(f)
            continue
        while True:
            try:
                with hold([f.with_suffix(".lock")], what=f.name):
                    variants = {v for preds in read_checkpoint(f).values() for v in preds}
                    if variants <= keep_for:
                        f.unlink(missing_ok=True)
                        removed.append(f)
                break
            except LockHeld:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.2)
    return removed


@contextlib.contextmanager
def merge_lock(work_dir: str, base: str, dataset: str) -> Iterator[None]:
    """A *blocking* per-(work dir, base, dataset) lock: ``jobs`` parts check-and-merge one at a time
    (a merge takes seconds; the next part then finds the files written)."""
    p = locks_dir(work_dir) / f"{base}__{dataset}__merge.lock"
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# --------------------------------------------------------------------------- launching
def torchrun_command(argv: Sequence[str], nproc: int) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node N -m vlmeval_encred.cli <argv>``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={int(nproc)}",
            "-m", "vlmeval_encred.cli", *argv]


def strip_option(argv: Sequence[str], option: str) -> list[str]:
    """``argv`` without ``option VALUE`` / ``option=VALUE``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == option:
            skip = True
            continue
        if a.startswith(option + "="):
            continue
        out.append(a)
    return out


def launch(argv: Sequence[str], nproc: int) -> int:
    """Run ``encred <argv>`` (without ``--gpus``) under torchrun with ``nproc`` processes; its exit status."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(nproc))))
    return subprocess.run(torchrun_command(strip_option(argv, "--gpus"), nproc), env=env).returncode


# --------------------------------------------------------------------------- cluster: samples or subsets
def shard_costs(base_name: str, encoders: Sequence[str], lattice: Sequence[Sequence[str]], datasets: Sequence[str],
                shards: int, gpu_name: str = "a100_80gb_bf16", tokens: Sequence[Any] | None = None
                ) -> dict[str, dict[str, float]]:
    """:func:`shard_costs_of` for a registered base and dataset names (A100 reference by default).
    Raises :class:`.costmodel.CostDataError` when the base or a dataset has no cost data."""
    from . import costmodel

    return shard_costs_of(costmodel.base_cost(base_name, list(encoders)), costmodel.gpu(gpu_name),
                          [costmodel.dataset(d) for d in datasets], lattice, shards, tokens)


def shard_costs_of(cost: Any, g: Any, dsets: Sequence[Any], lattice: Sequence[Sequence[str]],
                   shards: int, tokens: Sequence[Any] | None = None) -> dict[str, dict[str, float]]:
    """GPU-seconds of ``shards`` jobs per dataset split by samples (every job all subsets, towers once
    per image over the whole job) and by subsets (job ``s`` the subsets ``lattice[s::shards]``, as
    :func:`.cluster.plan_cells` splits them: a tower two jobs keep runs twice per image):
    ``{"samples": {"total_s", "wall_s"}, "subsets": {...}}`` -- ``wall_s``: the datasets one after
    another, each dataset's jobs at once on ``shards`` GPUs (its longest job).
    Model loading (once per job either way) is not counted.  ``tokens``: each subset's token
    budget (None = unpruned; :func:`.costmodel.sweep_sample`), split with it."""
    from . import costmodel

    lattice = [tuple(k) for k in lattice]
    tok = list(tokens) if tokens else [None] * len(lattice)
    k = max(1, min(int(shards), len(lattice)))
    n = max(1, int(shards))
    out = {"samples": {"total_s": 0.0, "wall_s": 0.0}, "subsets": {"total_s": 0.0, "wall_s": 0.0}}
    for ds in dsets:
        whole = ds.questions * costmodel.sweep_sample(cost, g, ds, lattice, tokens=tok).total_seconds
        parts = [ds.questions * costmodel.sweep_sample(cost, g, ds, lattice[s::k], tokens=tok[s::k]).total_seconds
                 for s in range(k)]
        out["samples"]["total_s"] += whole
        out["samples"]["wall_s"] += whole / n
        out["subsets"]["total_s"] += sum(parts)
        out["subsets"]["wall_s"] += max(parts)
    return out


def pick_shard_by(costs: dict[str, dict[str, float]]) -> str:
    """The cheaper split in GPU time (ties: samples)."""
    return "samples" if costs["samples"]["total_s"] <= costs["subsets"]["total_s"] else "subsets"


def choose_shard_by(base_name: str, encoders: Sequence[str], lattice: Sequence[Sequence[str]],
                    datasets: Sequence[str], shards: int, tokens: Sequence[Any] | None = None) -> tuple[str, str]:
    """``--shard-by auto``: (``samples`` | ``subsets``, a one-line reason) -- the cheaper in GPU time by
    the cost model (ties: samples); ``samples`` when the base or a dataset has no cost data."""
    from .costmodel import CostDataError

    if shards <= 1:
        return "subsets", "one job per dataset: nothing to split"
    try:
        c = shard_costs(base_name, encoders, lattice, datasets, shards, tokens=tokens)
    except CostDataError as exc:
        return "samples", (f"no cost data to compare ({str(exc).split(';')[0]}); by samples every tower runs "
                           "once per image over the whole job")
    s, v = c["samples"]["total_s"], c["subsets"]["total_s"]
    pick = pick_shard_by(c)
    return pick, (f"cost model: by samples {s / 3600:.3g} GPU-h, by subsets {v / 3600:.3g} GPU-h "
                  f"({shards} jobs per dataset, A100 reference)")
