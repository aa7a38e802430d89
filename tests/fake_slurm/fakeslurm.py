"""A single-node stand-in for SLURM's client commands, for tests on machines without SLURM.

The executables next to this file -- ``sbatch``, ``srun``, ``sacct``, ``scancel`` -- are thin
wrappers around this module (standard library only).  Put this directory first on ``PATH`` and
point ``FAKE_SLURM_DIR`` at a directory where the scheduler keeps its state: ``state.json``
(job counter, jobs, per-task states), always rewritten atomically (tmp file + ``os.replace``)
under an ``fcntl.flock`` on ``state.lock``.

``sbatch [OPTIONS] FILE [ARGS]``
    Reads the ``#SBATCH`` lines at the top of FILE (command-line options win), copies the script
    (SLURM runs the copy taken at submission), allocates a job id, records every array task
    (``--array=0-3%2``, ``1,3,5-7``) or the single job as PENDING, prints ``Submitted batch job
    <id>`` and starts a detached runner (``start_new_session``).  The runner starts at most ``%P``
    tasks at once, each as ``bash <copy> ARGS`` in the submission directory, in its own process
    group, with the environment sbatch was called with (``SLURM_*`` variables dropped) plus what
    slurmd sets: ``SLURM_JOB_ID`` (unique per array task: the array's id plus the task's
    position), ``SLURM_ARRAY_JOB_ID``/``SLURM_ARRAY_TASK_ID`` (arrays only), ``SLURM_NTASKS=1``,
    ``SLURM_JOB_NUM_NODES=1``, ``SLURM_NODEID``/``SLURM_PROCID``/``SLURM_LOCALID=0``,
    ``SLURM_JOB_NODELIST=<hostname>``, ``SLURM_JOB_NAME``, ...  Its stdout/stderr go to
    ``--output``/``--error`` (``%A %a %j %J %t %x %N %u %%`` substituted; appended with
    ``--open-mode=append``; a file that cannot be opened fails the task, as on SLURM).  Exit
    status 0 gives COMPLETED, anything else FAILED.  Options it has no use for (``--time``,
    ``--gpus-per-node``, ``--signal``, ``--partition``, ...) are accepted and ignored.
``srun [OPTIONS] CMD...``
    One task on this node: drops srun's options, sends the command's output to ``--output`` /
    ``--error`` (same patterns, ``%t`` = 0), registers itself as step 0 of the job it runs in and
    execs CMD (so its pid is the step's pid).
``sacct [-j ID[,ID]]... [-o FIELDS] [--parsable2|-P] [-n]``
    Fields JobID, JobIDRaw, JobName, State, NodeList, ExitCode (others print empty).  Like SLURM,
    pending array tasks are folded into one line (``12_[2-5%2]``); tasks that started also get
    ``.batch`` and (once srun ran) ``.0`` step lines.  ``-j`` takes an array id (all its tasks),
    ``<array>_<task>`` or a task's own job id.
``scancel [--signal SIG] [--batch] ID...``
    Without ``--signal``: pending and running tasks become ``CANCELLED by <uid>``; running ones
    get SIGTERM, then SIGKILL after ``FAKE_SLURM_KILL_WAIT`` seconds (default 1).  With
    ``--signal``: the signal goes to the job's steps (the batch shell too with ``--batch``).

Test knobs: while ``$FAKE_SLURM_DIR/hold`` exists no task starts (they stay PENDING); while
``$FAKE_SLURM_DIR/hold_steps`` exists ``srun`` waits before starting its command (the task is
RUNNING, its step not yet started).  Every command line is appended to ``calls.log``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

FIRST_JOB_ID = 4242
START_DELAY_S = float(os.environ.get("FAKE_SLURM_START_DELAY", "0.3"))  # one scheduling cycle
FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")

# options that take a value, per command (long name; short letter -> long name); any other
# option is a flag unless written --name=value
_SBATCH_VALUES = {
    "job-name", "output", "error", "input", "array", "chdir", "partition", "time", "time-min", "nodes", "ntasks",
    "ntasks-per-node", "cpus-per-task", "cpus-per-gpu", "gpus", "gpus-per-node", "gpus-per-task", "gres", "mem",
    "mem-per-cpu", "mem-per-gpu", "account", "qos", "constraint", "nodelist", "exclude", "dependency", "signal",
    "open-mode", "comment", "wckey", "mail-type", "mail-user", "export", "wrap", "begin", "deadline",
    "distribution", "licenses", "reservation", "clusters", "cluster", "container", "switches", "nice",
}
_SBATCH_SHORT = {"J": "job-name", "o": "output", "e": "error", "i": "input", "a": "array", "D": "chdir",
                 "p": "partition", "t": "time", "N": "nodes", "n": "ntasks", "c": "cpus-per-task", "G": "gpus",
                 "A": "account", "q": "qos", "C": "constraint", "w": "nodelist", "x": "exclude",
                 "d": "dependency", "M": "clusters", "m": "distribution", "L": "licenses"}
_SRUN_VALUES = (_SBATCH_VALUES - {"array", "wrap", "dependency"}) | {"cpu-bind", "mpi"}
_SRUN_SHORT = {k: v for k, v in _SBATCH_SHORT.items() if k not in ("a", "d")}
_SACCT_VALUES = {"jobs", "format", "starttime", "endtime", "user", "state", "partition", "name", "clusters",
                 "delimiter", "accounts"}
_SACCT_SHORT = {"j": "jobs", "o": "format", "S": "starttime", "E": "endtime", "u": "user", "s": "state",
                "r": "partition", "M": "clusters", "A": "accounts"}
_SACCT_FLAGS = {"P": "parsable2", "p": "parsable", "n": "noheader", "X": "allocations", "a": "allusers",
                "l": "long", "b": "brief", "D": "duplicates"}
_SCANCEL_VALUES = {"signal", "user", "name", "partition", "state", "account", "qos", "clusters"}
_SCANCEL_SHORT = {"s": "signal", "u": "user", "n": "name", "p": "partition", "t": "state", "A": "account",
                  "q": "qos", "M": "clusters"}
_SCANCEL_FLAGS = {"b": "batch", "f": "full", "i": "interactive", "Q": "quiet", "v": "verbose"}


# ----------------------------------------------------------------------------------------- state

def state_dir() -> Path:
    d = os.environ.get("FAKE_SLURM_DIR")
    if not d:
        sys.exit("fake slurm: FAKE_SLURM_DIR is not set")
    p = Path(d)
    p.mkdir(parents=True, exist_ok=True)
    return p


def read_state() -> dict:
    try:
        return json.loads((state_dir() / "state.json").read_text())
    except (OSError, ValueError):
        return {"next_id": FIRST_JOB_ID, "jobs": {}}


@contextlib.contextmanager
def locked_state():
    """Read-modify-write of state.json under an exclusive flock; written back only without error."""
    d = state_dir()
    with open(d / "state.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        st = read_state()
        yield st
        tmp = d / f".state.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(st, indent=1))
        os.replace(tmp, d / "state.json")


def log_call(name: str, argv: list[str]) -> None:
    with open(state_dir() / "calls.log", "a") as f:
        f.write(json.dumps([name, *argv]) + "\n")


def find_tasks(st: dict, ident: str) -> list[tuple[str, str]]:
    """(array or job id, task index) pairs named by an id: 12, 12_3, or a task's own job id."""
    ident = ident.strip()
    main, _, idx = ident.partition("_")
    if main in st["jobs"]:
        tasks = st["jobs"][main]["tasks"]
        if not idx:
            return [(main, i) for i in tasks]
        return [(main, idx)] if idx in tasks else []
    if not idx:
        for jid, job in st["jobs"].items():
            for i, t in job["tasks"].items():
                if str(t["job_id"]) == main:
                    return [(jid, i)]
    return []


