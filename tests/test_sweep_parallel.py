"""Sample-parallel sweeps (vlmeval_encred/sweep/parallel.py): two ranks of torch.distributed (gloo, CPU)
write the same prediction-file bytes as one process; a rank killed with SIGKILL loses nothing and a
rerun computes no sample twice; cluster parts (``--shard-by samples``) merge when the last finishes;
a lock one rank cannot take stops every rank.

Model: the demo model ``encred_tiny`` (greedy, deterministic) on a few samples of a demo dataset.
The ranks are forked from this process, which has imported vlmeval once (a fresh interpreter per
rank would pay ~10 s of imports each); this process itself runs no model, so no thread pool is
forked half-used.  One test runs the real command, ``encred sweep --gpus 2`` (torchrun, fresh
interpreters).  PRED_FORMAT=tsv: an xlsx file carries its creation time, so two runs never give
the same xlsx bytes (the frames inside are compared by test_sweep.py).
"""

from __future__ import annotations

import importlib
import json
import multiprocessing
import os
import signal
import socket
import time
import traceback
from pathlib import Path

import pytest

from conftest import explain, run_py, vlmeval_env

DS = "EncredDemo_OCR"
SAMPLES = 8
HANG = 600  # a guard against a deadlock, not a speed limit


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    lmu = tmp_path_factory.mktemp("LMUData")
    from vlmeval_encred.demo import data

    data.write_datasets(lmu, samples_per_category=SAMPLES)
    from vlmeval_encred.realcode.envscope import scoped_env

    with scoped_env(LMUData=str(lmu), PRED_FORMAT="tsv", HF_HUB_OFFLINE="1"):
        importlib.import_module("vlmeval.config")  # imported once, before any fork

        from vlmeval_encred.registry import get_base
        from vlmeval_encred.sweep.selection import select_entries

        base = get_base("encred_tiny")
        ref = tmp_path_factory.mktemp("ref")
        codes = _ranks(1, _sweep_rank, dict(work=str(ref), out=str(ref / "report")))
        assert codes == [0], _errors(ref / "report")
        yield dict(lmu=lmu, ref=ref, base=base, variants=[e.name for e in select_entries(base, "all")])


# ------------------------------------------------------------------ forked ranks
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ranks(n: int, fn, kw: dict, timeout: float = HANG) -> list[int | None]:
    """Run ``fn(rank, n, **kw)`` in ``n`` forked processes with torchrun's environment; like torchrun,
    when one dies the others are terminated (SIGTERM).  Returns the exit codes (-9: SIGKILL)."""
    port = _free_port()
    ctx = multiprocessing.get_context("fork")
    procs = []
    for r in range(n):
        p = ctx.Process(target=_child, args=(fn, r, n, port, kw))
        p.start()
        procs.append(p)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.exitcode is None for p in procs):
        if any(p.exitcode not in (None, 0) for p in procs):
            for p in procs:
                if p.exitcode is None:
                    p.terminate()
        time.sleep(0.05)
    for p in procs:
        if p.exitcode is None:
            p.kill()
        p.join()
    return [p.exitcode for p in procs]


def _child(fn, rank: int, n: int, port: int, kw: dict) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(n), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    if n == 1:
        for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
            os.environ.pop(k)
    code = 0
    try:
        import torch

        torch.set_num_threads(1)
        fn(rank, n, **kw)
    except BaseException:
        Path(f"{kw['out']}.{rank}.err").write_text(traceback.format_exc())
        code = 1
    finally:
        from vlmeval_encred.sweep import parallel

        parallel.shutdown()
    os._exit(code)  # never run pytest's own exit handlers in a forked child


def _errors(out: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(out.parent.glob(out.name + ".*.err")))


def _sweep_rank(rank: int, n: int, work: str, out: str, kill_after: int = 0, split=None,
                decode_batch_tokens: int = 0) -> None:
    """One rank: the demo model's whole lattice on DS; records each sample it computes (the
    proof that none is computed twice) and its report; ``kill_after``: rank 1 SIGKILLs itself
    right after checkpointing that many samples."""
    from vlmeval_encred.registry import get_base
    from vlmeval_encred.sweep.engine import run_sweep
    from vlmeval_encred.sweep.selection import select_entries

    base = get_base("encred_tiny")
    seen = []

    def on_sample(_ds, idx):
        with open(f"{out}.computed", "a") as fh:
            fh.write(f"{idx}\n")
        seen.append(idx)
        if kill_after and rank == 1 and len(seen) == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    rep = run_sweep(base, select_entries(base, "all"), [DS], work, progress=False, on_sample=on_sample,
                    split=split, decode_batch_tokens=decode_batch_tokens)
    d = rep.datasets[0]
    Path(f"{out}.{rank}.json").write_text(json.dumps(dict(computed=d.computed_samples, written=len(d.written),
                                                          encoder_calls=d.encoder_calls)))


