"""``encred status``: what is evaluated, predicted, partial, running, pending or failed,
per (variant, dataset) -- and per limit, for runs limited to the first N samples
(kept in ``<work_dir>/encred_limit<N>/``).

Sources, in order of authority: the prediction files on disk, flat or in
run folders, whoever wrote them (a sweep, a per-variant run, or VLMEvalKit by
hand): ``evaluated`` when VLMEvalKit's evaluation outputs (or its status.json
metrics) are newer than the prediction, ``predicted`` when complete but not
evaluated, ``partial`` when samples are missing or answers failed; a sweep's
checkpoint (partial progress); the cell state files that :mod:`.cluster` jobs
write; and for SLURM jobs submitit's own state query.
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


FAIL_TEXT = "Failed to obtain answer"
"""What VLMEvalKit writes as the prediction of a sample that failed (its ``FAIL_MSG``/``INFER_FAIL_MSG``
start so); ``run.py`` infers such samples again, so a file holding one is not complete."""


def _read_predictions(path: str):
    import pandas as pd

    ext = os.path.splitext(path)[1]
    if ext == ".xlsx":
        return pd.read_excel(path)
    if ext == ".tsv":
        return pd.read_csv(path, sep="\t")
    if ext == ".json":
        return pd.read_json(path)
    raise ValueError(f"unknown prediction format {ext}")


def _expected_samples(path: str, dataset: str, limit: int | None) -> int | None:
    """How many samples the dataset (or its first ``limit``) has, when it can be told cheaply:
    the provenance sidecar of a sweep's file, else ``$LMUData/<dataset>.tsv``; None otherwise."""
    import json

    from .. import provenance

    try:
        n = json.loads(provenance.sidecar_path(path).read_text()).get("samples")
        if isinstance(n, int):
            return n
    except (OSError, ValueError):
        pass
    tsv = Path(os.environ.get("LMUData") or Path.home() / "LMUData") / f"{dataset}.tsv"
    if not tsv.is_file():
        return None
    try:
        import pandas as pd

        n = len(pd.read_csv(tsv, sep="\t", usecols=["index"]))
    except Exception:
        return None
    return min(n, limit) if limit else n


def _evaluated(path: str, variant: str, dataset: str) -> bool:
    """VLMEvalKit evaluated this prediction: an evaluation output of it (``_acc``, ``_score``...) or
    metrics in the run's ``status.json``, written no earlier than the prediction itself (an older
    evaluation belongs to an earlier prediction)."""
    import json

    folder = os.path.dirname(path)
    t = os.path.getmtime(path)
    prefix = f"{variant}_{dataset}"
    try:
        names = os.listdir(folder)
    except OSError:
        return False
    for n in names:
        stem = os.path.splitext(n)[0]
        if stem.startswith(prefix) and stem[len(prefix):].startswith(tuple(x for x in _EVAL_SUFFIXES
                                                                            if x not in ("_tmp", "_PREV"))):
            if os.path.getmtime(os.path.join(folder, n)) >= t:
                return True
    st = os.path.join(folder, "status.json")
    try:
        rec = json.loads(Path(st).read_text())
        metrics = rec.get("datasets", {}).get(dataset, {}).get("metrics")
        return bool(metrics) and os.path.getmtime(st) >= t
    except (OSError, ValueError, AttributeError):
        return False


def prediction_state(path: str, variant: str, dataset: str, limit: int | None = None) -> dict[str, Any]:
    """``evaluated`` / ``predicted`` / ``partial`` for one prediction file, with the counts behind it.

    ``partial``: fewer rows than the dataset has (when that is known, see
    :func:`_expected_samples`) or answers VLMEvalKit marks as failed -- ``run.py`` would infer
    those samples again; ``predicted``: complete, not (or not since) evaluated."""
    info: dict[str, Any] = dict(file=path)
    try:
        frame = _read_predictions(path)
        preds = [str(x) for x in frame["prediction"]]
    except Exception as exc:
        return dict(info, state="partial", error=f"unreadable prediction file: {type(exc).__name__}: {exc}")
    expected = _expected_samples(path, dataset, limit)
    failed = sum(FAIL_TEXT in x for x in preds)
    info.update(rows=len(preds), expected=expected, failed_answers=failed)
    if failed or (expected is not None and len(preds) < expected):
        info["state"] = "partial"
    else:
        info["state"] = "evaluated" if _evaluated(path, variant, dataset) else "predicted"
    return info


def _roots(work_dir: str) -> list[tuple[Path, int | None]]:
    """The work dir and its limited runs' work dirs (``encred_limit<N>/``)."""
    from .predfiles import limit_of

    wd = Path(work_dir)
    out: list[tuple[Path, int | None]] = [(wd, None)]
    if wd.is_dir():
        for d in sorted(wd.iterdir()):
            n = limit_of(d.name)
            if n is not None and d.is_dir():
                out.append((d, n))
    return out


def _prediction_files(root: Path, variant: str) -> dict[str, str]:
    """dataset -> the prediction file ``run.py`` would take (newest run folder first, then flat)."""
    from .predfiles import run_dirs

    d = root / variant
    found: dict[str, str] = {}
    if not d.is_dir():
        return found
    for dd in [*map(Path, run_dirs(str(root), variant)), d]:
        for f in sorted(dd.iterdir()):
            stem, ext = os.path.splitext(f.name)
            if ext not in (".xlsx", ".tsv", ".json") or not stem.startswith(variant + "_") or not f.is_file():
                continue
            ds = stem[len(variant) + 1:]
            if f.name.startswith(".") or ds.endswith(_EVAL_SUFFIXES) or "_checkpoint" in ds:
                continue  # our temporary files, and VLMEvalKit's evaluation outputs
            found.setdefault(ds, str(f))
    return found


