"""Job arrays on SLURM, and `encred status` asking SLURM about them.

SLURM itself cannot exist here: the fake in tests/fake_slurm replaces only its client commands
``sbatch``, ``srun``, ``sacct`` and ``scancel`` (a single-node scheduler keeping its state in
``$FAKE_SLURM_DIR``).  Everything above them is the real code: submitit's SlurmExecutor and the
sbatch file it writes (job array, ``srun ... python -u -m submitit.core._submit``), the pickled
CellJob that submitit's job runner loads on the "node", submitit's sacct parsing (including
SLURM's folded ``<id>_[0-1%2]`` lines of pending array tasks) and the sacct query behind
``encred status``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import HANG_GUARD, write_mcq_tsv

FAKE_SLURM = Path(__file__).resolve().parent / "fake_slurm"
BASE = "deepseek_vl_tiny_random"


def _calls(slurm: Path, name: str) -> list[list[str]]:
    log = slurm / "calls.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [c[1:] for c in map(json.loads, lines) if c[0] == name]


def _tasks(slurm: Path) -> dict[str, str]:
    st = json.loads((slurm / "state.json").read_text())
    return {(f"{jid}_{t['index']}" if job["array"] else jid): t["state"]
            for jid, job in st["jobs"].items() for t in job["tasks"].values()}


def _wait_for(pred, timeout: float = 20.0):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError("timed out waiting")


@pytest.fixture()
def slurm(tmp_path, monkeypatch):
    """The fake SLURM first on PATH (with this interpreter's bin for its python3), its state dir, and
    the environment the jobs need -- sbatch's environment reaches them, as on SLURM by default."""
    import submitit
    from submitit.slurm.slurm import SlurmInfoWatcher

    d = tmp_path / "slurm"
    d.mkdir()
    lmu = tmp_path / "LMU"
    lmu.mkdir()
    write_mcq_tsv(lmu / "EncredClusterOK.tsv", n=2)  # EncredClusterMissing.tsv does not exist
    monkeypatch.setenv("PATH", os.pathsep.join([str(FAKE_SLURM), str(Path(sys.executable).parent),
                                                os.environ.get("PATH", "")]))
    monkeypatch.setenv("FAKE_SLURM_DIR", str(d))
    monkeypatch.setenv("LMUData", str(lmu))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # submitit's sacct cache is one class attribute shared by every SlurmJob of the process; each
    # fake cluster numbers its jobs from the same id, so each test gets a fresh cache
    monkeypatch.setattr(submitit.SlurmJob, "watcher", SlurmInfoWatcher(delay_s=600))
    yield d
    for name in ("hold", "hold_steps"):
        (d / name).unlink(missing_ok=True)
    if (d / "state.json").exists():
        alive = [j for j, s in _tasks(d).items() if s in ("PENDING", "RUNNING")]
        if alive:
            subprocess.run(["scancel", *alive], capture_output=True)


def test_slurm_array_pending_running_cancelled_done_failed(slurm, tmp_path):
    import submitit

    from vlmeval_encred.registry import entries
    from vlmeval_encred.sweep import cluster
    from vlmeval_encred.sweep.status import cell_state, collect, render

    work = str(tmp_path / "out")
    variants = [e.name for e in entries(base=BASE)]
    cells = cluster.plan_cells(BASE, variants, ["EncredClusterOK", "EncredClusterMissing"], "sweep")
    ex = cluster.make_executor(work, "slurm", gpus=0, timeout_min=10)
    assert type(ex._executor).__name__ == "SlurmExecutor"

    (slurm / "hold").touch()  # the scheduler starts nothing: every task stays PENDING
    jobs = cluster.launch(cells, work, ex)
    assert len(_calls(slurm, "sbatch")) == 1, "one array, not one sbatch per cell"
    array_id = jobs[0].job_id.split("_")[0]
    assert [j.job_id for j in jobs] == [f"{array_id}_0", f"{array_id}_1"]
    # submitit moves the array's sbatch file into the folder of the array's own id (%j -> <array id>)
    script = (Path(work) / "encred_jobs" / "submitit" / array_id / f"{array_id}_submission.sh").read_text()
    assert "#SBATCH --array=0-1%2" in script and "#SBATCH --gpus-per-node=0" in script
    assert "srun --unbuffered --output" in script and "-u -m submitit.core._submit" in script
    submitted = jobs[0].submission().function
    assert isinstance(submitted, cluster.CellJob) and submitted.cell == cells[0]

    # pending, as SLURM says (sacct prints the two pending tasks as one line: <id>_[0-1%2])
    assert [j.get_info(mode="force").get("State") for j in jobs] == ["PENDING", "PENDING"]
    assert [cell_state(work, c)[0] for c in cells] == ["pending", "pending"]
    assert any(["-j", array_id] == c[-2:] for c in _calls(slurm, "sacct"))
    n_sacct = len(_calls(slurm, "sacct"))
    assert {r["state"] for r in collect(work, BASE)} == {"pending"}
    assert cluster.launch(cells, work, ex) == [] and len(_calls(slurm, "sbatch")) == 1  # not submitted twice
    # one sacct call per status query / relaunch, however many cells (not one per cell)
    assert len(_calls(slurm, "sacct")) == n_sacct + 2

    # a held single job, cancelled with submitit's own `scancel <id>`, is failed with SLURM's state
    lone = cluster.plan_cells(BASE, variants[:1], ["EncredClusterCancel"], "sweep")
    [held] = cluster.launch(lone, work, ex)
    assert "_" not in held.job_id and cell_state(work, lone[0])[0] == "pending"
    held.cancel()
    state, rec = cell_state(work, lone[0])
    assert state == "failed" and "CANCELLED" in rec["error"], rec

    # started by SLURM but the job's process has not yet recorded "running" (srun held back):
    # running, and a second launch must not submit it again
    (slurm / "hold_steps").touch()
    (slurm / "hold").unlink()
    _wait_for(lambda: all(_tasks(slurm)[j.job_id] == "RUNNING" for j in jobs))
    assert [cell_state(work, c)[0] for c in cells] == ["running", "running"]
    assert cluster.launch(cells, work, ex) == [] and len(_calls(slurm, "sbatch")) == 2
    (slurm / "hold_steps").unlink()

    outcomes = []
    for j in jobs:
        try:
            j.result()
            outcomes.append("ok")
        except Exception as exc:
            outcomes.append(f"error: {exc}")
    assert outcomes[0] == "ok" and outcomes[1].startswith("error") and "EncredClusterMissing" in outcomes[1]
    # the result pickle exists before the job's processes have exited: SLURM may still say RUNNING
    _wait_for(lambda: all(_tasks(slurm)[j.job_id] in ("COMPLETED", "FAILED") for j in jobs))
    submitit.SlurmJob.watcher.clear()
    assert [j.get_info(mode="force")["State"] for j in jobs] == ["COMPLETED", "FAILED"]
    # submitit's job environment saw <array>_<task> from SLURM_ARRAY_JOB_ID / SLURM_ARRAY_TASK_ID
    assert f"Starting with JobEnvironment(job_id={array_id}_1," in jobs[1].stdout()

    rows = {(r["variant"], r["dataset"]): r for r in collect(work, BASE)}
    assert all(rows[(v, "EncredClusterOK")]["state"] == "predicted" for v in variants)  # sweep cells predict; evaluation is separate
    assert all(rows[(v, "EncredClusterOK")]["job"] == f"{array_id}_0" for v in variants)
    failed = rows[(variants[0], "EncredClusterMissing")]
    assert failed["state"] == "failed" and "EncredClusterMissing" in failed["error"]
    assert failed["job"] == f"{array_id}_1"
    assert "CANCELLED" in rows[(variants[0], "EncredClusterCancel")]["error"]
    text = render(list(rows.values()))
    assert "predicted: 4" in text and "failed: 5" in text


def _encred(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "encred"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "vlmeval_encred.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=HANG_GUARD)


def test_cli_sweep_cluster_slurm_then_status(slurm, tmp_path):
    work = str(tmp_path / "cli")
    (slurm / "hold").touch()
    p = _encred("sweep", "--cluster", "slurm", "--model", BASE, "--data", "EncredClusterOK", "--work-dir", work,
                "--gpus", "0", "--timeout-min", "5", "--limit", "1")
    assert p.returncode == 0, p.stderr
    assert "submitted 1 of 1 jobs" in p.stdout
    [sb] = _calls(slurm, "sbatch")
    assert "--array" not in Path(sb[0]).read_text()  # a single cell is a plain job
    [job_id] = _tasks(slurm)

    p = _encred("status", "--model", BASE, "--work-dir", work, "--json")
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert len(rows) == 4 and {(r["state"], r["job"]) for r in rows} == {("pending", job_id)}
    assert _calls(slurm, "sacct")[-1][-2:] == ["-j", job_id]

    subprocess.run(["scancel", job_id], check=True)
    p = _encred("status", "--model", BASE, "--work-dir", work)
    assert p.returncode == 1, p.stdout + p.stderr  # failed cells: exit status 1
    assert "failed: 4" in p.stdout and "SLURM state CANCELLED" in p.stdout


def test_running_record_from_another_node_is_checked_through_sacct(slurm, tmp_path):
    """On a real cluster the job records ``running`` with the compute node's host name, so the
    login node cannot check the pid and must ask SLURM.  The fake runs jobs here, so the record
    is rewritten as a node would have written it."""
    from vlmeval_encred.registry import entries
    from vlmeval_encred.sweep import cluster
    from vlmeval_encred.sweep.status import cell_state

    work = str(tmp_path / "node")
    [cell] = cluster.plan_cells(BASE, [e.name for e in entries(base=BASE)][:1], ["EncredClusterOK"], "sweep")
    (slurm / "hold").touch()
    [job] = cluster.launch([cell], work, cluster.make_executor(work, "slurm", gpus=0, timeout_min=5))
    cluster.write_state(work, cell, "running", host="gpu-node-042", pid=1)
    state, rec = cell_state(work, cell)
    assert state == "pending", rec  # SLURM has it back in the queue (as after a requeue), whatever the file says
    subprocess.run(["scancel", job.job_id], check=True)
    state, rec = cell_state(work, cell)
    assert state == "failed" and rec["error"].startswith("SLURM state CANCELLED"), rec