# ------------------------------------------------------------------------------------ arguments

def parse_options(argv: list[str], values: set[str], short: dict[str, str], short_flags: dict[str, str] = {},
                  stop_at_positional: bool = True) -> tuple[dict, list[str]]:
    """SLURM-style options -> ({long name: value, or True for a flag; repeated options: list}, positionals).

    With ``stop_at_positional`` (sbatch, srun) everything from the first positional argument on is the
    script or command and is returned untouched."""
    opts: dict = {}
    rest: list[str] = []

    def put(key, val):
        if key in opts and val is not True:
            prev = opts[key] if isinstance(opts[key], list) else [opts[key]]
            opts[key] = prev + [val]
        else:
            opts[key] = val

    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            return opts, rest + argv[i + 1:]
        if a.startswith("--"):
            key, eq, val = a[2:].partition("=")
            if eq:
                put(key, val)
            elif key in values and i + 1 < len(argv):
                put(key, argv[i + 1])
                i += 1
            else:
                put(key, True)
        elif a.startswith("-") and len(a) > 1:
            k = a[1]
            if k in short:
                if len(a) > 2:
                    put(short[k], a[2:].lstrip("="))
                elif i + 1 < len(argv):
                    put(short[k], argv[i + 1])
                    i += 1
            else:
                for c in a[1:]:
                    put(short_flags.get(c, c), True)
        elif stop_at_positional:
            return opts, argv[i:]
        else:
            rest.append(a)
        i += 1
    return opts, rest


