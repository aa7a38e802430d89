"""Sweeps and plain per-variant VLMEvalKit runs as submitit job arrays (SLURM, or local processes).

A *cell* is one job: ``sweep`` cells run :func:`.engine.run_sweep` for one
shard of the subset lattice on one dataset (subsets inside a shard share
encoder outputs); ``variant`` cells run VLMEvalKit itself for one variant and
one dataset -- the installed VLMEvalKit's own entry point (``python -m vlmeval``
for ms-vlmeval, ``python run.py`` in the checkout for an upstream checkout; see
:mod:`vlmeval_encred.flavour`) with one GPU, under ``torchrun --nproc-per-node N``
(VLMEvalKit's own data parallelism) with ``gpus > 1``.

Every cell writes its state to ``<work_dir>/encred_jobs/<base>/<cell id>.json``
(atomically): ``submitted`` (with submitit's job id and folder), ``running``
(with host and pid), ``done`` or ``failed`` (with the error).  ``launch``
skips cells whose prediction files are complete (every sample, no failed answer) or that
are still running,
so re-running the same command resumes a sweep; :mod:`.status` reads these
files, the prediction files and, on SLURM, submitit's view of the job.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence


@dataclass(frozen=True)
class Cell:
    """One job of an array."""

    kind: str  # "sweep" | "variant"
    base: str
    dataset: str
    variants: tuple[str, ...]
    shard: int = 0
    parts: int = 0
    """> 1: a sweep cell computing samples ``shard, shard+parts, ...`` of every variant (``--shard-by
    samples``); 0: ``shard`` numbers a lattice shard (``--shard-by subsets``)."""

    @property
    def cell_id(self) -> str:
        if self.kind == "sweep":
            who = f"part{self.shard}of{self.parts}" if self.parts > 1 else f"shard{self.shard}"
        else:
            who = self.variants[0]
        return f"{self.kind}__{who}__{self.dataset}"


def jobs_dir(work_dir: str | os.PathLike, base: str) -> Path:
    return Path(work_dir) / "encred_jobs" / base


def write_state(work_dir: str, cell: Cell, state: str, **extra: Any) -> None:
    """Atomic JSON state record of a cell (tmp file + os.replace)."""
    d = jobs_dir(work_dir, cell.base)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{cell.cell_id}.json"
    old = read_state(path)
    rec = {**old, **extra, "cell": asdict(cell), "state": state, "updated": time.time()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(rec, indent=1, default=str))
    os.replace(tmp, path)


def read_state(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


@dataclass
class CellJob:
    """The picklable callable submitit runs for one cell (in a fresh process or on a node)."""

    cell: Cell
    work_dir: str
    subsets: str = ""
    gpus: int = 1
    limit: int | None = None
    judge: str | None = None
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    vlmeval_root: str | None = None
    """A VLMEvalKit checkout to run (``--vlmeval-root``); default: the importable ``vlmeval``."""

    def __call__(self) -> str:
        os.environ.update(self.env)
        write_state(self.work_dir, self.cell, "running", host=socket.gethostname(), pid=os.getpid(),
                    limit=self.limit or None)
        try:
            if self.cell.kind == "sweep":
                self._sweep()
            else:
                self._variant()
        except BaseException as exc:
            write_state(self.work_dir, self.cell, "failed", error=f"{type(exc).__name__}: {exc}",
                        traceback=traceback.format_exc()[-4000:])
            raise
        write_state(self.work_dir, self.cell, "done")
        return self.cell.cell_id

    def _sweep(self) -> None:
        from ..registry import get_base, parse_entry_name
        from .engine import run_sweep

        from .parallel import Split

        base = get_base(self.cell.base)
        chosen = [parse_entry_name(v) for v in self.cell.variants]
        if self.cell.parts > 1:  # samples split across jobs; the last part to finish writes the files
            run_sweep(base, chosen, [self.cell.dataset], self.work_dir, limit=self.limit, progress=False,
                      split=Split(self.cell.shard, self.cell.parts, "jobs"))
            return
        # a checkpoint per shard: shards of one dataset run at once and must not share one
        run_sweep(base, chosen, [self.cell.dataset], self.work_dir, limit=self.limit, progress=False,
                  checkpoint_tag=f"shard{self.cell.shard}", split=Split())

    def command(self) -> list[str]:
        """The VLMEvalKit command line of a variant cell (run it in :meth:`cwd`)."""
        from ..flavour import detect
        from .predfiles import limited_work_dir

        # a limited run keeps its partial prediction out of the work dir (see predfiles.limited_work_dir)
        args = ["--model", self.cell.variants[0], "--data", self.cell.dataset, "--work-dir",
                limited_work_dir(os.path.abspath(self.work_dir), self.limit), "--reuse"]
        if self.judge:
            args += ["--judge", self.judge]
        if self.limit:
            args += ["--limit", str(self.limit)]  # refused by flavour.command where run.py lacks it
        args += list(self.extra_args)
        return detect(self.vlmeval_root).command(args, nproc=self.gpus)

    def _variant(self) -> None:
        from ..flavour import detect
        from . import predfiles

        from .locks import hold, output_lock

        fl = detect(self.vlmeval_root)
        cmd = self.command()
        wd = predfiles.limited_work_dir(self.work_dir, self.limit)
        with hold([output_lock(wd, self.cell.variants[0], self.cell.dataset)],
                  what=f"{self.cell.variants[0]} x {self.cell.dataset} in {wd}"):
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=fl.cwd)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")
        path = predfiles.find_pred_file(wd, self.cell.variants[0], self.cell.dataset, fl.layout)
        if path is None:  # run.py logs a bad model/dataset name and still exits 0
            raise RuntimeError(f"VLMEvalKit ({fl.label}) exited 0 but wrote no prediction for "
                               f"{self.cell.variants[0]} x {self.cell.dataset} under "
                               f"{predfiles.model_dir(wd, self.cell.variants[0])}; see its log: "
                               f"{proc.stdout[-1500:]}")


def plan_cells(base: str, variants: Sequence[str], datasets: Sequence[str], mode: str, shards: int = 1,
               shard_by: str = "subsets") -> list[Cell]:
    """Cells of a launch: per dataset, one per variant (``variant``), or ``shards`` sweep cells: lattice
    shards (``shard_by="subsets"``) or parts of the samples, every variant each (``"samples"``)."""
    if mode not in ("sweep", "variant"):
        raise ValueError(f"mode must be 'sweep' or 'variant', not {mode!r}")
    if shard_by not in ("samples", "subsets"):
        raise ValueError(f"shard_by must be 'samples' or 'subsets', not {shard_by!r}")
    cells = []
    for ds in datasets:
        if mode == "variant":
            cells += [Cell("variant", base, ds, (v,)) for v in variants]
        elif shard_by == "samples" and shards > 1:
            cells += [Cell("sweep", base, ds, tuple(variants), shard=s, parts=shards) for s in range(shards)]
        else:
            k = max(1, min(shards, len(variants)))
            for s in range(k):
                cells.append(Cell("sweep", base, ds, tuple(variants[s::k]), shard=s))
    return cells


def cell_complete(work_dir: str, cell: Cell, limit: int | None = None) -> bool:
    """Every variant of the cell has a *complete* prediction file (checked without building the
    dataset; see :func:`.status.prediction_state`): a file missing samples or holding failed
    answers does not make a relaunch skip the cell."""
    from . import predfiles
    from .status import prediction_state

    wd = predfiles.limited_work_dir(work_dir, limit)
    for v in cell.variants:
        path = predfiles.find_pred_file(wd, v, cell.dataset)
        if path is None or prediction_state(path, v, cell.dataset, limit)["state"] not in ("predicted", "evaluated"):
            return False
    return True


def make_executor(work_dir: str, cluster: str | None, gpus: int = 1, timeout_min: int = 600,
                  partition: str | None = None, array_parallelism: int = 64, cpus_per_task: int | None = None,
                  **extra: Any) -> Any:
    """A submitit executor: ``slurm``, ``local`` (local processes), ``debug`` (in-process) or None (auto)."""
    import submitit

    folder = Path(work_dir) / "encred_jobs" / "submitit" / "%j"
    ex = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    params: dict[str, Any] = dict(timeout_min=timeout_min, gpus_per_node=gpus, tasks_per_node=1, nodes=1)
    if cpus_per_task:
        params["cpus_per_task"] = cpus_per_task
    if ex.cluster == "slurm":
        params["slurm_array_parallelism"] = array_parallelism
        if partition:
            params["slurm_partition"] = partition
    params.update(extra)
    ex.update_parameters(**params)
    return ex


def launch(cells: Sequence[Cell], work_dir: str, executor: Any, **job_kw: Any) -> list[Any]:
    """Submit the cells not already complete or running, as one array; return submitit jobs."""
    from .status import cell_states

    todo = [c for c in cells if not cell_complete(work_dir, c, job_kw.get("limit"))]
    todo = [c for c, (state, _) in zip(todo, cell_states(work_dir, todo)) if state not in ("running", "pending")]
    if not todo:
        return []
    with executor.batch():
        jobs = [executor.submit(CellJob(c, str(work_dir), **job_kw)) for c in todo]
    for c, j in zip(todo, jobs):
        write_state(str(work_dir), c, "submitted", job_id=str(j.job_id), folder=str(j.paths.folder),
                    cluster=type(executor._executor).__name__ if hasattr(executor, "_executor") else "")
    return jobs
