"""``encred sweep``: every selected mask subset of a base model in one pass per dataset."""

from __future__ import annotations

import argparse

from ..validate import float_range, int_range, seed


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep", help="run all selected variants of a base model together, sharing encoder outputs",
        description="Per sample, run each needed encoder once and decode every selected subset as one batch; "
                    "write each variant's prediction file exactly where and as VLMEvalKit's inference would, "
                    "then print the command that evaluates them without inferring (VLMEvalKit's run.py with "
                    "--reuse --mode eval). With --limit N the files go to <work-dir>/encred_limit<N>/, never "
                    "where a full run.py would take them. Resumable; a second sweep of the same files while "
                    "one runs stops at once (exit 1) naming the running one.")
    p.add_argument("--model", required=True, help="base model name (see `encred models`)")
    p.add_argument("--data", required=True, nargs="+",
                   help="suite names (paper15), paper short names or VLMEvalKit dataset names")
    p.add_argument("--subsets", default="all",
                   help="'all', 'k=1' (one encoder masked), 'k<=2', or comma-separated entry names "
                        "(token-budget names such as <base>_mask_<enc>_keep25 included)")
    p.add_argument("--keep", default=None, metavar="PERCENTS",
                   help="token budgets crossed with the selected masks: kept percentages of the visual tokens, "
                        "e.g. 25,50,100 (100 or 'none' = unpruned); each variant is named and written as "
                        "VLMEvalKit's run of <base>[_mask_<enc>...]_keep<NN>[_llm[<K>]] (docs/tokens.md)")
    p.add_argument("--token-stage", default=None, metavar="STAGES",
                   help="with --keep: fusion (default), llm (the base's default layer K), llm<K>, or a comma list")
    p.add_argument("--work-dir", default="./outputs", help="VLMEvalKit work dir (default ./outputs)")
    p.add_argument("--limit", type=int_range(1), default=None,
                   help="first N samples only (as run.py --limit); written to <work-dir>/encred_limit<N>/")
    p.add_argument("--decode-batch", type=int_range(0, extra=" (0 = all of a sample's subsets)"), default=0,
                   help="at most this many subsets per generate call (0 = all of a sample's)")
    p.add_argument("--decode-batch-tokens", type=int_range(0, extra=" (0 = off: each sample decoded on its own)"),
                   default=0, metavar="N",
                   help="decode rows of several consecutive samples in one batch of at most N prompt positions, "
                        "padding included (families whose sweep support has `fuse`); faster on a device that a "
                        "sample's subsets do not fill, but padded batches may change a near-tied answer -- "
                        "0 (default) keeps every answer exactly as a per-variant run's")
    p.add_argument("--suite-file", default=None, help="benchmarks.yaml to expand suite names from")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--vlmeval-root", default=None,
                   help="a VLMEvalKit checkout whose run.py and output layout to use (default: the importable "
                        "vlmeval; also $ENCRED_VLMEVAL_ROOT)")
    a = p.add_argument_group("adaptive (sample questions until each cell's anytime-valid interval meets a target; "
                             "docs/sweeps.md, 'Adaptive sweeps')")
    a.add_argument("--adaptive", action="store_true",
                   help="answer questions in a seeded random order, in rounds, and stop each (variant, dataset) "
                        "cell once its interval on the paired difference to the full model meets the target; "
                        "files go to <work-dir>/encred_adaptive/")
    a.add_argument("--halfwidth", type=float_range(0, 100, lo_open=True, what="percentage points"), default=None,
                   help="target half-width of each cell's interval, in points of the 0-100 score")
    a.add_argument("--decide-sign", action="store_true",
                   help="stop a cell once its interval excludes 0 (or the --halfwidth target is met)")
    a.add_argument("--stop-level", choices=["dataset", "category"], default=None,
                   help="where the target applies: each (variant, dataset) cell (default), or each (variant, "
                        "category) -- the category's datasets are run round-robin until the report's interval "
                        "of the category mean meets the target (categories of the suite named in --data, else "
                        "of the first suite in the suite file holding the datasets)")
    a.add_argument("--max-frac", type=float_range(0, 1, lo_open=True, what="fraction of each dataset"),
                   default=None, help="budget cap: stop every cell after this fraction of a dataset (default 1)")
    a.add_argument("--round-size", type=int_range(1), default=None,
                   help="units (questions, or circular groups) per round (default 50)")
    a.add_argument("--seed", type=seed, default=0, help="seed of the question order (default 0)")
    a.add_argument("--alpha", type=float_range(0, 0.5, lo_open=True, what="1 - confidence level"), default=0.05,
                   help="intervals hold at every round with probability >= 1 - alpha (default 0.05)")
    a.add_argument("--complete", default=None, metavar="SUBSETS",
                   help="turn sampled cells into full ones: a plain sweep of these subsets (plus the full model) "
                        "that reuses every answer the adaptive sweep computed")
    c = p.add_argument_group("cluster (submitit job array over (variant or lattice shard, dataset))")
    c.add_argument("--cluster", choices=["slurm", "local", "debug"], default=None,
                   help="submit instead of running here; 'local' runs the same jobs as local processes")
    c.add_argument("--per-variant", action="store_true",
                   help="one plain VLMEvalKit run per (variant, dataset) instead of sweep shards")
    c.add_argument("--shards", type=int_range(1), default=1, help="this many sweep jobs per dataset (see --shard-by)")
    c.add_argument("--shard-by", choices=["samples", "subsets", "auto"], default="auto",
                   help="split each dataset's samples across the --shards jobs (every job runs each needed tower "
                        "once per image and decodes every subset; the last to finish writes the files) or split "
                        "the lattice of subsets (a tower two jobs keep runs in both); auto (default): whichever "
                        "the cost model (`encred profile --plan`) says is cheaper for this lattice")
    c.add_argument("--gpus", type=int_range(0, extra=" (0 = CPU-only jobs)"), default=1,
                   help="without --cluster: N > 1 runs the sweep as N processes under torchrun, the samples of "
                        "each dataset split across them (one per GPU; gloo CPU processes without CUDA); with "
                        "--cluster: GPUs per job (>1: torchrun data parallelism of per-variant runs)")
    c.add_argument("--partition", default=None)
    c.add_argument("--timeout-min", type=int_range(1), default=600, help="minutes per job (default 600)")
    c.add_argument("--judge", default=None, help="--judge for per-variant VLMEvalKit runs (e.g. exact_matching)")
    c.add_argument("--wait", action="store_true", help="wait for the jobs and print `encred status`")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..registry import RegistryError, get_base
    from ..sweep.selection import SelectionError, check_datasets, resolve_datasets, select_entries, with_budgets

    import os

    from ..flavour import ROOT_ENV, FlavourError, detect

    try:
        if args.vlmeval_root:
            os.environ[ROOT_ENV] = str(detect(args.vlmeval_root).root)  # layout and run.py of that checkout
        fl = detect()
        if args.cluster and args.per_variant and args.limit and not fl.has_limit:
            raise FlavourError(f"--limit with --per-variant: {fl.label}'s run.py ({fl.run_py}) has no --limit; "
                               "drop --limit or use sweep cells (without --per-variant), which apply it themselves")
    except FlavourError as exc:
        raise SystemExit(f"encred sweep: {exc}")
    from ..validate import ValidationError, check_adaptive, check_decode_batch_tokens

    try:
        check_adaptive(adaptive=args.adaptive, halfwidth=args.halfwidth, decide_sign=args.decide_sign,
                       max_frac=args.max_frac, round_size=args.round_size, limit=args.limit, cluster=args.cluster,
                       complete=args.complete, stop_level=args.stop_level)
        check_decode_batch_tokens(args.decode_batch_tokens, adaptive=args.adaptive, cluster=args.cluster)
    except ValidationError as exc:
        raise SystemExit(f"encred sweep: {exc}")
    try:
        base = get_base(args.model)
        chosen = select_entries(base, args.complete or args.subsets)
        if args.complete is not None and chosen[0].masked:  # the full model's file: CUR needs it complete too
            chosen = select_entries(base, "k=0") + chosen
        chosen, notes = with_budgets(base, chosen, args.keep, args.token_stage)
        if (args.adaptive or args.complete is not None) and any(e.tokens is not None for e in chosen):
            raise SelectionError("token budgets (--keep, or _keep<NN> names) are not swept adaptively: adaptive "
                                 "sweeps pair each mask with the full model; run a plain sweep with --keep")
        for note in notes:
            print(f"encred sweep: {note}")
        datasets = resolve_datasets(args.data, args.suite_file)
        check_datasets(datasets, args.suite_file)
    except (RegistryError, SelectionError) as exc:
        raise SystemExit(f"encred sweep: {exc}")
    if args.cluster:
        return _submit(args, base, chosen, datasets)
    from ..sweep import parallel
    from ..sweep.engine import SweepError, run_sweep
    from ..sweep.protocol import SweepUnsupportedError

    if args.adaptive:
        if args.gpus > 1:
            raise SystemExit("encred sweep: --adaptive runs in one process (its rounds are paired across "
                             "variants); drop --gpus, or use a plain sweep with --gpus")
        return _adaptive(args, base, chosen, datasets)
    if args.gpus > 1 and parallel.world()[1] <= 1:  # not yet under torchrun: start it, N copies of this command
        import torch

        from ..validate import ValidationError, check_int

        if torch.cuda.is_available():  # one rank per GPU (each sets its LOCAL_RANK device)
            try:
                check_int(args.gpus, 1, torch.cuda.device_count(), extra=" (the GPUs visible here; without CUDA "
                                                                           "--gpus N starts N CPU processes)")
            except ValidationError as exc:
                raise SystemExit(f"encred sweep: --gpus {exc}")
        return parallel.launch(getattr(args, "argv", None) or _argv(args), args.gpus)
    try:
        rep = run_sweep(base, chosen, datasets, args.work_dir, limit=args.limit, decode_batch=args.decode_batch,
                        progress=not args.no_progress, decode_batch_tokens=args.decode_batch_tokens)
    except (SweepError, SweepUnsupportedError) as exc:
        raise SystemExit(f"encred sweep{_rank_note()}: {exc}")
    finally:
        parallel.shutdown()
    if not parallel.is_main():
        return 0  # rank 0 reports for every rank
    if args.limit:
        print(f"limited to the first {args.limit} samples: prediction files are in {rep.work_dir}/ "
              f"(not where a full run.py looks)")
    for d in rep.datasets:
        calls = ", ".join(f"{k}={v}" for k, v in d.encoder_calls.items()) or "-"
        print(f"{d.dataset}: {d.samples} samples, {d.computed_samples} computed, {len(d.written)} prediction "
              f"files written, {len(d.skipped_variants)} variants already complete; encoder calls: {calls}; "
              f"{d.seconds:.1f} s" + (f" ({parallel.world()[1]} processes, samples split between them)"
                                      if parallel.world()[1] > 1 else ""))
        if d.reused_adaptive:
            print(f"  reused {d.reused_adaptive} answers an adaptive sweep had computed (encred_adaptive/)")
        dec = d.decoding
        if dec.calls:  # the family decodes through sweep.decoding.greedy_subsets
            print(f"  LLM prefill: {dec.prefilled_tokens} of {dec.prompt_tokens} prompt positions computed "
                  f"(template prefix shared across subsets, run {dec.prefix_runs}x); "
                  f"{dec.rows_dropped_early} finished rows left the batch early")
        if dec.shared_batches:
            print(f"  cross-sample decode batches: {dec.shared_batches} (--decode-batch-tokens "
                  f"{args.decode_batch_tokens}; {dec.padding_tokens} padding positions prefilled)")
    _print_evaluation(fl, [e.name for e in chosen], datasets, args.work_dir, args.limit, args.judge)
    return 0


