"""Markdown tables of :mod:`.costmodel` plans (what `encred profile --plan` prints and docs/sweeps.md shows)."""

from __future__ import annotations

from typing import Sequence

from .costmodel import Plan


def _t(x: float) -> str:
    """TFLOPs with sensible digits."""
    return f"{x / 1e12:.3g}"


def _h(seconds: float) -> str:
    h = seconds / 3600
    return f"{h:,.0f}" if h >= 100 else f"{h:.1f}"


def _tower_cell(p: Plan) -> str:
    b = p.base
    return ", ".join(f"{k} {b.vision_flops([k]) / 1e12:.3g}" for k in b.towers)


def per_sample_table(plans: Sequence[Plan]) -> str:
    """Per sample (question-weighted mean over the suite): tower FLOPs, prefill and decode per subset."""
    rows = ["| base | LLM | tower TFLOPs per sample (each) | connector | prompt tokens | prefill TFLOPs / subset "
            "| decode TFLOPs / subset |", "|---|---|---|---|---|---|---|"]
    for p in plans:
        n = p.questions * len(p.subsets)
        tokens = sum(d.questions * p.base.prompt_tokens(d) for d in p.datasets) / p.questions
        rows.append(f"| {p.base.name} | {p.base.llm_name} | {_tower_cell(p)} | {_t(p.base.connector_flops())} | "
                    f"{tokens:.0f} | {_t(p.per_variant.flops['prefill'] / n)} | {_t(p.per_variant.flops['decode'] / n)} |")
    return "\n".join(rows)


