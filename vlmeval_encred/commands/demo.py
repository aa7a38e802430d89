"""``encred demo``: the whole tool on the CPU in a few minutes, with known right answers.

1. Writes the three synthetic demo datasets into VLMEvalKit's data root
   (``$LMUData``; unchanged files are left alone).
2. Runs every subset of the demo model's encoders (the base a family's catalog offers as
   ``provide("demo", ...)``, and its ``_mask_`` variants: 2^3 = 8 models) through the installed VLMEvalKit's own
   entry point (``main()`` of ms-vlmeval's ``vlmeval/run.py``, what ``python -m
   vlmeval`` runs, or of an upstream checkout's ``run.py``: see
   :mod:`vlmeval_encred.flavour`), with ``--judge exact_matching``, in this one
   process, so VLMEvalKit is imported once instead of eight times.  VLMEvalKit's console output goes to
   ``<work-dir>/logs/encred_demo_vlmeval.log``; a progress bar with an ETA counts
   the questions answered.
3. Builds the report (``vlmeval_encred.report.api.build_report``, suite
   ``encred_demo``), then prints the scores, the CURs, whether the planted
   structure was recovered, and where the report and figures are.

Predictions are reused when the data and the checkpoint are unchanged since
the last run in the same work directory (VLMEvalKit reuses a complete
prediction file); otherwise the variants' old outputs are removed first.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

SUITE = "encred_demo"
QUICK_SAMPLES = 60
STATE_FILE = ".encred_demo_state.json"


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..demo.data import DEFAULT_SAMPLES
    from ..validate import MIN_N_BOOT, int_range, n_boot

    p = sub.add_parser(
        "demo", help="run the CPU demo end to end (data, all 8 masked variants via VLMEvalKit, report)",
        description="Generate the synthetic demo benchmark, run every encoder subset of the tiny "
                    "trained demo model through VLMEvalKit's own inference and evaluation, and build "
                    "the report. Needs no GPU and no downloads; a few minutes on 2 CPU cores.")
    p.add_argument("--work-dir", default="./encred_demo_out",
                   help="VLMEvalKit --work-dir for the variants' results and the report (default: %(default)s)")
    p.add_argument("--samples-per-category", type=int_range(1), default=None,
                   help=f"questions per demo dataset (default {DEFAULT_SAMPLES}; {QUICK_SAMPLES} with --quick)")
    p.add_argument("--quick", action="store_true",
                   help=f"{QUICK_SAMPLES} questions per dataset and a smaller bootstrap (about a minute)")
    p.add_argument("--n-boot", type=n_boot, default=None,
                   help=f"bootstrap resamples: 0 = no intervals, else at least {MIN_N_BOOT} (default 1000; 200 with --quick)")
    p.add_argument("--force", action="store_true",
                   help="rewrite the demo's report even if it was edited by hand, and remove the demo model's results "
                        "in --work-dir that encred demo did not make")
    p.set_defaults(func=run)


def _fingerprint(written: list[Any], checkpoint: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    for f in sorted(checkpoint.iterdir()):
        if f.is_file():
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return {"datasets": {w.name: w.sha256 for w in written}, "checkpoint": h.hexdigest()}


def _prepare_work_dir(work: Path, variants: list[str], state: dict[str, Any], force: bool = False) -> bool:
    """Remove the variants' old outputs unless they were made from the same data and weights.

    Only outputs this demo made (its state file says so) are removed: variant folders in a
    work dir without a readable state file were made by someone else (e.g. ``python -m vlmeval
    --model <the demo base>`` into ``outputs``), and removing them needs ``force``
    (:mod:`vlmeval_encred.safe_files` rule 2).
    """
    from ..safe_files import OutputConflict, OutputError, atomic_write_text, ensure_folder

    ensure_folder(work, option="--work-dir")
    f = work / STATE_FILE
    try:
        old = json.loads(f.read_text()) if f.exists() else None
    except (OSError, ValueError):
        old = None
    if old == state:
        return True
    present = [v for v in variants if (work / v).exists()]
    if present and not isinstance(old, dict) and not force:
        raise OutputConflict(
            f"{work} already holds results of {', '.join(present)} that encred demo did not make (no readable "
            f"{STATE_FILE}); the demo would remove them: choose another --work-dir, or pass --force to remove them",
            {work / v: "not made by encred demo" for v in present})
    for v in present:
        try:
            shutil.rmtree(work / v)
        except OSError as exc:
            raise OutputError(f"cannot remove the demo's old outputs {work / v}: {exc.strerror or exc}; "
                              "remove the folder by hand or choose another --work-dir") from None
    atomic_write_text(f, json.dumps(state, indent=1))
    return False


def _silence_vlmeval(log_file: Path) -> None:
    """Send VLMEvalKit's logger to our log file only (its setup_logger keeps existing handlers)."""
    try:
        from vlmeval.smp.log import setup_logger
    except ImportError:  # other VLMEvalKit versions: their console output simply stays visible
        return
    import logging

    log_file.parent.mkdir(parents=True, exist_ok=True)
    logger = setup_logger(log_file=str(log_file), console=False)
    for h in list(logger.handlers):
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            logger.removeHandler(h)