def _rank_note() -> str:
    from ..sweep.parallel import world

    rank, size, _ = world()
    return f" (rank {rank} of {size})" if size > 1 else ""


def _argv(args: argparse.Namespace) -> list[str]:
    """The command line of ``args`` when it was not recorded (``main`` records it)."""
    out = ["sweep", "--model", args.model, "--data", *args.data, "--subsets", args.subsets, "--work-dir",
           args.work_dir, "--decode-batch", str(args.decode_batch), "--decode-batch-tokens",
           str(args.decode_batch_tokens)]
    for opt, val in (("--limit", args.limit), ("--suite-file", args.suite_file), ("--vlmeval-root", args.vlmeval_root),
                     ("--judge", args.judge), ("--keep", getattr(args, "keep", None)),
                     ("--token-stage", getattr(args, "token_stage", None))):
        if val is not None:
            out += [opt, str(val)]
    return out + (["--no-progress"] if args.no_progress else [])


def _print_evaluation(fl, variants, datasets, work_dir, limit, judge) -> None:
    from ..sweep.evalcmd import evaluation_command

    how = ("evaluates the first {0} samples; builds no model".format(limit) if limit
           else "--mode eval: evaluates, and skips rather than infers an incomplete prediction")
    print(f"evaluate with {fl.label} ({how}):")
    print("  " + evaluation_command(fl, variants, datasets, work_dir, limit, judge))


