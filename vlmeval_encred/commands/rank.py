"""``encred rank``: effective rank of each encoder's features, per benchmark and over the suite."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..validate import int_range


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rank", help="effective rank of each encoder's features at the fusion point",
        description="Encode every distinct image of the datasets once with the full model (the sweep's encode "
                    "step) and report, per encoder and dataset and over all datasets, the effective rank "
                    "(Roy & Vetterli 2007) of the token x channel feature matrix, with the token and image "
                    "counts; also of the projected features where the family defines a projection hook.")
    p.add_argument("--model", required=True, help="base model name (see `encred models`)")
    p.add_argument("--data", required=True, nargs="+",
                   help="suite names (paper15), paper short names or VLMEvalKit dataset names")
    p.add_argument("--limit", type=int_range(1), default=None, help="first N samples of each dataset")
    p.add_argument("--suite-file", default=None, help="benchmarks.yaml to expand suite names from")
    p.add_argument("--work-dir", default="./outputs", help="VLMEvalKit work dir (default ./outputs)")
    p.add_argument("--out", help="output directory (default: <work-dir>/encred_rank/<model>)")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--force", action="store_true", help="replace same-named files this tool did not write")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..registry import RegistryError, get_base
    from ..report import rank_files
    from ..safe_files import OutputError
    from ..sweep.engine import SweepError
    from ..sweep.features import effective_ranks
    from ..sweep.protocol import SweepUnsupportedError
    from ..sweep.selection import SelectionError, check_datasets, resolve_datasets

    try:
        base = get_base(args.model)
        datasets = resolve_datasets(args.data, args.suite_file)
        check_datasets(datasets, args.suite_file)
    except (RegistryError, SelectionError) as exc:
        print(f"encred rank: {exc}", file=sys.stderr)
        return 2
    try:
        res = effective_ranks(base, datasets, limit=args.limit, progress=not args.no_progress)
        out = Path(args.out) if args.out else Path(args.work_dir) / "encred_rank" / base.name
        files = rank_files.write(res, out, figures=not args.no_figures, force=args.force)
    except (SweepError, SweepUnsupportedError, OutputError) as exc:
        print(f"encred rank: {exc}", file=sys.stderr)
        return 2
    for r in res.rows:
        print(f"{r.encoder:<12} {r.stage:<9} {r.scope[:40]:<40} images {r.images:>6} tokens {r.tokens:>8} "
              f"width {r.width:>5}  effective rank {r.effective_rank:8.2f}")
    for n in res.notes:
        print(f"note: {n}")
    for k, p in files.items():
        print(f"{k}: {p}")
    return 0