def lattice_table(plans: Sequence[Plan]) -> str:
    """Whole lattice x suite: per-variant vs sweep (FLOPs and GPU-hours), what dominates."""
    g = plans[0].gpu if plans else None
    rows = ["| base | variants | questions | per-variant PFLOPs | sweep PFLOPs | FLOP ratio | per-variant GPU-h "
            "| sweep GPU-h | speed-up | dominates the sweep | vision share of per-variant |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in plans:
        pv, sw = p.per_variant, p.sweep
        dom, share = sw.dominant()
        rows.append(f"| {p.base.name} | {len(p.subsets)} | {p.questions} | {pv.total_flops / 1e15:,.0f} | "
                    f"{sw.total_flops / 1e15:,.0f} | {pv.total_flops / sw.total_flops:.2f}x | "
                    f"{_h(pv.total_seconds)} | {_h(sw.total_seconds)} | "
                    f"{pv.total_seconds / sw.total_seconds:.2f}x | {dom} {share:.0%} | "
                    f"{pv.seconds['towers'] / pv.total_seconds:.0%} |")
    if g:
        rows.append(f"\nGPU-hours on {g.name} at {g.mfu:.0%} of {g.peak_tflops:g} TFLOP/s (compute-bound) and "
                    f"{g.mbu:.0%} of {g.bandwidth_gbs:g} GB/s (memory-bound), bf16, roofline per forward call.")
    return "\n".join(rows)


def phase_table(plans: Sequence[Plan]) -> str:
    """Shares of sweep GPU time by phase, and what each lever could still save."""
    rows = ["| base | sweep: towers | connector | prefill | decode | shared prefix: prefill tokens saved / subset "
            "| sweep GPU-h, shared prefix | saved | decode at unbounded batch would save |",
            "|---|---|---|---|---|---|---|---|---|"]
    for p in plans:
        sw, sh = p.sweep, p.sweep_shared
        tot = sw.total_seconds
        saved = 1 - sh.total_seconds / tot
        dec_gain = (sw.seconds["decode"] - p.decode_unbounded_s) / tot
        rows.append(f"| {p.base.name} | {sw.seconds['towers'] / tot:.0%} | {sw.seconds['connector'] / tot:.1%} | "
                    f"{sw.seconds['prefill'] / tot:.0%} | {sw.seconds['decode'] / tot:.1%} | "
                    f"{p.base.prefix_tokens} of {p.base.prompt_tokens(p.datasets[0]) - p.datasets[0].question_tokens}"
                    f"+question | {_h(sh.total_seconds)} | {saved:.1%} | {dec_gain:.1%} |")
    return "\n".join(rows)


def render(plans: Sequence[Plan]) -> str:
    if not plans:
        return "(no plans)"
    ds = ", ".join(d.name for d in plans[0].datasets)
    parts = [f"Datasets: {ds} ({plans[0].questions} questions)", "", "Per sample:", per_sample_table(plans), "",
             "Lattice x datasets:", lattice_table(plans), "", "Where the sweep's time goes, and the levers:",
             phase_table(plans)]
    if any(p.budgets for p in plans):
        parts += ["", "Token budgets, full model, per sample (each variant run on its own; formulas: "
                      "vlmeval_encred/sweep/costmodel.py, docs/tokens.md):", budget_table(plans)]
    for p in plans:
        dom, share = p.sweep.dominant()
        parts.append(f"\n{p.base.name}: {dom} dominates the sweep ({share:.0%} of its GPU time); "
                     f"the sweep (towers shared, subsets prefilled and decoded as one batch) needs "
                     f"{p.sweep.total_seconds / p.per_variant.total_seconds:.0%} of the per-variant GPU time, "
                     f"{p.sweep_shared.total_seconds / p.per_variant.total_seconds:.0%} with the shared prefix.")
    return "\n".join(parts)


def per_variant_table(base_name: str, costs: Sequence, names: Sequence[str], gpu) -> str:
    """``encred profile --plan --per-variant``: per variant (run on its own, batch 1), per sample --
    vision, prefill and decode FLOPs, predicted latency and both ratios to the full model (the
    unpruned variant keeping every encoder, which must be among ``costs``); the last two columns
    are the visual tokens the LLM receives and the prefill against the full model's (a token
    budget's saving)."""
    full = max(costs, key=lambda c: (len(c.kept), c.tokens is None))
    rows = [f"{base_name} on {gpu.name} ({gpu.mfu:.0%} MFU, {gpu.mbu:.0%} MBU), per sample, each variant run on its "
            "own (batch 1):", "",
            "| variant | kept encoders | vision TFLOPs | vision vs full | prefill TFLOPs | decode TFLOPs "
            "| latency ms | latency vs full | latency change | visual tokens | prefill vs full |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, c in zip(names, costs):
        rv = c.vision_flops / full.vision_flops if full.vision_flops else float("nan")
        rl = c.seconds / full.seconds
        rows.append(f"| {name} | {'+'.join(c.kept) or '(none)'} | {c.vision_flops / 1e12:.3f} | {rv:.1%} | "
                    f"{c.prefill_flops / 1e12:.2f} | {c.decode_flops / 1e12:.3f} | {c.seconds * 1e3:.1f} | "
                    f"{rl:.3f} | {rl - 1:+.1%} | {c.visual_tokens} | {c.prefill_flops / full.prefill_flops:.1%} |")
    return "\n".join(rows)


def budget_table(plans: Sequence[Plan]) -> str:
    """Per token budget of each plan, on the full model, per sample: visual tokens kept, prefill
    TFLOPs and the predicted savings against the unpruned model (:func:`.costmodel.budget_savings`)."""
    from .costmodel import budget_savings, variant_costs

    rows = ["| base | budget | visual tokens to the LLM | prefill TFLOPs | prefill saved | decode saved "
            "| latency saved |", "|---|---|---|---|---|---|---|"]
    for p in plans:
        if not p.budgets:
            continue
        ref = variant_costs(p.base, p.gpu, p.datasets, [tuple(p.base.towers)])[0]
        rows.append(f"| {p.base.name} | unpruned | {p.base.visual_tokens()} | {_t(ref.prefill_flops)} | - | - | - |")
        for b in budget_savings(p.base, p.gpu, p.datasets, p.budgets):
            rows.append(f"| {p.base.name} | {_budget_label(b.tokens)} | {b.visual_tokens} (-{b.removed}) | "
                        f"{_t(b.prefill_flops)} | {b.prefill_saving:.1%} | {b.decode_saving:.1%} | "
                        f"{b.seconds_saving:.1%} |")
    return "\n".join(rows)


def _budget_label(tokens) -> str:
    return f"keep {tokens.keep}% " + ("fusion" if tokens.stage == "fusion" else f"llm after K={tokens.layer}")


def shard_table(base_name: str, costs: dict, shards: int, pick: str) -> str:
    """Cluster sweep jobs per dataset split by samples versus by subsets (see :func:`.parallel.shard_costs`)."""
    s, v = costs["samples"], costs["subsets"]
    return "\n".join([
        f"| base | jobs per dataset | by samples: GPU-h | wall h on {shards} GPUs | by subsets: GPU-h "
        f"| wall h on {shards} GPUs | --shard-by auto |", "|---|---|---|---|---|---|---|",
        f"| {base_name} | {shards} | {_h(s['total_s'])} | {_h(s['wall_s'])} | {_h(v['total_s'])} | {_h(v['wall_s'])} "
        f"| {pick} |"])
