"""From a sweep to its evaluation: nothing lost, nothing silently wrong (issue 18).

* a limited sweep's partial predictions are kept where no full ``run.py`` takes them, and the
  command the sweep prints evaluates exactly what was predicted without building a model;
* the sweep prints the evaluation command of the VLMEvalKit in use, and that command
  evaluates (``--mode eval``: it can never infer);
* ``encred status`` tells evaluated / predicted / partial apart (and a stale evaluation from a
  fresh one, and a finished job whose file vanished);
* one writer per output: a second sweep of the same files stops at once naming the first;
  a killed holder blocks nothing;
* shards of one dataset keep their own checkpoints; a relaunch does not skip a cell whose
  prediction is partial.

Model: tests/standins/concat5.py (CPU, fp32), registered in this process; VLMEvalKit's run.py
runs in subprocesses through a driver whose model builder raises (TRIPWIRE), so any attempt to
infer fails the test.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import HANG_GUARD, ROOT, concat5_env, explain, run_py, vlmeval_env, write_mcq_tsv

DS = "EncredSweepEval_MCQ"
V1 = "concat5_standin_mask_convnext"
V2 = "concat5_standin_mask_sam"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with concat5_env(tmp_path_factory, DS) as e:
        yield e


DRIVER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from standins import concat5
    concat5.register()
    from vlmeval.config import supported_VLM
    def tripwire(**kw):
        raise SystemExit("TRIPWIRE: VLMEvalKit tried to build the model, i.e. to infer")
    for name in {names!r}:
        supported_VLM[name] = tripwire
    from vlmeval import run
    sys.argv = ["run.py"] + sys.argv[1:]
    run.main()
""")


def _printed_command(out: str) -> list[str]:
    lines = out.splitlines()
    i = next(k for k, x in enumerate(lines) if x.startswith("evaluate with "))
    return shlex.split(lines[i + 1].strip())


def _run_printed(argv: list[str], env, tmp_path: Path, names) -> subprocess.CompletedProcess:
    """The printed `python -m vlmeval ...` with the model builders replaced by a tripwire."""
    assert argv[:3] == [sys.executable, "-m", "vlmeval"], argv
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(tests=str(ROOT / "tests"), names=list(names)))
    return run_py([str(driver), *argv[3:]], cwd=tmp_path, env=vlmeval_env(env["lmu"]), timeout=HANG_GUARD)


def _rows(work, **key):
    from vlmeval_encred.sweep.status import collect

    return {(r["variant"], r["dataset"], r["limit"]): r for r in collect(str(work), "concat5_standin")}


