"""The command that evaluates what a sweep wrote, for the VLMEvalKit in use -- and never infers.

* Full sweep: the installed VLMEvalKit's own ``run.py`` (``python -m vlmeval`` for ms-vlmeval,
  ``cd <checkout> && python run.py`` for a checkout) with ``--reuse`` and, where that
  ``run.py`` has it, ``--mode eval``: a variant whose prediction is incomplete is then skipped
  with an error instead of being inferred (no model is built).
* Limited sweep (``--limit N``; files in ``<work_dir>/encred_limit<N>/``):
  - a ``run.py`` with ``--limit`` (ms-vlmeval): ``--limit N`` on that work dir (``--mode eval``
    cannot be used: it checks completeness against the whole dataset before applying the
    limit); every one of the N samples is predicted, so it evaluates without building a model;
  - a ``run.py`` without ``--limit`` (an upstream checkout) cannot evaluate N samples: it
    would infer the rest (``--mode all``) or skip the file (``--mode eval``).  The command is
    then ``python -m vlmeval_encred.sweep.limited_eval``: VLMEvalKit's own ``build_dataset``
    cut to the first N rows and ``dataset.evaluate`` on the sweep's file, nothing else.
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import Sequence


def has_eval_mode(run_py_text: str) -> bool:
    return "'--mode'" in run_py_text and "'eval'" in run_py_text or '"--mode"' in run_py_text and '"eval"' in run_py_text


def evaluation_argv(fl, variants: Sequence[str], datasets: Sequence[str], work_dir: str, limit: int | None = None,
                    judge: str | None = None) -> tuple[list[str], str | None]:
    """(argv, cwd) that evaluates ``variants`` x ``datasets`` as written by a sweep into ``work_dir``
    (the sweep's *given* work dir: a limited sweep's ``encred_limit<N>/`` is derived here)."""
    from .predfiles import limited_work_dir

    wd = limited_work_dir(os.path.abspath(work_dir), limit)
    cwd = str(fl.cwd) if fl.cwd else None
    if limit and not fl.has_limit:
        argv = [sys.executable, "-m", "vlmeval_encred.sweep.limited_eval", "--model", *variants, "--data",
                *datasets, "--work-dir", wd, "--limit", str(limit)]
        if judge:
            argv += ["--judge", judge]
        return argv, cwd
    args = ["--model", *variants, "--data", *datasets, "--work-dir", wd, "--reuse"]
    if limit:
        args += ["--limit", str(limit)]
    else:
        try:
            text = fl.run_py.read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
        if has_eval_mode(text):
            args += ["--mode", "eval"]
    if judge:
        args += ["--judge", judge]
    return fl.command(args), cwd


def evaluation_command(fl, variants: Sequence[str], datasets: Sequence[str], work_dir: str,
                       limit: int | None = None, judge: str | None = None) -> str:
    """:func:`evaluation_argv` as one copy-pasteable shell line (``cd <checkout> && ...`` for a checkout)."""
    argv, cwd = evaluation_argv(fl, variants, datasets, work_dir, limit, judge)
    line = shlex.join(argv)
    return f"cd {shlex.quote(cwd)} && {line}" if cwd else line
