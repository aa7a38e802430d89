"""``encred status``: evaluated / predicted / partial / running / pending / failed per (variant, dataset)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="show which (variant, dataset) cells are evaluated, predicted, partial, "
                                      "running or failed",
                       description="Reads prediction files (evaluated: VLMEvalKit's evaluation outputs are newer "
                                   "than the prediction; predicted: complete but not evaluated; partial: samples "
                                   "missing or failed), sweep checkpoints, limited runs (<work-dir>/encred_limit<N>/) "
                                   "and the job records that `encred sweep --cluster ...` writes (plus SLURM's state "
                                   "via submitit). Exit status 1 when something failed.")
    p.add_argument("--work-dir", default="./outputs")
    p.add_argument("--model", required=True, help="base model name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..registry import RegistryError, get_base
    from ..sweep.status import collect, render

    try:
        get_base(args.model)
    except RegistryError as exc:
        raise SystemExit(f"encred status: {exc}")
    work = Path(args.work_dir).expanduser()
    if not work.is_dir():
        # "nothing found" for a mistyped folder would read as "nothing run yet"
        print(f"encred status: work dir {work} {'is not a folder' if work.exists() else 'does not exist'} "
              "(VLMEvalKit's --work-dir, e.g. ./outputs)", file=sys.stderr)
        return 2
    rows = collect(args.work_dir, args.model)
    print(json.dumps(rows, indent=1) if args.json else render(rows))
    return 1 if any(r["state"] == "failed" for r in rows) else 0