def _last(v):
    return v[-1] if isinstance(v, list) else v


def sbatch_directives(text: str) -> list[str]:
    """Tokens of the #SBATCH lines before the first command (as sbatch reads them)."""
    tokens: list[str] = []
    for n, line in enumerate(text.splitlines()):
        s = line.strip()
        if n == 0 and s.startswith("#!"):
            continue
        if not s or (s.startswith("#") and not s.startswith("#SBATCH")):
            continue
        if not s.startswith("#SBATCH"):
            break
        tokens += shlex.split(s[len("#SBATCH"):], comments=True)
    return tokens


def parse_array(spec: str) -> tuple[list[int], int | None]:
    """'0-5%2' / '1,3,7-9:2' -> (indices, parallelism limit)."""
    spec, _, limit = spec.partition("%")
    out: list[int] = []
    for part in spec.split(","):
        rng, _, step = part.partition(":")
        lo, _, hi = rng.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1, int(step or 1)))
    return sorted(set(out)), (int(limit) if limit else None)


def expand(pattern: str, *, job_id, array_id=None, task=None, name="", step_task=0) -> str:
    """SLURM's filename patterns."""
    subs = {"j": str(job_id), "J": str(job_id), "A": str(array_id if array_id is not None else job_id),
            "a": str(task) if task is not None else "4294967294", "t": str(step_task), "n": "0", "s": "batch",
            "x": name, "N": socket.gethostname(), "u": _user(), "%": "%"}
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "%" and i + 1 < len(pattern) and pattern[i + 1] in subs:
            out.append(subs[pattern[i + 1]])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return str(os.getuid())


# ------------------------------------------------------------------------------------------ sbatch

def sbatch(argv: list[str]) -> int:
    cli, rest = parse_options(argv, _SBATCH_VALUES, _SBATCH_SHORT, {"H": "hold", "Q": "quiet", "W": "wait"})
    cli = {k: _last(v) for k, v in cli.items()}
    if "wrap" in cli:
        text, script_args, script_name = f"#!/bin/sh\n{cli['wrap']}\n", rest, "wrap"
    else:
        if not rest:
            print("sbatch: error: no batch script given", file=sys.stderr)
            return 1
        path = Path(rest[0])
        try:
            text = path.read_text()
        except OSError as exc:
            print(f"sbatch: error: Unable to open file {path}: {exc}", file=sys.stderr)
            return 1
        script_args, script_name = rest[1:], path.name
    opts, _ = parse_options(sbatch_directives(text), _SBATCH_VALUES, _SBATCH_SHORT, stop_at_positional=False)
    opts = {k: _last(v) for k, v in opts.items()}
    opts.update(cli)
    if "array" in opts and opts["array"] is not True:
        indices, limit = parse_array(str(opts["array"]))
    else:
        indices, limit = [None], None
    cwd = os.path.abspath(str(opts.get("chdir", os.getcwd())))
    name = str(opts.get("job-name", script_name))
    with locked_state() as st:
        jid = st["next_id"]
        st["next_id"] = jid + len(indices)
        scripts = state_dir() / "scripts"
        scripts.mkdir(exist_ok=True)
        copy = scripts / f"{jid}.sh"
        copy.write_text(text)
        st["jobs"][str(jid)] = {
            "name": name, "array": indices != [None], "parallelism": limit or len(indices), "limit": limit,
            "script": str(copy), "args": script_args, "cwd": cwd, "output": opts.get("output"),
            "error": opts.get("error"), "open_mode": opts.get("open-mode", "truncate"), "submitted": time.time(),
            "options": {k: v for k, v in opts.items()},
            "tasks": {str(i if i is not None else 0): {"job_id": jid + n, "index": i, "state": "PENDING",
                                                       "pgid": None, "steps": [], "exit": None}
                      for n, i in enumerate(indices)},
        }
    logf = open(state_dir() / f"runner_{jid}.log", "ab")
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "_runner", str(jid)],
                            stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True,
                            cwd=cwd)
    with locked_state() as st:
        st["jobs"][str(jid)]["runner_pid"] = proc.pid
    print(jid if cli.get("parsable") else f"Submitted batch job {jid}")
    return 0