def _submit(args: argparse.Namespace, base, chosen, datasets) -> int:
    from ..sweep import cluster
    from ..sweep.status import collect, render

    shard_by = args.shard_by
    if not args.per_variant and args.shards > 1 and shard_by == "auto":
        from ..sweep.parallel import choose_shard_by

        shard_by, why = choose_shard_by(base.name, base.encoders, [e.kept for e in chosen], datasets, args.shards,
                                        tokens=[e.tokens for e in chosen])
        print(f"--shard-by auto: by {shard_by} ({why})")
    cells = cluster.plan_cells(base.name, [e.name for e in chosen], datasets,
                               "variant" if args.per_variant else "sweep", args.shards,
                               shard_by="samples" if shard_by == "samples" else "subsets")
    ex = cluster.make_executor(args.work_dir, args.cluster, gpus=args.gpus, timeout_min=args.timeout_min,
                               partition=args.partition)
    jobs = cluster.launch(cells, args.work_dir, ex, gpus=args.gpus, limit=args.limit, judge=args.judge,
                          vlmeval_root=args.vlmeval_root)
    print(f"submitted {len(jobs)} of {len(cells)} jobs ({len(cells) - len(jobs)} done or running); "
          f"logs under {args.work_dir}/encred_jobs/submitit/")
    if not args.per_variant:  # per-variant cells run VLMEvalKit's run.py, which evaluates itself
        from ..flavour import detect

        print("once `encred status` shows them predicted, ", end="")
        _print_evaluation(detect(), [e.name for e in chosen], datasets, args.work_dir, args.limit, args.judge)
    if args.wait:
        for j in jobs:
            try:
                j.result()
            except Exception as exc:  # recorded in the cell's state file; status shows it
                print(f"job {j.job_id} failed: {str(exc).splitlines()[-1] if str(exc) else exc}")
        print(render(collect(args.work_dir, base.name)))
    return 0