@contextlib.contextmanager
def _redirect_fds(target):
    """Point file descriptors 1 and 2 at ``target`` (restored afterwards)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = []
    try:
        for fd in (1, 2):
            try:
                saved.append((fd, os.dup(fd)))
                os.dup2(target.fileno(), fd)
            except OSError:  # no real descriptor (e.g. an embedding host): Python-level only
                pass
        yield
    finally:
        target.flush()
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)


def _load_run_main(fl: Any) -> Any:
    """``main`` of the installed VLMEvalKit's run.py (ms-vlmeval: ``vlmeval.run``; a checkout: its
    ``run.py``, loaded from its path as ``python run.py`` would, minus ``if __name__ == "__main__"``)."""
    if fl.kind == "ms-vlmeval":
        import vlmeval.run as vrun

        return vrun.main
    import importlib.util

    name = "_encred_vlmeval_run_py"
    if name in sys.modules:
        return sys.modules[name].main
    spec = importlib.util.spec_from_file_location(name, fl.run_py)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module.main


def _run_vlmeval(main: Any, argv: list[str], prog: str = "vlmeval") -> None:
    saved = sys.argv
    sys.argv = [prog, *argv]
    try:
        main()
    finally:
        sys.argv = saved


def _outputs_ok(work: Path, model: str, datasets: list[str]) -> list[str]:
    missing = []
    for d in datasets:
        for suffix in (".xlsx", "_acc.csv"):
            pattern = f"{model}_{d}{suffix}"
            if not any(True for _ in (work / model).rglob(pattern)):
                missing.append(pattern)
    return missing


def _read_acc(work: Path, model: str, dataset: str) -> float | None:
    import pandas as pd

    files = sorted((work / model).rglob(f"{model}_{dataset}_acc.csv"), key=lambda p: p.stat().st_mtime)
    if not files:
        return None
    return 100.0 * float(pd.read_csv(files[-1])["Overall"].iloc[0])


def demo_base() -> tuple[str, str]:
    """The base ``encred demo`` runs and its wrapper (``"module:Class"``): a catalog's ``demo`` hook."""
    from ..families import provided

    hooks = provided("demo")
    if len(hooks) != 1:
        raise SystemExit(f"encred demo: expected one family to provide the demo model, found {sorted(hooks)}")
    return next(iter(hooks.items()))