def _budget_variants(root: Path, base: str) -> set[str]:
    """Token-budget variants of ``base`` with a folder under ``root``: any keep a sweep or run.py wrote
    (``_keep10`` too, which the registry enumerates only on first use, so it cannot be listed up front)."""
    from ..registry import RegistryError, parse_entry_name
    from ..tokens import KEEP_SEP

    out: set[str] = set()
    for d in (root.iterdir() if root.is_dir() else []):
        if d.is_dir() and d.name.startswith(base + "_") and KEEP_SEP in d.name:
            try:
                e = parse_entry_name(d.name)
            except RegistryError:
                continue
            if e.base.name == base and e.tokens is not None:
                out.add(d.name)
    return out


def collect(work_dir: str, base: str) -> list[dict[str, Any]]:
    """One row per (variant, dataset, limit) known from prediction files, checkpoints or job records.

    States: ``evaluated`` (prediction complete and evaluated by VLMEvalKit), ``predicted``
    (complete, not evaluated), ``partial`` (a checkpoint, or a prediction file missing samples
    or holding failed answers), ``running``, ``pending``, ``failed``."""
    import json

    from ..registry import entries
    from .checkpoint import parse_checkpoint_name

    rows: dict[tuple[str, str, int | None], dict[str, Any]] = {}
    names = {e.name for e in entries(base=base)}

    def row(v: str, ds: str, limit: int | None, **kw: Any) -> dict[str, Any]:
        r = rows.setdefault((v, ds, limit), dict(variant=v, dataset=ds, limit=limit, state="", via="", job="",
                                                 error=""))
        r.update(kw)
        return r

    # job records
    jd = jobs_dir(work_dir, base)
    recs = [r for r in map(read_state, sorted(jd.glob("*.json")) if jd.is_dir() else []) if r.get("cell")]
    # several cells can cover one (variant, dataset) -- the parts of a --shard-by samples sweep: the
    # row shows the most telling of their states (a part still running outranks one already done)
    rank = {"failed": 4, "running": 3, "pending": 2, "submitted": 1}
    for rec, state in zip(recs, record_states(recs)):
        c = rec["cell"]
        for v in c["variants"]:
            old = rows.get((v, c["dataset"], rec.get("limit") or None))
            if old is not None and rank.get(old["state"], 0) > rank.get(state, 0):
                continue
            row(v, c["dataset"], rec.get("limit") or None, state=state, via=c["kind"], job=rec.get("job_id", ""),
                error=rec.get("error", ""))
    for root, limit in _roots(work_dir):
        # sweep checkpoints: partial progress of a sweep that is not (or no longer) a job
        ck_dir = root / base / "encred_sweep"
        for f in sorted(ck_dir.glob(f"{base}_*.jsonl")) if ck_dir.is_dir() else []:
            parsed = parse_checkpoint_name(base, f.name)
            if parsed is None:
                continue
            counts: dict[str, int] = {}
            for line in open(f, encoding="utf-8"):
                try:
                    for v in json.loads(line)["preds"]:
                        counts[v] = counts.get(v, 0) + 1
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line
            for v, n in counts.items():
                r = row(v, parsed[0], limit)
                if r["state"] in ("", "done"):
                    r["state"] = "partial"
                r.setdefault("via", "sweep")
                r["checkpointed_samples"] = r.get("checkpointed_samples", 0) + n
        # prediction files decide, unless a job is still at work on them
        for v in sorted(names | _budget_variants(root, base)):
            for ds, path in _prediction_files(root, v).items():
                info = prediction_state(path, v, ds, limit)
                r = row(v, ds, limit)
                if r["state"] in ("running", "pending") and info["state"] == "partial":
                    continue
                r.update(state=info["state"], file=path, rows=info.get("rows"), expected=info.get("expected"),
                         failed_answers=info.get("failed_answers", 0), error=info.get("error", ""))
    for r in rows.values():
        if r["state"] == "done":  # the job said it finished, yet no prediction file is there
            r.update(state="failed", error="job finished but its prediction file is missing (deleted or moved?)")
    return sorted(rows.values(), key=lambda r: (r["dataset"], r["limit"] or 0, r["variant"]))


def render(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "nothing found"
    w = max(len(r["variant"]) for r in rows)
    lines = [f"{'variant':<{w}}  {'dataset':<24} {'state':<9} {'via':<8} details"]
    for r in rows:
        extra = [r.get("error") or r.get("job") or ""]
        if r.get("limit"):
            extra.insert(0, f"limit {r['limit']} (encred_limit{r['limit']}/)")
        if r["state"] == "partial":
            if r.get("rows") is not None:
                extra.insert(0, f"{r['rows']} of {r.get('expected') or '?'} samples predicted"
                                + (f", {r['failed_answers']} failed answers" if r.get("failed_answers") else ""))
            elif r.get("checkpointed_samples"):
                extra.insert(0, f"{r['checkpointed_samples']} samples checkpointed")
        elif r["state"] == "predicted":
            extra.insert(0, "not evaluated yet")
        line = f"{r['variant']:<{w}}  {r['dataset']:<24} {r['state']:<9} {r.get('via', ''):<8} "
        lines.append((line + "; ".join(x for x in extra if x)).rstrip())
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    lines.append(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    return "\n".join(lines)
