"""``encred profile``: per-variant vision FLOPs, total FLOPs, latency and memory relative to the full model."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="cost of each variant relative to the full model (sheet + figure)",
                       description="Vision FLOPs (each kept encoder counted once), total FLOPs per sample "
                                   "(FlopCounterMode), median latency after warm-up and memory of every "
                                   "selected variant, on the GPU if there is one, else the CPU.")
    p.add_argument("--model", required=True, help="base model name")
    p.add_argument("--subsets", default="all", help="'all', 'k=1', 'k<=2' or entry names")
    p.add_argument("--samples", type=int, default=2, help="synthetic messages per measurement")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--out", default=None, help="output prefix (default ./encred_out/profile_<model>)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import tempfile

    from ..registry import RegistryError, get_base
    from ..sweep.profile import profile_variants, synthetic_messages, write_outputs
    from ..sweep.selection import SelectionError, select_entries

    try:
        base = get_base(args.model)
        chosen = select_entries(base, args.subsets)
    except (RegistryError, SelectionError) as exc:
        raise SystemExit(f"encred profile: {exc}")
    with tempfile.TemporaryDirectory() as tmp:
        rows = profile_variants(base, chosen, synthetic_messages(args.samples, tmp), args.repeats, args.warmup)
    paths = write_outputs(rows, args.out or f"encred_out/profile_{base.name}")
    print(f"{'variant':<44} {'vis FLOPs':>9} {'FLOPs':>7} {'latency':>8} {'params':>7}")
    for r in rows:
        print(f"{r['variant']:<44} {r['vision_flops_rel']:>9.3f} {r['total_flops_rel']:>7.3f} "
              f"{r['latency_ms_rel']:>8.3f} {r['param_bytes_rel']:>7.3f}")
    print("relative to the full model; written: " + ", ".join(str(p) for p in paths.values()))
    return 0