def _same_bytes(env, work: Path) -> list[str]:
    """Variants whose prediction file differs from the one-process sweep's (byte for byte)."""
    bad = []
    for v in env["variants"]:
        a, b = env["ref"] / v / f"{v}_{DS}.tsv", work / v / f"{v}_{DS}.tsv"
        if not b.is_file() or a.read_bytes() != b.read_bytes():
            bad.append(v)
    return bad


def _pred_files(work: Path) -> list[Path]:
    return sorted(work.glob(f"*/*_{DS}.tsv"))


def _checkpoint_lines(work: Path) -> dict[str, int]:
    d = work / "encred_tiny" / "encred_sweep"
    return {f.name: len(f.read_text().splitlines()) for f in d.glob("*.jsonl")} if d.is_dir() else {}


# ------------------------------------------------------------------ tests
def test_split_is_vlmevalkits_and_locks_never_overlap():
    """Positions: VLMEvalKit's infer_data split (``range(rank, len(dataset), world_size)``), a
    partition of the dataset; locks: rank 0 the outputs and its checkpoint, other ranks only theirs."""
    import inspect

    from vlmeval.inference import infer_data

    from vlmeval_encred.sweep.parallel import Split

    assert "range(rank, len(dataset), world_size)" in inspect.getsource(infer_data)
    for n in (0, 1, 7, 10):
        parts = [list(Split(r, 3, "ranks").positions(n)) for r in range(3)]
        assert parts == [list(range(r, n, 3)) for r in range(3)]
        assert sorted(p for part in parts for p in part) == list(range(n))
    ck, outs = Path("w/b/encred_sweep/b_D@part0of2.jsonl"), [Path("w/encred_locks/v__D.lock")]
    assert Split(0, 2, "ranks").lock_paths(ck, outs) == [ck.with_suffix(".lock"), *outs]
    assert Split(1, 2, "ranks").lock_paths(ck, outs) == [ck.with_suffix(".lock")]
    assert Split(1, 2, "jobs").lock_paths(ck, outs) == [ck.with_suffix(".lock")]
    assert Split(0, 2, "ranks").tag == "part0of2" and Split().tag == ""


def test_two_ranks_write_the_one_process_bytes_and_a_killed_rank_resumes(env, tmp_path):
    """Two gloo ranks: rank 1 SIGKILLs itself after 2 samples, rank 0 is terminated as torchrun
    would; no prediction file exists yet, the checkpoints keep what was finished; a rerun computes
    exactly the rest (each sample computed once over both runs), rank 0 writes files byte-identical
    to the one-process sweep's and every checkpoint is gone."""
    work, out = tmp_path / "w", tmp_path / "run"
    codes = _ranks(2, _sweep_rank, dict(work=str(work), out=str(out), kill_after=2))
    assert codes[1] == -signal.SIGKILL and codes[0] != 0, (codes, _errors(out))
    assert not _pred_files(work)  # nothing written by the killed run
    lines = _checkpoint_lines(work)
    assert lines.get(f"encred_tiny_{DS}@part1of2.jsonl") == 2, lines
    first = Path(f"{out}.computed").read_text().split()
    assert len(first) == sum(lines.values())  # every finished sample is in a checkpoint

    codes = _ranks(2, _sweep_rank, dict(work=str(work), out=str(out)))
    assert codes == [0, 0], _errors(out)
    computed = Path(f"{out}.computed").read_text().split()
    assert sorted(computed, key=int) == [str(i) for i in range(SAMPLES)]  # each once, over both runs
    rep0 = json.loads(Path(f"{out}.0.json").read_text())
    assert rep0["computed"] == SAMPLES - len(first) and rep0["written"] == len(env["variants"])
    assert json.loads(Path(f"{out}.1.json").read_text())["written"] == 0  # only rank 0 writes
    assert _same_bytes(env, work) == []
    assert _checkpoint_lines(work) == {}


def test_two_ranks_with_cross_sample_decode_batches_resume_after_a_kill(env, tmp_path):
    """As above with ``decode_batch_tokens`` (each rank's 4 samples fused, then decoded in one padded
    batch): rank 1 is SIGKILLed while checkpointing its batch, after 2 of its 4 samples; its checkpoint
    keeps exactly those 2 whole samples, no file is written; the rerun computes the rest, each sample
    once over both runs, and rank 0 writes the one-process exact sweep's bytes (the demo's answers do
    not change under these batches: docs/sweeps.md, 0 of 7,200 over all demo samples)."""
    work, out = tmp_path / "w", tmp_path / "run"
    kw = dict(work=str(work), out=str(out), decode_batch_tokens=4096)
    codes = _ranks(2, _sweep_rank, dict(kw, kill_after=2))
    assert codes[1] == -signal.SIGKILL and codes[0] != 0, (codes, _errors(out))
    assert not _pred_files(work)
    assert _checkpoint_lines(work).get(f"encred_tiny_{DS}@part1of2.jsonl") == 2
    first = Path(f"{out}.computed").read_text().split()
    codes = _ranks(2, _sweep_rank, kw)
    assert codes == [0, 0], _errors(out)
    computed = Path(f"{out}.computed").read_text().split()
    assert sorted(computed, key=int) == [str(i) for i in range(SAMPLES)], (first, computed)
    assert _same_bytes(env, work) == []
    assert _checkpoint_lines(work) == {}