def _task_env(job: dict, jid: str, task: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    host = socket.gethostname()
    env.update({
        "SLURM_JOB_ID": str(task["job_id"]), "SLURM_JOBID": str(task["job_id"]), "SLURM_JOB_NAME": job["name"],
        "SLURM_NTASKS": "1", "SLURM_NPROCS": "1", "SLURM_JOB_NUM_NODES": "1", "SLURM_NNODES": "1",
        "SLURM_NODEID": "0", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_JOB_NODELIST": host,
        "SLURM_NODELIST": host, "SLURMD_NODENAME": host, "SLURM_SUBMIT_DIR": job["cwd"],
        "SLURM_SUBMIT_HOST": host, "SLURM_CLUSTER_NAME": "fake", "SLURM_JOB_USER": _user(),
        "SLURM_CPUS_ON_NODE": str(os.cpu_count() or 1), "SLURM_TASKS_PER_NODE": "1",
        "SLURM_JOB_PARTITION": str(job["options"].get("partition", "fake")),
    })
    if job["open_mode"] == "append":
        env["SLURM_OPEN_MODE"] = "a"
    if job["array"]:
        idx = [t["index"] for t in job["tasks"].values()]
        env.update({"SLURM_ARRAY_JOB_ID": jid, "SLURM_ARRAY_TASK_ID": str(task["index"]),
                    "SLURM_ARRAY_TASK_COUNT": str(len(idx)), "SLURM_ARRAY_TASK_MIN": str(min(idx)),
                    "SLURM_ARRAY_TASK_MAX": str(max(idx))})
    return env


def _open_outputs(job: dict, jid: str, task: dict):
    kw = dict(job_id=task["job_id"], array_id=jid if job["array"] else None,
              task=task["index"], name=job["name"])
    out_pat = job["output"] or ("slurm-%A_%a.out" if job["array"] else "slurm-%j.out")
    out_path = os.path.join(job["cwd"], expand(str(out_pat), **kw))
    mode = "ab" if job["open_mode"] == "append" else "wb"
    out = open(out_path, mode)
    if not job["error"]:
        return out, out
    err_path = os.path.join(job["cwd"], expand(str(job["error"]), **kw))
    return out, (out if err_path == out_path else open(err_path, mode))


def _start_task(jid: str, idx: str):
    """PENDING -> RUNNING and start the batch shell, under the lock so scancel sees its pgid."""
    with locked_state() as st:
        job = st["jobs"][jid]
        task = job["tasks"][idx]
        if task["state"] != "PENDING":
            return None
        task["start"] = time.time()
        try:
            out, err = _open_outputs(job, jid, task)
        except OSError as exc:  # slurmstepd cannot open the output: the task fails without output
            task.update(state="FAILED", exit="0:53", end=time.time(), note=str(exc))
            return None
        try:
            proc = subprocess.Popen(["bash", job["script"], *job["args"]], cwd=job["cwd"],
                                    env=_task_env(job, jid, task), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=err, start_new_session=True)
        finally:
            out.close()
            err.close()
        task.update(state="RUNNING", pgid=proc.pid, node=socket.gethostname())
        return proc


def _finish_task(jid: str, idx: str, rc: int) -> None:
    with locked_state() as st:
        task = st["jobs"][jid]["tasks"][idx]
        task["end"] = time.time()
        task["exit"] = f"{rc}:0" if rc >= 0 else f"0:{-rc}"
        if task["state"] == "RUNNING":
            task["state"] = "COMPLETED" if rc == 0 else "FAILED"


def runner(jid: str) -> int:
    time.sleep(START_DELAY_S)
    hold = state_dir() / "hold"
    running: dict[str, subprocess.Popen] = {}
    while True:
        for idx, proc in list(running.items()):
            rc = proc.poll()
            if rc is not None:
                del running[idx]
                _finish_task(jid, idx, rc)
        job = read_state()["jobs"][jid]
        pending = [i for i, t in job["tasks"].items() if t["state"] == "PENDING"]
        if not pending and not running:
            return 0
        if not hold.exists():
            for idx in pending[:max(0, job["parallelism"] - len(running))]:
                proc = _start_task(jid, idx)
                if proc is not None:
                    running[idx] = proc
        time.sleep(0.1)


# -------------------------------------------------------------------------------------------- srun

def srun(argv: list[str]) -> int:
    opts, cmd = parse_options(argv, _SRUN_VALUES, _SRUN_SHORT, {"u": "unbuffered", "l": "label"})
    opts = {k: _last(v) for k, v in opts.items()}
    if not cmd:
        print("srun: fatal: No command given to execute.", file=sys.stderr)
        return 1
    while (state_dir() / "hold_steps").exists():
        time.sleep(0.1)
    env = os.environ
    array_id, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    job_id = env.get("SLURM_JOB_ID", "0")
    env.update({"SLURM_STEP_ID": "0", "SLURM_STEPID": "0", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
                "SLURM_NODEID": "0", "SLURM_NTASKS": "1", "SLURM_STEP_NUM_TASKS": "1"})
    ident = f"{array_id}_{task}" if array_id else job_id
    with locked_state() as st:
        for jid, idx in find_tasks(st, ident):
            t = st["jobs"][jid]["tasks"][idx]
            if t["state"] == "CANCELLED":
                return 1
            t["steps"].append(os.getpid())
    kw = dict(job_id=job_id, array_id=array_id, task=task, name=env.get("SLURM_JOB_NAME", ""))
    mode = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if (str(opts.get("open-mode", "")).startswith("a") or
                                                      env.get("SLURM_OPEN_MODE") == "a") else os.O_TRUNC)
    sys.stdout.flush()
    sys.stderr.flush()
    if opts.get("output") not in (None, True):
        fd = os.open(expand(str(opts["output"]), **kw), mode, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    if opts.get("error") not in (None, True):
        fd = os.open(expand(str(opts["error"]), **kw), mode, 0o644)
        os.dup2(fd, 2)
        os.close(fd)
    try:
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        print(f"srun: error: {cmd[0]}: {exc}", file=sys.stderr)
        return 2


# ------------------------------------------------------------------------------------------- sacct

def _fold(indices: list[int]) -> str:
    parts, start, prev = [], None, None
    for i in sorted(indices) + [None]:
        if start is not None and (i is None or i != prev + 1):
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = None
        if i is not None and start is None:
            start = i
        prev = i
    return ",".join(parts)


def sacct(argv: list[str]) -> int:
    opts, _ = parse_options(argv, _SACCT_VALUES, _SACCT_SHORT, _SACCT_FLAGS, stop_at_positional=False)
    jobs = opts.get("jobs", [])
    ids = [i for v in (jobs if isinstance(jobs, list) else [jobs]) for i in str(v).split(",") if i]
    fields = str(_last(opts.get("format", "JobID,JobName,State,ExitCode"))).split(",")
    st = read_state()
    wanted: list[tuple[str, str]] = []
    for ident in ids or list(st["jobs"]):
        wanted += [p for p in find_tasks(st, ident) if p not in wanted]
    rows = []
    uid = os.getuid()

    def row(jobid, raw, name, state, node, exitcode):
        values = {"jobid": jobid, "jobidraw": raw, "jobname": name, "state": state, "nodelist": node,
                  "exitcode": exitcode}
        rows.append([values.get(f.strip().lower(), "") for f in fields])

    by_job: dict[str, list[str]] = {}
    for jid, idx in wanted:
        by_job.setdefault(jid, []).append(idx)
    for jid, idxs in by_job.items():
        job = st["jobs"][jid]
        pending = []
        for idx in sorted(idxs, key=int):
            t = job["tasks"][idx]
            state = f"CANCELLED by {uid}" if t["state"] == "CANCELLED" else t["state"]
            shown = f"{jid}_{t['index']}" if job["array"] else jid
            if t["state"] == "PENDING":
                if job["array"]:
                    pending.append(t["index"])
                else:
                    row(shown, str(t["job_id"]), job["name"], state, "None assigned", "0:0")
                continue
            node = t.get("node") or "None assigned"
            row(shown, str(t["job_id"]), job["name"], state, node, t.get("exit") or "0:0")
            if t.get("pgid"):
                row(f"{shown}.batch", f"{t['job_id']}.batch", "batch", state, node, t.get("exit") or "0:0")
            if t.get("steps"):
                row(f"{shown}.0", f"{t['job_id']}.0", "python", state, node, t.get("exit") or "0:0")
        if pending:
            limit = f"%{job['limit']}" if job.get("limit") else ""
            row(f"{jid}_[{_fold(pending)}{limit}]", jid, job["name"], "PENDING", "None assigned", "0:0")
    sep = str(_last(opts.get("delimiter", "|")))
    lines = ([fields] if not opts.get("noheader") else []) + rows
    for r in lines:
        if opts.get("parsable2"):
            print(sep.join(r))
        elif opts.get("parsable"):
            print(sep.join(r) + sep)
        else:
            print(" ".join(f"{v:>12}" for v in r))
    return 0


# ----------------------------------------------------------------------------------------- scancel

def _signal_number(name: str) -> int:
    name = name.upper()
    if name.isdigit():
        return int(name)
    return int(getattr(signal, name if name.startswith("SIG") else "SIG" + name))


def _kill(pid: int, sig: int, group: bool) -> None:
    try:
        (os.killpg if group else os.kill)(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def scancel(argv: list[str]) -> int:
    opts, ids = parse_options(argv, _SCANCEL_VALUES, _SCANCEL_SHORT, _SCANCEL_FLAGS, stop_at_positional=False)
    sig = _last(opts.get("signal"))
    rc = 0
    to_kill: list[int] = []
    with locked_state() as st:
        for ident in ids:
            pairs = find_tasks(st, ident)
            if not pairs:
                print(f"scancel: error: Kill job error on job id {ident}: Invalid job id specified",
                      file=sys.stderr)
                rc = 1
            for jid, idx in pairs:
                t = st["jobs"][jid]["tasks"][idx]
                if t["state"] in FINAL:
                    print(f"scancel: error: Kill job error on job id {ident}: "
                          "Job/step already completing or completed", file=sys.stderr)
                    continue
                if sig not in (None, True):
                    if t["state"] == "RUNNING":
                        for pid in t["steps"]:
                            _kill(pid, _signal_number(str(sig)), group=False)
                        if opts.get("batch") or opts.get("full"):
                            _kill(t["pgid"], _signal_number(str(sig)), group=False)
                    continue
                if t["state"] == "RUNNING" and t.get("pgid"):
                    to_kill.append(t["pgid"])
                t["state"] = "CANCELLED"
                t["end"] = time.time()
    for pgid in to_kill:
        _kill(pgid, signal.SIGCONT, group=True)
        _kill(pgid, signal.SIGTERM, group=True)
    deadline = time.time() + float(os.environ.get("FAKE_SLURM_KILL_WAIT", "1"))
    while to_kill and time.time() < deadline and any(_group_alive(p) for p in to_kill):
        time.sleep(0.05)
    for pgid in to_kill:
        _kill(pgid, signal.SIGKILL, group=True)
    return rc


COMMANDS = {"sbatch": sbatch, "srun": srun, "sacct": sacct, "scancel": scancel}


def main(name: str, argv: list[str]) -> int:
    log_call(name, argv)
    return COMMANDS[name](argv)


if __name__ == "__main__":  # the detached runner that sbatch starts: fakeslurm.py _runner <job id>
    if len(sys.argv) != 3 or sys.argv[1] != "_runner":
        sys.exit("usage: fakeslurm.py _runner JOBID (the commands are sbatch, srun, sacct, scancel)")
    sys.exit(runner(sys.argv[2]))
