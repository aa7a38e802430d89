"""One writer per output: ``flock`` locks in the work dir, released by the kernel when the holder dies.

A sweep holds, per dataset and for as long as it computes or writes:

* the lock of its checkpoint (``<checkpoint>.lock``, i.e. per work dir, base, dataset and
  shard), so two sweeps never append to, rewrite or delete the same checkpoint; and
* one lock per (work dir, variant, dataset) -- ``<work_dir>/encred_locks/<variant>__<dataset>.lock``
  -- so two sweeps (or a sweep and a per-variant cluster cell) never compute and write the
  same prediction file, whatever their subset selections or shards.

Acquisition never waits: a held lock raises :class:`LockHeld` naming the holder (pid, host,
start time, command line, from the JSON the holder wrote into the lock file).  ``flock``
locks belong to the open file, so a killed holder (SIGKILL, OOM, node loss) frees them at
once and a stale lock file never blocks: only a live process can hold one.  Lock files are
left in place (deleting a lock file races with a process that just opened it).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence


class LockHeld(RuntimeError):
    """Another live process holds one of the locks asked for."""


def locks_dir(work_dir: str | os.PathLike) -> Path:
    return Path(work_dir) / "encred_locks"


def output_lock(work_dir: str | os.PathLike, variant: str, dataset: str) -> Path:
    """The lock guarding ``variant``'s prediction file for ``dataset`` in ``work_dir``."""
    return locks_dir(work_dir) / f"{variant}__{dataset}.lock"


def holder(path: str | os.PathLike) -> str:
    """Who wrote the lock file last (the current holder while it is held)."""
    try:
        rec = json.loads(Path(path).read_text())
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec.get("started", 0)))
        return f"pid {rec.get('pid')} on {rec.get('host')} since {started} ({rec.get('command', '?')})"
    except (OSError, ValueError):
        return "a process that has not yet recorded itself"


@contextlib.contextmanager
def hold(paths: Sequence[str | os.PathLike], what: str = "") -> Iterator[None]:
    """Hold every lock in ``paths`` (created as needed) or raise :class:`LockHeld` at once."""
    fds: list[int] = []
    try:
        for p in paths:
            p = Path(p)
            p.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise LockHeld(f"{what or p.name} is being written by another process: {holder(p)}; "
                               f"lock file {p}. Wait for it to finish (or stop it), then run this again") from None
            fds.append(fd)
            me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                             "command": " ".join(sys.argv)[:500]})
            os.ftruncate(fd, 0)
            os.pwrite(fd, me.encode(), 0)
        yield
    finally:
        for fd in reversed(fds):
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
