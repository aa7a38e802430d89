"""Job arrays through submitit's local executor (same job objects SLURM would run, as local
processes) and `encred status` reading what they left on disk.  SLURM itself cannot exist here:
its state query is the only part not exercised."""

from __future__ import annotations

import json
import os

from conftest import write_mcq_tsv


def test_local_array_then_status_shows_done_and_failed(tmp_path, monkeypatch):
    from vlmeval_encred.registry import entries
    from vlmeval_encred.sweep import cluster
    from vlmeval_encred.sweep.status import collect, render

    lmu = tmp_path / "LMU"
    lmu.mkdir()
    write_mcq_tsv(lmu / "EncredClusterOK.tsv", n=2)  # EncredClusterMissing.tsv does not exist: that job fails
    monkeypatch.setenv("LMUData", str(lmu))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    work = str(tmp_path / "out")
    variants = [e.name for e in entries(base="deepseek_vl_tiny_random")]
    cells = cluster.plan_cells("deepseek_vl_tiny_random", variants, ["EncredClusterOK", "EncredClusterMissing"],
                               "sweep")
    assert len(cells) == 2 and all(len(c.variants) == 4 for c in cells)
    ex = cluster.make_executor(work, "local", gpus=0, timeout_min=10)
    jobs = cluster.launch(cells, work, ex)
    assert len(jobs) == 2
    outcomes = []
    for j in jobs:
        try:
            j.result()
            outcomes.append("ok")
        except Exception:
            outcomes.append("error")
    assert sorted(outcomes) == ["error", "ok"]

    rows = {(r["variant"], r["dataset"]): r for r in collect(work, "deepseek_vl_tiny_random")}
    assert all(rows[(v, "EncredClusterOK")]["state"] == "predicted" for v in variants)  # sweep cells predict; evaluation is separate
    failed = rows[(variants[0], "EncredClusterMissing")]
    assert failed["state"] == "failed" and "EncredClusterMissing" in failed["error"]
    assert "predicted: 4" in render(list(rows.values())) and "failed: 4" in render(list(rows.values()))

    # resume: the done cell is skipped, only the failed one would be submitted again
    class NoSubmit:
        def batch(self):
            import contextlib
            return contextlib.nullcontext()

        def submit(self, job):
            submitted.append(job.cell)
            raise RuntimeError("stop")

    submitted: list = []
    try:
        cluster.launch(cells, work, NoSubmit())
    except RuntimeError:
        pass
    assert [c.dataset for c in submitted] == ["EncredClusterMissing"]


def test_running_job_whose_process_vanished_is_failed(tmp_path):
    from vlmeval_encred.sweep import cluster
    from vlmeval_encred.sweep.status import cell_state

    cell = cluster.Cell("variant", "deepseek_vl_tiny_random", "X", ("deepseek_vl_tiny_random_mask_sam",))
    import socket
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    cluster.write_state(str(tmp_path), cell, "running", host=socket.gethostname(), pid=dead.pid)
    assert cell_state(str(tmp_path), cell)[0] == "failed"
    cluster.write_state(str(tmp_path), cell, "running", host=socket.gethostname(), pid=os.getpid())
    assert cell_state(str(tmp_path), cell)[0] == "running"
    rec = json.loads((cluster.jobs_dir(tmp_path, cell.base) / f"{cell.cell_id}.json").read_text())
    assert rec["cell"]["variants"] == ["deepseek_vl_tiny_random_mask_sam"]


def test_variant_cell_command_uses_torchrun_for_several_gpus():
    from vlmeval_encred.sweep.cluster import Cell, CellJob

    cell = Cell("variant", "eagle_x5", "MME", ("eagle_x5_mask_sam",))
    one = CellJob(cell, "outs", gpus=1, judge="exact_matching").command()
    assert one[1:5] == ["-m", "vlmeval", "--model", "eagle_x5_mask_sam"] and "--reuse" in one
    four = CellJob(cell, "outs", gpus=4).command()
    assert four[1:4] == ["-m", "torch.distributed.run", "--nproc-per-node=4"] and four[4:6] == ["-m", "vlmeval"]