def _suite_named(data: list[str], suite_file: str | None) -> str | None:
    """The first suite name among ``--data`` (its categories are the category-level targets)."""
    from ..suites import load_raw

    suites = load_raw(suite_file).get("suites") or {}
    return next((d for d in data if d in suites), None)


def _adaptive(args: argparse.Namespace, base, chosen, datasets) -> int:
    from ..sweep.adaptive import run_adaptive
    from ..sweep.confseq import StopRule
    from ..sweep.engine import SweepError
    from ..sweep.protocol import SweepUnsupportedError

    rule = StopRule(halfwidth=args.halfwidth, decide_sign=args.decide_sign,
                    max_frac=1.0 if args.max_frac is None else args.max_frac, alpha=args.alpha)
    try:
        rep = run_adaptive(base, chosen, datasets, args.work_dir, rule=rule, seed=args.seed,
                           round_size=args.round_size or 50, suite_file=args.suite_file,
                           decode_batch=args.decode_batch, progress=not args.no_progress,
                           level=args.stop_level or "dataset", suite=_suite_named(args.data, args.suite_file))
    except (SweepError, SweepUnsupportedError) as exc:
        raise SystemExit(f"encred sweep: {exc}")
    print(f"adaptive sweep of {base.name}: {rule.describe()}; seed {args.seed}"
          + ("; targets per (variant, category)" if rep.level == "category" else ""))
    if rep.added_full:
        print(f"  added the full model {base.name} (every cell is a paired difference to it)")
    for d in rep.datasets:
        if not d.adaptive:
            print(f"{d.dataset}: run in full ({d.how}); prediction files in {args.work_dir}/<variant>/")
            continue
        stopped = sum(1 for c in d.cells.values() if c["quantity"] != "score" and c["status"] != "open")
        n_var = sum(1 for c in d.cells.values() if c["quantity"] != "score")
        print(f"{d.dataset}: {d.answered_questions} of {d.questions} questions answered by the full model "
              f"({d.units} units of {d.how.split(',')[0]}), {d.rounds} rounds, {stopped}/{n_var} cells stopped; "
              f"files in {args.work_dir}/encred_adaptive/{base.name}/{d.dataset}/")
        for name, c in d.cells.items():
            est = "n/a" if c["estimate"] is None else f"{c['estimate']:+.1f}" if c["quantity"] != "score" \
                else f"{c['estimate']:.1f}"
            print(f"  {name}: {c['quantity']} {est} [{c['lo']:.1f}, {c['hi']:.1f}] sampled {c['n']}/{c['N']} "
                  f"({c['status']}{': ' + c['stop'] if c['stop'] and c['status'] != 'complete' else ''})")
    if rep.level == "category":
        import json
        from pathlib import Path

        cats = json.loads((Path(args.work_dir) / "encred_adaptive" / base.name / "categories.json").read_text())
        for cat, rec in cats["categories"].items():
            print(f"category {cat} (dataset weights {rec['datasets']}):")
            for name, c in rec["variants"].items():
                est = "n/a" if c["estimate"] is None else f"{c['estimate']:+.1f}"
                print(f"  {name}: variant - full {est} [{c['lo']:.1f}, {c['hi']:.1f}] ({c['status']}"
                      f"{': ' + c['stop'] if c['stop'] and c['status'] != 'complete' else ''})")
    print("sampled cells are not results VLMEvalKit will evaluate; `encred report` reads them and marks them; "
          "`encred sweep --complete SUBSETS` turns cells into full ones, reusing these answers")
    return 0
