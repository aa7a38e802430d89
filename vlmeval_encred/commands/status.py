"""``encred status``: done / running / pending / failed per (variant, dataset) of a base model."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="show which (variant, dataset) cells are done, running or failed",
                       description="Reads prediction files, sweep checkpoints and the job records that "
                                   "`encred sweep --cluster ...` writes (plus SLURM's state via submitit).")
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
    rows = collect(args.work_dir, args.model)
    print(json.dumps(rows, indent=1) if args.json else render(rows))
    return 1 if any(r["state"] == "failed" for r in rows) else 0
