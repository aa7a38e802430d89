"""``encred status``: what is done, running, pending or failed, per (variant, dataset).

Sources, in order of authority: the prediction files on disk, flat or in
run folders (complete =
done, whoever wrote them: a sweep, a per-variant run, or VLMEvalKit by
hand), a sweep's checkpoint (partial progress), the cell state files that
:mod:`.cluster` jobs write, and for SLURM jobs submitit's own state query.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Iterable, Sequence

from .cluster import Cell, jobs_dir, read_state


_EVAL_SUFFIXES = ("_result", "_results", "_score", "_acc", "_fine", "_metrics", "_tmp", "_PREV", "_rating")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _asks_slurm(rec: dict[str, Any]) -> bool:
    return (rec.get("state") in ("submitted", "running") and rec.get("cluster") == "SlurmExecutor"
            and bool(rec.get("job_id")))


def slurm_states(job_ids: Iterable[str]) -> dict[str, str]:
    """SLURM's state of each job id, from ONE ``sacct`` call (``UNKNOWN`` where it cannot say).

    Goes through submitit's shared watcher (its sacct command and parser), but registers
    every id first and updates once: building one ``SlurmJob`` per cell would force one
    sacct call per cell (submitit resets its cache timer on each registration), i.e. 480
    calls for a 32-variant x 15-benchmark per-variant launch.
    """
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    try:
        import submitit

        watcher = submitit.SlurmJob.watcher
        for j in ids:
            watcher.register_job(j)
        watcher.update()  # logs and skips a failing sacct: states stay UNKNOWN
        return {j: watcher.get_state(j, mode="cache") for j in ids}
    except Exception:  # submitit missing or its parser failed: the files decide
        return {j: "UNKNOWN" for j in ids}


def _resolve(rec: dict[str, Any], slurm: dict[str, str]) -> str:
    state = rec.get("state", "missing")
    if state == "running" and rec.get("host") == socket.gethostname() and rec.get("pid"):
        if not _pid_alive(int(rec["pid"])):
            state = "failed"  # killed without a chance to record it (OOM, SIGKILL, node loss)
            rec.setdefault("error", "process vanished while running")
    elif _asks_slurm(rec):
        s = slurm.get(str(rec["job_id"]), "UNKNOWN")
        if s in ("PENDING", "REQUEUED"):
            state = "pending"
        elif s.startswith(("FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_ME", "NODE_FAIL")):
            state, rec["error"] = "failed", f"SLURM state {s}"
        elif state == "submitted":  # started, but its process has not written "running" yet; or sacct unsure
            state = "running" if s in ("RUNNING", "COMPLETING") else "pending"
    elif state == "submitted":
        state = "pending"
    return state


def cell_states(work_dir: str, cells: Sequence[Cell]) -> list[tuple[str, dict[str, Any]]]:
    """(state, record) per cell from its state file, checked against the live job where possible
    (a local pid, or SLURM through one sacct call for all cells)."""
    recs = [read_state(jobs_dir(work_dir, c.base) / f"{c.cell_id}.json") for c in cells]
    return list(zip(record_states(recs), recs))


def record_states(recs: Sequence[dict[str, Any]]) -> list[str]:
    """The state of each already-read cell record (one sacct call for all SLURM ones);
    records may gain an ``error``."""
    slurm = slurm_states(str(r["job_id"]) for r in recs if _asks_slurm(r))
    return [_resolve(r, slurm) for r in recs]


def cell_state(work_dir: str, cell: Cell) -> tuple[str, dict[str, Any]]:
    """:func:`cell_states` of one cell."""
    return cell_states(work_dir, [cell])[0]


def collect(work_dir: str, base: str) -> list[dict[str, Any]]:
    """One row per (variant, dataset) known from prediction files, checkpoints or job records."""
    from ..registry import entries

    rows: dict[tuple[str, str], dict[str, Any]] = {}
    names = {e.name for e in entries(base=base)}
    wd = Path(work_dir)
    # job records
    jd = jobs_dir(work_dir, base)
    recs = [r for r in map(read_state, sorted(jd.glob("*.json")) if jd.is_dir() else []) if r.get("cell")]
    for rec, state in zip(recs, record_states(recs)):
        c = rec["cell"]
        for v in c["variants"]:
            rows[(v, c["dataset"])] = dict(variant=v, dataset=c["dataset"], state=state, via=c["kind"],
                                           job=rec.get("job_id", ""), error=rec.get("error", ""))
    # sweep checkpoints: partial progress of a sweep that is not (or no longer) a job
    ck_dir = wd / base / "encred_sweep"
    for f in sorted(ck_dir.glob(f"{base}_*.jsonl")) if ck_dir.is_dir() else []:
        ds = f.stem[len(base) + 1:]
        n = sum(1 for _ in open(f, encoding="utf-8"))
        for v in names:
            row = rows.setdefault((v, ds), dict(variant=v, dataset=ds, state="partial", via="sweep", job="",
                                                error=""))
            row["checkpointed_samples"] = n
    # prediction files: done wins
    from .predfiles import run_dirs

    for v in names:
        d = wd / v
        if not d.is_dir():
            continue
        # flat files (ms-vlmeval) and the run folders of an upstream checkout (T<date>-<time>/)
        for f in [p for dd in (d, *map(Path, run_dirs(str(wd), v))) for p in dd.iterdir() if p.is_file()]:
            stem, ext = os.path.splitext(f.name)
            if ext not in (".xlsx", ".tsv", ".json") or not stem.startswith(v + "_"):
                continue
            ds = stem[len(v) + 1:]
            if f.name.startswith(".") or ds.endswith(_EVAL_SUFFIXES):
                continue  # our temporary files, and VLMEvalKit's evaluation outputs
            row = rows.setdefault((v, ds), dict(variant=v, dataset=ds, via="", job="", error=""))
            row["state"], row["error"] = "done", ""
    return sorted(rows.values(), key=lambda r: (r["dataset"], r["variant"]))


def render(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "nothing found"
    w = max(len(r["variant"]) for r in rows)
    lines = [f"{'variant':<{w}}  {'dataset':<24} {'state':<9} {'via':<8} job/error"]
    for r in rows:
        extra = r.get("error") or r.get("job") or ""
        if r.get("checkpointed_samples") and r["state"] != "done":
            extra = f"{r['checkpointed_samples']} samples checkpointed {extra}".strip()
        lines.append(f"{r['variant']:<{w}}  {r['dataset']:<24} {r['state']:<9} {r.get('via', ''):<8} {extra}")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    lines.append(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    return "\n".join(lines)