def test_cluster_parts_merge_when_the_last_finishes(env, tmp_path):
    """``--shard-by samples`` cells: part 1 finishes first and leaves its checkpoint (part 0 is not
    done); part 0 then writes every file, the same bytes, and removes both checkpoints; a one-process
    rerun finds everything complete."""
    from vlmeval_encred.sweep import cluster
    from vlmeval_encred.sweep.parallel import Split

    work, out = tmp_path / "w", tmp_path / "run"
    cells = cluster.plan_cells("encred_tiny", env["variants"], [DS], "sweep", 2, shard_by="samples")
    assert [c.cell_id for c in cells] == [f"sweep__part0of2__{DS}", f"sweep__part1of2__{DS}"]
    assert all(c.variants == tuple(env["variants"]) for c in cells)
    assert _ranks(1, _sweep_rank, dict(work=str(work), out=str(out), split=Split(1, 2, "jobs"))) == [0], _errors(out)
    assert not _pred_files(work)
    assert _checkpoint_lines(work) == {f"encred_tiny_{DS}@part1of2.jsonl": SAMPLES // 2}
    assert _ranks(1, _sweep_rank, dict(work=str(work), out=str(out), split=Split(0, 2, "jobs"))) == [0], _errors(out)
    assert _same_bytes(env, work) == [] and _checkpoint_lines(work) == {}
    assert sorted(Path(f"{out}.computed").read_text().split(), key=int) == [str(i) for i in range(SAMPLES)]


def _locked_rank(rank: int, n: int, work: str, out: str) -> None:
    from vlmeval_encred.registry import get_base
    from vlmeval_encred.sweep.engine import SweepError, run_sweep
    from vlmeval_encred.sweep.selection import select_entries

    base = get_base("encred_tiny")
    try:
        run_sweep(base, select_entries(base, "encred_tiny"), [DS], work, progress=False)
    except SweepError as exc:
        Path(f"{out}.{rank}.msg").write_text(str(exc))
        return
    raise AssertionError("the sweep ran although another process holds its output lock")


def test_a_lock_rank_0_cannot_take_stops_every_rank(env, tmp_path):
    """Another sweep holds a variant's output lock: rank 0 cannot take it, rank 1 (which takes only
    its checkpoint lock) learns it through the collective and stops too, with the same message --
    neither waits at a barrier."""
    from vlmeval_encred.sweep.locks import hold, output_lock

    work, out = tmp_path / "w", tmp_path / "run"
    with hold([output_lock(work, "encred_tiny", DS)], what="the other sweep"):
        codes = _ranks(2, _locked_rank, dict(work=str(work), out=str(out)), timeout=300)
    assert codes == [0, 0], _errors(out)
    msgs = [Path(f"{out}.{r}.msg").read_text() for r in (0, 1)]
    assert msgs[0] == msgs[1] and f"pid {os.getpid()}" in msgs[0], msgs


def test_encred_sweep_gpus_2_runs_torchrun_and_writes_the_same_bytes(env, tmp_path):
    """The user's command: ``encred sweep --gpus 2`` starts torchrun (2 CPU processes, gloo); the
    summary is printed once, by rank 0, with every rank's samples counted."""
    work = tmp_path / "w"
    proc = run_py(["-m", "vlmeval_encred.cli", "sweep", "--gpus", "2", "--model", "encred_tiny", "--data", DS,
                   "--work-dir", str(work), "--no-progress"], tmp_path,
                  vlmeval_env(env["lmu"], PRED_FORMAT="tsv", OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, explain(proc)
    summary = [x for x in proc.stdout.splitlines() if x.startswith(f"{DS}:")]
    assert len(summary) == 1 and f"{SAMPLES} computed" in summary[0] and "2 processes" in summary[0], proc.stdout
    assert _same_bytes(env, work) == []
    assert _checkpoint_lines(work) == {}


def test_status_of_parts_shows_a_running_part_over_a_finished_one(tmp_path):
    """Part 1 of a --shard-by samples sweep is done, part 0 still runs: the variants are `running`,
    not `failed` for a finished job without its prediction file."""
    import socket as _socket

    from vlmeval_encred.sweep import cluster
    from vlmeval_encred.sweep.status import collect

    work = str(tmp_path)
    cells = cluster.plan_cells("encred_tiny", ["encred_tiny", "encred_tiny_mask_hires"], [DS], "sweep", 2,
                               shard_by="samples")
    cluster.write_state(work, cells[0], "running", host=_socket.gethostname(), pid=os.getpid())
    cluster.write_state(work, cells[1], "done")
    rows = collect(work, "encred_tiny")
    assert {(r["variant"], r["state"]) for r in rows} == {("encred_tiny", "running"),
                                                           ("encred_tiny_mask_hires", "running")}, rows
