"""``encred sweep``: every selected mask subset of a base model in one pass per dataset."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep", help="run all selected variants of a base model together, sharing encoder outputs",
        description="Per sample, run each needed encoder once and decode every selected subset as one batch; "
                    "write each variant's prediction file exactly where and as VLMEvalKit's inference would, "
                    "so `python -m vlmeval --model <variant> --data <ds>` then only evaluates. Resumable.")
    p.add_argument("--model", required=True, help="base model name (see `encred models`)")
    p.add_argument("--data", required=True, nargs="+",
                   help="suite names (paper15), paper short names or VLMEvalKit dataset names")
    p.add_argument("--subsets", default="all",
                   help="'all', 'k=1' (one encoder masked), 'k<=2', or comma-separated entry names")
    p.add_argument("--work-dir", default="./outputs", help="VLMEvalKit work dir (default ./outputs)")
    p.add_argument("--limit", type=int, default=None, help="first N samples only (as run.py --limit)")
    p.add_argument("--decode-batch", type=int, default=0,
                   help="at most this many subsets per generate call (0 = all of a sample's)")
    p.add_argument("--suite-file", default=None, help="benchmarks.yaml to expand suite names from")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..registry import RegistryError, get_base
    from ..sweep.selection import SelectionError, resolve_datasets, select_entries

    try:
        base = get_base(args.model)
        chosen = select_entries(base, args.subsets)
        datasets = resolve_datasets(args.data, args.suite_file)
    except (RegistryError, SelectionError) as exc:
        raise SystemExit(f"encred sweep: {exc}")
    from ..sweep.engine import SweepError, run_sweep
    from ..sweep.protocol import SweepUnsupportedError

    try:
        rep = run_sweep(base, chosen, datasets, args.work_dir, limit=args.limit, decode_batch=args.decode_batch,
                        progress=not args.no_progress)
    except (SweepError, SweepUnsupportedError) as exc:
        raise SystemExit(f"encred sweep: {exc}")
    for d in rep.datasets:
        calls = ", ".join(f"{k}={v}" for k, v in d.encoder_calls.items()) or "-"
        print(f"{d.dataset}: {d.samples} samples, {d.computed_samples} computed, {len(d.written)} prediction "
              f"files written, {len(d.skipped_variants)} variants already complete; encoder calls: {calls}; "
              f"{d.seconds:.1f} s")
    return 0
