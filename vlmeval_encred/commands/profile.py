"""``encred profile``: per-variant vision FLOPs, total FLOPs, latency and memory relative to the full model;
``encred profile --plan``: the analytic cost of a lattice x suite at real model sizes (no model loaded)."""

from __future__ import annotations

import argparse

from ..validate import float_range, int_range

PLAN_DEFAULT_BASES = ("eagle_x5", "eagle_x4_8b_plus", "cambrian1_8b", "imof_13b", "eagle2_9b", "deepseek_vl_7b_hf")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="cost of each variant relative to the full model (sheet + figure); "
                                       "--plan: GPU-hours of a lattice x suite, per-variant vs sweep",
                       description="Vision FLOPs (each kept encoder counted once), total FLOPs per sample "
                                   "(FlopCounterMode), median latency after warm-up and memory of every "
                                   "selected variant, on the GPU if there is one, else the CPU.  With --plan: "
                                   "no model is loaded; the architecture numbers of vlmeval_encred/sweep/"
                                   "costdata.yaml give per family the FLOPs of each tower, the prefill and the "
                                   "decoding, and the lattice x datasets cost per-variant versus sweep in FLOPs "
                                   "and GPU-hours on a reference GPU.")
    p.add_argument("--model", default=None, help="base model name (--plan: comma-separated names or 'all'; "
                                                 f"default {','.join(PLAN_DEFAULT_BASES)})")
    p.add_argument("--subsets", default="all", help="'all', 'k=1', 'k<=2' or entry names")
    p.add_argument("--samples", type=int_range(1), default=2, help="synthetic messages per measurement")
    p.add_argument("--repeats", type=int_range(1), default=5, help="timed runs per variant (>= 1)")
    p.add_argument("--warmup", type=int_range(0), default=1, help="untimed runs first (>= 0)")
    p.add_argument("--out", default=None, help="output prefix (default ./encred_out/profile_<model>)")
    g = p.add_argument_group("--plan (analytic, real sizes)")
    g.add_argument("--plan", action="store_true", help="print the cost model's tables instead of measuring")
    g.add_argument("--data", default="paper15", help="suite / short / official dataset names (default paper15)")
    g.add_argument("--gpu", default="a100_80gb_bf16",
                   help="reference GPU in costdata.yaml: A100, H100, H200 or a key such as a100_80gb_bf16 (default)")
    g.add_argument("--per-variant", action="store_true",
                   help="one model (--model): per variant, vision, prefill and decode FLOPs and the predicted "
                        "latency per sample, with their ratios to the full model")
    g.add_argument("--keep", default=None, metavar="PERCENTS",
                   help="token budgets to cost (e.g. 25,50,100; 100 or 'none' = unpruned), crossed with --subsets "
                        "as `encred sweep --keep` crosses them: each budget's predicted prefill, decode and latency "
                        "saving (formulas: docs/tokens.md)")
    g.add_argument("--token-stage", default=None, metavar="STAGES",
                   help="with --keep: fusion (default), llm (the base's default K), llm<K>, or a comma list")
    g.add_argument("--shards", type=int_range(1), default=4,
                   help="cluster sweep jobs per dataset to compare --shard-by samples and subsets for (default 4)")
    g.add_argument("--mfu", type=float_range(0, 1, lo_open=True, what="a fraction of the peak, not a percentage"), default=None, help="override the GPU's assumed FLOP utilisation (0-1)")
    g.add_argument("--mbu", type=float_range(0, 1, lo_open=True, what="a fraction of the peak, not a percentage"), default=None, help="override the GPU's assumed bandwidth utilisation (0-1)")
    g.add_argument("--answer-tokens", type=int_range(1), default=None,
                   help="override every dataset's assumed answer length (tokens incl. end of sequence)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.plan:
        return run_plan(args)
    if not args.model:
        raise SystemExit("encred profile: --model is required (or use --plan)")
    if args.keep or args.token_stage:
        raise SystemExit("encred profile: --keep/--token-stage cost token budgets analytically and need --plan; "
                         "to measure a budget variant, name it in --subsets (e.g. <base>_keep25)")
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


def build_plans(models: str | None, subsets: str, data: str, gpu_name: str, mfu: float | None = None,
                mbu: float | None = None, answer_tokens: int | None = None, keep: str | None = None,
                token_stage: str | None = None) -> list:
    """The :class:`~vlmeval_encred.sweep.costmodel.Plan` of each named base (what ``--plan`` prints);
    ``keep``/``token_stage`` add token budgets as ``encred sweep --keep`` does."""
    from ..registry import bases, get_base
    from ..sweep import costmodel
    from ..sweep.selection import resolve_datasets, select_entries

    if not models:
        names = list(PLAN_DEFAULT_BASES)
    elif models.strip() == "all":
        names = [b.name for b in bases()]
    else:
        names = [n.strip() for n in models.split(",") if n.strip()]
    g = costmodel.gpu(gpu_name, mfu, mbu)
    datasets = [costmodel.dataset(d, answer_tokens) for d in resolve_datasets(data.split(","))]
    plans = []
    for name in names:
        base = get_base(name)
        cost = costmodel.base_cost(name, base.encoders)
        chosen = _with_budgets(base, select_entries(base, subsets), keep, token_stage)
        plans.append(costmodel.plan(cost, g, datasets, [e.kept for e in chosen], [e.tokens for e in chosen]))
    return plans


def _with_budgets(base, chosen: list, keep: str | None, token_stage: str | None) -> list:
    """:func:`~vlmeval_encred.sweep.selection.with_budgets`, its notes printed (the sweep prints them too)."""
    from ..sweep.selection import with_budgets

    chosen, notes = with_budgets(base, chosen, keep, token_stage)
    for note in notes:
        print(f"encred profile: {note}")
    return chosen


def run_plan(args: argparse.Namespace) -> int:
    from ..registry import RegistryError
    from ..sweep.costmodel import CostDataError
    from ..sweep.planreport import render
    from ..sweep.selection import SelectionError

    if args.per_variant:
        try:
            print(per_variant_report(args.model, args.subsets, args.data, args.gpu, args.mfu, args.mbu,
                                     args.answer_tokens, args.keep, args.token_stage))
        except (RegistryError, SelectionError, CostDataError) as exc:
            raise SystemExit(f"encred profile --plan --per-variant: {exc}")
        return 0
    try:
        plans = build_plans(args.model, args.subsets, args.data, args.gpu, args.mfu, args.mbu, args.answer_tokens,
                            args.keep, args.token_stage)
        shards = shard_report(plans, args.shards)
    except (RegistryError, SelectionError, CostDataError) as exc:
        raise SystemExit(f"encred profile --plan: {exc}")
    print(render(plans))
    print(f"\nCluster sweeps, {args.shards} jobs per dataset (encred sweep --cluster --shards {args.shards} "
          "--shard-by samples | subsets | auto):")
    print(shards)
    return 0


def per_variant_report(model: str | None, subsets: str, data: str, gpu_name: str, mfu: float | None = None,
                       mbu: float | None = None, answer_tokens: int | None = None, keep: str | None = None,
                       token_stage: str | None = None) -> str:
    """The ``--plan --per-variant`` table of one base (every entry chosen by ``subsets``, crossed with
    the ``keep`` x ``token_stage`` budgets)."""
    from ..registry import RegistryError, get_base
    from ..sweep import costmodel
    from ..sweep.planreport import per_variant_table
    from ..sweep.selection import resolve_datasets, select_entries

    if not model or "," in model or model.strip() == "all":
        raise RegistryError("--per-variant takes one base model: --model <base> (see `encred models`)")
    base = get_base(model.strip())
    g = costmodel.gpu(gpu_name, mfu, mbu)
    datasets = [costmodel.dataset(d, answer_tokens) for d in resolve_datasets(data.split(","))]
    cost = costmodel.base_cost(base.name, base.encoders)
    chosen = _with_budgets(base, select_entries(base, subsets), keep, token_stage)
    if not any(len(e.masked) == 0 and e.tokens is None for e in chosen):  # the ratios need the full model
        chosen = [next(e for e in select_entries(base, "k=0"))] + chosen
    costs = costmodel.variant_costs(cost, g, datasets, [e.kept for e in chosen], [e.tokens for e in chosen])
    n = sum(d.questions for d in datasets)
    ds = ", ".join(d.name for d in datasets)
    answer = ", ".join(sorted({f"{d.answer_tokens}" for d in datasets}))
    return (per_variant_table(base.name, costs, [e.name for e in chosen], g) +
            f"\n\nDatasets: {ds} ({n} questions; means weighted by question count; answer tokens incl. end of "
            f"sequence: {answer}). Pre-processing, model loading and the tokenizer are not counted.")


def shard_report(plans: list, shards: int) -> str:
    """:func:`vlmeval_encred.sweep.planreport.shard_table` rows of each plan's base (its GPU and datasets)."""
    from ..sweep.parallel import pick_shard_by, shard_costs_of
    from ..sweep.planreport import shard_table

    rows: list[str] = []
    for p in plans:
        costs = shard_costs_of(p.base, p.gpu, p.datasets, p.subsets, shards, p.tokens or None)
        table = shard_table(p.base.name, costs, shards, pick_shard_by(costs) if shards > 1 else "(one job)")
        rows += table.splitlines() if not rows else table.splitlines()[2:]
    return "\n".join(rows)