def run(args: argparse.Namespace) -> int:
    from ..demo import data as demo_data
    from ..demo.model import PACKAGE_CHECKPOINT
    from ..registry import entries

    BASE, wrapper_target = demo_base()
    t_start = time.perf_counter()
    n = args.samples_per_category if args.samples_per_category is not None else (QUICK_SAMPLES if args.quick else demo_data.DEFAULT_SAMPLES)
    n_boot = args.n_boot if args.n_boot is not None else (200 if args.quick else 1000)
    work = Path(args.work_dir).expanduser().resolve()
    err = sys.stderr
    from ..safe_files import OutputError, ensure_folder

    try:  # before anything is written: a work dir that cannot be used costs nothing
        ensure_folder(work, option="--work-dir")
    except OutputError as exc:
        print(f"encred demo: {exc}", file=err)
        return 2

    # 1. data -------------------------------------------------------------------------------
    written = demo_data.write_datasets(samples_per_category=n)
    datasets = [w.name for w in written]
    root = written[0].path.parent
    print(f"[1/3] demo data: {len(datasets)} datasets x {n} questions in {root} "
          f"({sum(w.rewritten for w in written)} written, {sum(not w.rewritten for w in written)} unchanged)")
    if not (PACKAGE_CHECKPOINT / "model.safetensors").is_file():
        raise SystemExit(f"encred demo: the packaged checkpoint is missing from {PACKAGE_CHECKPOINT}; "
                         "train it with `python -m vlmeval_encred.demo.train --out "
                         f"{PACKAGE_CHECKPOINT}`")
    variants = [e.name for e in entries(base=BASE)]
    try:
        reused = _prepare_work_dir(work, variants, _fingerprint(written, PACKAGE_CHECKPOINT), force=args.force)
    except OutputError as exc:
        print(f"encred demo: {exc}", file=err)
        return 2

    # 2. VLMEvalKit -------------------------------------------------------------------------
    from ..flavour import FlavourError, detect

    try:
        fl = detect()
    except FlavourError as exc:
        raise SystemExit(f"encred demo: {exc}")
    # A checkout's run.py starts a fresh run folder each time; --reuse makes it take unchanged
    # predictions from the previous one (ms-vlmeval's flat layout reuses them without it).
    reuse_arg = ["--reuse"] if fl.layout == "run-folders" else []
    print(f"[2/3] {len(variants)} variants x {len(datasets)} datasets through VLMEvalKit {fl.label} "
          f"(--judge exact_matching, --work-dir {work}); loading VLMEvalKit ...", flush=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    log_file = work / "logs" / "encred_demo_vlmeval.log"
    t_import = time.perf_counter()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as logf, _redirect_fds(logf), contextlib.redirect_stdout(logf), \
            contextlib.redirect_stderr(logf), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vlmeval_main = _load_run_main(fl)  # the import is the slow part: ~15 s

        from ..families import resolve

        wrapper_cls = resolve(wrapper_target)
    t_import = time.perf_counter() - t_import
    _silence_vlmeval(log_file)

    from tqdm import tqdm

    total = len(variants) * len(datasets) * n
    # The bar writes to a duplicate of the terminal's stderr; fd 1 and 2 themselves go to the
    # log while VLMEvalKit runs (it also prints from subprocesses such as `git rev-parse`).
    err.flush()
    bar_stream = os.fdopen(os.dup(err.fileno()), "w", buffering=1) if hasattr(err, "fileno") else err
    bar = tqdm(total=total, unit="q", desc="answering", file=bar_stream, disable=False, dynamic_ncols=True,
               mininterval=0.5, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]")
    wrapper_cls.on_generate = lambda: bar.update(1)
    old_tqdm_disable = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # VLMEvalKit's own per-dataset bars; ours is explicit
    import logging

    ours = logging.getLogger("vlmeval_encred")
    old_level = ours.level
    ours.setLevel(logging.WARNING)  # one mask line per variant would break the bar
    t_runs = time.perf_counter()
    try:
        with open(log_file, "a") as logf, _redirect_fds(logf), contextlib.redirect_stdout(logf), \
                contextlib.redirect_stderr(logf), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i, v in enumerate(variants):
                bar.set_postfix_str(v.replace(BASE, "") or "full", refresh=False)
                _run_vlmeval(vlmeval_main, ["--model", v, "--data", *datasets, "--judge", "exact_matching",
                                            "--work-dir", str(work), "--api-nproc", "1", *reuse_arg],
                             prog=str(fl.run_py))
                missing = _outputs_ok(work, v, datasets)
                if missing:
                    raise SystemExit(f"encred demo: VLMEvalKit did not produce {', '.join(missing)} for {v}; "
                                     f"see {log_file}")
                bar.update((i + 1) * len(datasets) * n - bar.n)  # reused predictions count as done
    finally:
        wrapper_cls.on_generate = None
        ours.setLevel(old_level)
        bar.close()
        if bar_stream is not err:
            bar_stream.close()
        if old_tqdm_disable is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = old_tqdm_disable
    t_runs = time.perf_counter() - t_runs

    # 3. report -----------------------------------------------------------------------------
    print(f"[3/3] report (suite {SUITE}, {n_boot} bootstrap resamples) ...", flush=True)
    t_report = time.perf_counter()
    rc, result, not_written = _report_and_verdict(work, BASE, variants, datasets, n, n_boot, force=args.force)
    t_report = time.perf_counter() - t_report
    token_rc, t_tokens = _token_verdict(wrapper_cls, BASE, n, n_boot)
    rc = rc or token_rc
    total_s = time.perf_counter() - t_start
    print()
    print(f"Timings: VLMEvalKit import {t_import:.0f}s, {len(variants) * len(datasets)} runs {t_runs:.0f}s"
          f"{' (predictions reused)' if reused else ''}, report {t_report:.0f}s, token check {t_tokens:.0f}s, "
          f"total {total_s:.0f}s")
    print(f"VLMEvalKit results: {work}/<model>/ (log: {log_file})")
    if result is not None and result.out_dir is not None:
        print(f"Report: {result.out_dir}")
        for kind, path in sorted(result.files.items()):
            print(f"  {kind:<12} {path}")
    if not_written:
        print(f"encred demo: {not_written}", file=err)
    return rc


def _report_and_verdict(work: Path, base: str, variants: list[str], datasets: list[str], n: int, n_boot: int,
                        force: bool = False) -> tuple[int, Any, str]:
    """Build the report, print the scores and the planted-structure verdict.

    Returns ``(exit code, ReportResult or None, why the report was not written or "")``.  The
    verdict is printed even when the report cannot be written (a hand-edited report without
    ``force``, a folder that cannot be written): the numbers are computed without writing and
    the reason comes last, with what to do; the exit code is then 2.
    """
    from ..demo import data as demo_data
    from ..demo import planted
    from ..report.api import ReportError, build_report
    from ..safe_files import OutputError

    not_written = ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = build_report(work, base, suite=SUITE, n_boot=n_boot, force=force)
        except OutputError as exc:
            not_written = f"the report was not rewritten: {exc}"
            result = build_report(work, base, suite=SUITE, n_boot=n_boot, write=False)
        except ReportError as exc:
            not_written = f"no report: {exc}"
            result = None

    scores = _scores_from_files(work, variants, datasets)
    _print_summary(scores, variants)
    print()
    print("Planted structure (docs/demo.md):")
    all_ok = True
    for claim, value, ok in planted.check_all(scores):
        all_ok &= ok
        print(f"  {'ok  ' if ok else 'MISS'} {claim.text}: {value:.1f} (expected {claim.bound})")
    # The planted effects are sized for the full benchmark; at fewer questions an interval may
    # be too wide to exclude zero, which says nothing about the model or the report.
    strict = n >= demo_data.DEFAULT_SAMPLES
    print(f"95% paired-bootstrap intervals of CUR ({n_boot} resamples; only the planted effects may exclude 0"
          f"{'' if strict else f'; informational at {n} questions, checked at {demo_data.DEFAULT_SAMPLES}+'}):")
    for check in planted.check_intervals(result.bootstrap if result is not None else []):
        all_ok &= check.ok or not strict
        mark = "ok  " if check.ok else "MISS" if strict else "wide"
        print(f"  {mark} {check.describe()}")
    if not_written:
        print(f"Verdict above computed from the results; {not_written}")
    return (2 if not_written else 0 if all_ok else 1), result, not_written


def _token_verdict(wrapper_cls: Any, base: str, n: int, n_boot: int) -> tuple[int, float]:
    """Run and print the token-budget check (:data:`..demo.planted.TOKEN_CHECK`); (exit code, seconds).

    A miss counts toward the exit status only where the claim says so (``counts``) and only at the
    full benchmark size, like the interval claims; otherwise it is printed as measured."""
    import logging

    from ..demo import data as demo_data
    from ..demo.planted import TOKEN_CHECK
    from ..demo.token_check import run_token_check

    ours = logging.getLogger("vlmeval_encred")
    old_level = ours.level
    ours.setLevel(logging.WARNING)  # the wrapper's one-line load message
    try:
        res = run_token_check(wrapper_cls, base, n, n_boot)
    finally:
        ours.setLevel(old_level)
    strict = n >= demo_data.DEFAULT_SAMPLES
    mark = "ok  " if res.ok else "MISS" if strict else "wide"
    print()
    print("Token budget (docs/tokens.md, 'The demo's token check'): scored fusion selection vs a seeded random "
          "selection of the same size:")
    print(f"  {mark} {res.describe()}")
    if not res.ok and strict and not TOKEN_CHECK.counts:
        print("       the scored selection does not win on the shipped model; reported as measured, not counted "
              "toward the exit status (planted.TOKEN_CHECK.counts; docs/tokens.md says why; "
              "benchmarks/token_check_grid.py --diagnose shows what it keeps that misleads the model)")
    return (1 if strict and TOKEN_CHECK.counts and not res.ok else 0), res.seconds


def _scores_from_files(work: Path, variants: list[str], datasets: list[str]) -> dict[tuple[str, ...], dict[str, float]]:
    """Accuracy per masked-subset and category, read back from VLMEvalKit's own _acc.csv files."""
    from ..demo.data import DATASETS
    from ..registry import parse_entry_name

    cat = {d.name: d.category for d in DATASETS}
    out: dict[tuple[str, ...], dict[str, float]] = {}
    for v in variants:
        masked = parse_entry_name(v).masked
        out[masked] = {cat[d]: _read_acc(work, v, d) for d in datasets}
    return out


def _print_summary(scores: dict[tuple[str, ...], dict[str, float]], variants: list[str]) -> None:
    from ..demo import planted

    cats = planted.CATEGORIES
    print()
    print("Accuracy (%) per masked subset, from VLMEvalKit's score files:")
    print(f"  {'masked':<22}" + "".join(f"{c:>16}" for c in cats))
    for masked, row in scores.items():
        print(f"  {','.join(masked) or '- (full model)':<22}"
              + "".join(f"{row[c]:16.1f}" if row.get(c) is not None else f"{'n/a':>16}" for c in cats))
    print()
    print("CUR (%) = (full - without E) / full:")
    print(f"  {'encoder':<22}" + "".join(f"{c:>16}" for c in cats))
    for enc in planted.ENCODERS:
        print(f"  {enc:<22}" + "".join(f"{planted.cur(scores, enc, c):16.1f}" for c in cats))