def test_limited_sweep_is_out_of_reach_of_a_full_run_and_its_command_evaluates_only_that(env, tmp_path, capsys):
    """Case 1 + 3: `encred sweep --limit 2` leaves <work>/<variant>/ empty (a full run.py --reuse
    would have inferred the 2 missing samples from a partial file there), writes into
    <work>/encred_limit2/, prints a command that evaluates those 2 samples without building the
    model; status shows them as evaluated, limit 2."""
    from vlmeval_encred.cli import main
    from vlmeval_encred.sweep import predfiles

    work = tmp_path / "out"
    rc = main(["sweep", "--model", "concat5_standin", "--data", DS, "--subsets", V1, "--work-dir", str(work),
               "--limit", "2", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert predfiles.find_pred_file(str(work), V1, DS) is None, "partial prediction where run.py takes full ones"
    limited = work / "encred_limit2" / V1 / f"{V1}_{DS}.xlsx"
    assert limited.is_file(), out
    argv = _printed_command(out)
    assert "--limit" in argv and argv[argv.index("--work-dir") + 1] == str(work / "encred_limit2"), argv
    rows = _rows(work)
    assert rows[(V1, DS, 2)]["state"] == "predicted" and (V1, DS, None) not in rows
    proc = _run_printed(argv, env, tmp_path, [V1])
    assert proc.returncode == 0 and "TRIPWIRE" not in proc.stdout + proc.stderr, explain(proc)
    assert (work / "encred_limit2" / V1 / f"{V1}_{DS}_acc.csv").exists(), explain(proc)
    assert _rows(work)[(V1, DS, 2)]["state"] == "evaluated"


def test_sweep_prints_eval_only_command_and_status_tells_predicted_from_evaluated(env, tmp_path, capsys):
    """Case 2 + 3: after a sweep status says `predicted` (not done); the printed command (with
    --mode eval: it never infers) evaluates both variants; then `evaluated`.  New case: a
    prediction rewritten after its evaluation is `predicted` again (the evaluation is stale)."""
    from vlmeval_encred.cli import main
    from vlmeval_encred.sweep.status import render

    work = tmp_path / "out"
    rc = main(["sweep", "--model", "concat5_standin", "--data", DS, "--subsets", f"{V1},{V2}", "--work-dir",
               str(work), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    argv = _printed_command(out)
    assert argv[argv.index("--mode") + 1] == "eval" and "--reuse" in argv and "--limit" not in argv, argv
    assert argv[argv.index("--model") + 1:argv.index("--data")] == [V1, V2]
    rows = _rows(work)
    assert {rows[(v, DS, None)]["state"] for v in (V1, V2)} == {"predicted"}
    assert "not evaluated yet" in render(list(rows.values()))
    proc = _run_printed(argv + ["--judge", "exact_matching"], env, tmp_path, [V1, V2])
    assert proc.returncode == 0 and "TRIPWIRE" not in proc.stdout + proc.stderr, explain(proc)
    rows = _rows(work)
    assert {rows[(v, DS, None)]["state"] for v in (V1, V2)} == {"evaluated"}, rows
    pred = work / V1 / f"{V1}_{DS}.xlsx"
    later = time.time() + 5
    os.utime(pred, (later, later))  # the prediction was rewritten after its evaluation
    assert _rows(work)[(V1, DS, None)]["state"] == "predicted"


def test_status_calls_missing_samples_and_failed_answers_partial(env, tmp_path):
    """Case 2: a prediction file with fewer rows than the dataset, or with an answer VLMEvalKit
    marks as failed (run.py would infer it again), is `partial`, never done."""
    import pandas as pd

    from vlmeval_encred.sweep import predfiles

    work = tmp_path / "out"
    tsv = pd.read_csv(env["lmu"] / f"{DS}.tsv", sep="\t").drop(columns=["image"])
    short = tsv.iloc[:3].assign(prediction="A")
    predfiles.write_atomically(short, str(work / V1 / f"{V1}_{DS}.xlsx"))
    failed = tsv.assign(prediction=["A", "B", "Failed to obtain answer via API.", "C"])
    predfiles.write_atomically(failed, str(work / V2 / f"{V2}_{DS}.xlsx"))
    rows = _rows(work)
    assert rows[(V1, DS, None)]["state"] == "partial" and rows[(V1, DS, None)]["rows"] == 3
    assert rows[(V2, DS, None)]["state"] == "partial" and rows[(V2, DS, None)]["failed_answers"] == 1


HOLDER = textwrap.dedent("""
    import fcntl, json, os, socket, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                             "command": "encred sweep (test holder)"}).encode())
    print("held", flush=True)
    time.sleep(600)
""")


def test_second_sweep_of_same_outputs_stops_naming_the_first_and_a_killed_holder_blocks_nothing(env, tmp_path,
                                                                                                capsys):
    """Case 4: while another process holds the lock of a variant's output (a running sweep), a
    sweep of it stops before computing anything, exit status non-zero, naming the holder's pid;
    after the holder is SIGKILLed (no chance to clean up), the same sweep runs."""
    from vlmeval_encred.cli import main
    from vlmeval_encred.sweep.engine import SweepError, run_sweep
    from vlmeval_encred.sweep.locks import output_lock
    from vlmeval_encred.sweep.selection import select_entries

    base = env["base"]
    work = tmp_path / "out"
    lock = output_lock(work, V2, DS)
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SweepError, match=f"pid {holder.pid}"):
            run_sweep(base, select_entries(base, f"{V1},{V2}"), [DS], str(work), progress=False)
        assert not (work / V1).exists()  # refused before computing anything
        with pytest.raises(SystemExit) as exc:
            main(["sweep", "--model", "concat5_standin", "--data", DS, "--subsets", V2, "--work-dir", str(work),
                  "--no-progress"])
        assert exc.value.code not in (0, None) and f"pid {holder.pid}" in str(exc.value.code)
        assert not (work / V1).exists() and not (work / V2).exists()  # nothing computed
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    rep = run_sweep(base, select_entries(base, f"{V1},{V2}"), [DS], str(work), progress=False).datasets[0]
    assert rep.computed_samples == 4 and len(rep.written) == 2


def test_second_sweep_sharing_a_checkpoint_is_refused(env, tmp_path):
    """Case 4: two sweeps of disjoint subsets of one base and dataset would append to (and the
    first to finish delete) one checkpoint: the checkpoint's lock refuses the second."""
    from vlmeval_encred.sweep.checkpoint import checkpoint_path
    from vlmeval_encred.sweep.engine import SweepError, run_sweep
    from vlmeval_encred.sweep.locks import hold
    from vlmeval_encred.sweep.selection import select_entries

    base = env["base"]
    work = tmp_path / "out"
    ck = checkpoint_path(work, base.name, DS)
    with hold([ck.with_suffix(".lock")]):  # this process stands for the other sweep
        # flock locks are per open file: a second open in the same process is refused as well
        with pytest.raises(SweepError, match="being written by another process"):
            run_sweep(base, select_entries(base, V1), [DS], str(work), progress=False)


def test_shards_of_one_dataset_keep_their_own_checkpoints(env, tmp_path, monkeypatch):
    """New case: two sweep shards of one dataset (cluster cells running at once) shared one
    checkpoint, so the shard that finished first deleted the other's progress; a killed shard
    then recomputed everything.  Now each shard resumes from its own checkpoint."""
    from vlmeval_encred.sweep import cluster, engine

    work = str(tmp_path / "out")
    real = engine.run_sweep
    computed: list[int] = []

    def run_sweep(*a, **kw):
        if kill[0]:
            def die(_ds, idx):
                if str(idx) == "0":
                    raise KeyboardInterrupt
            kw["on_sample"] = die
        rep = real(*a, **kw)
        computed.append(rep.datasets[0].computed_samples)
        return rep

    monkeypatch.setattr(engine, "run_sweep", run_sweep)
    kill = [True]
    shard1 = cluster.CellJob(cluster.Cell("sweep", "concat5_standin", DS, (V2,), shard=1), work)
    with pytest.raises(KeyboardInterrupt):
        shard1()  # killed after its first sample
    kill[0] = False
    cluster.CellJob(cluster.Cell("sweep", "concat5_standin", DS, (V1,), shard=0), work)()  # finishes meanwhile
    shard1()
    assert computed == [4, 3], computed  # shard 1 resumed: 3 samples left, not 4


def test_relaunch_does_not_skip_a_cell_whose_prediction_is_partial(env, tmp_path):
    """New case: a relaunch skipped every cell with a prediction *file*, so a file missing samples
    (or holding a failed answer) was never completed and counted as done."""
    import pandas as pd

    from vlmeval_encred.sweep import cluster, predfiles

    work = tmp_path / "out"
    cell = cluster.Cell("variant", "concat5_standin", DS, (V1,))
    tsv = pd.read_csv(env["lmu"] / f"{DS}.tsv", sep="\t").drop(columns=["image"])
    path = str(work / V1 / f"{V1}_{DS}.xlsx")
    predfiles.write_atomically(tsv.iloc[:2].assign(prediction="A"), path)
    assert not cluster.cell_complete(str(work), cell)
    predfiles.write_atomically(tsv.assign(prediction=["A", "Failed to obtain answer via API.", "B", "C"]), path)
    assert not cluster.cell_complete(str(work), cell)
    predfiles.write_atomically(tsv.assign(prediction="A"), path)
    assert cluster.cell_complete(str(work), cell)
    # a limited launch looks at the limited work dir only
    assert not cluster.cell_complete(str(work), cell, limit=2)


def test_status_flags_a_finished_job_whose_prediction_vanished(env, tmp_path):
    """New case: a cell record saying `done` with no prediction file on disk (deleted, moved, or a
    run that wrote elsewhere) was shown as done; now it is failed, with the reason."""
    from vlmeval_encred.sweep import cluster
    from vlmeval_encred.sweep.status import collect

    cell = cluster.Cell("variant", "concat5_standin", DS, (V1,))
    cluster.write_state(str(tmp_path), cell, "done")
    (row,) = collect(str(tmp_path), "concat5_standin")
    assert row["state"] == "failed" and "missing" in row["error"]
