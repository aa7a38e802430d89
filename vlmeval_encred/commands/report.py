"""``encred report``: VLMEvalKit result files of masked variants -> CUR/IG, Shapley, intervals.

This command is also the refresh hook: run it after VLMEvalKit finishes a variant (e.g.
``python run.py --model eagle_x5_mask_clip ... && encred report --work-dir outputs --model
eagle_x5``); missing variants are reported as missing, and a re-run replaces only our files.
"""

from __future__ import annotations

import argparse
import sys

from ..validate import MIN_N_BOOT, n_boot, seed


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="turn VLMEvalKit result files of a base model's variants into CUR/IG reports",
        description="Read every variant's results (<work-dir>/<variant>/ in any VLMEvalKit layout) and write "
                    "an Excel workbook, a Markdown summary, JSON and PNG figures: per-benchmark/category/"
                    "overall scores, CUR and IG, the k-masked curve, capacity/necessity, Shapley values and "
                    "interactions, and paired-bootstrap intervals.  Missing cells are listed, never dropped.")
    p.add_argument("--work-dir", default="outputs", help="VLMEvalKit's --work-dir (default: outputs)")
    p.add_argument("--model", required=True, nargs="+",
                   help="base model name (e.g. eagle_x5); variants are derived.  Several registered bases "
                        "(--model A B C) write one cross-model comparison instead")
    p.add_argument("--suite", default="paper15", help="suite name in the suite file (default: paper15)")
    p.add_argument("--suite-file", help="a benchmarks.yaml of your own (same schema; docs/benchmarks.md)")
    p.add_argument("--out", help="output directory (default: <work-dir>/encred_report/<model>/<suite>)")
    p.add_argument("--encoders", help="comma-separated encoder names for a base that is not registered")
    p.add_argument("--n-boot", type=n_boot, default=2000,
                   help=f"bootstrap resamples: 0 = no intervals, else at least {MIN_N_BOOT} (default 2000)")
    p.add_argument("--seed", type=seed, default=0, help="bootstrap random seed (>= 0)")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    p.add_argument("--force", action="store_true",
                   help="replace same-named files in --out even if this tool did not write them")
    p.add_argument("--cache-dir", help="score cache directory (default: $ENCRED_SCORE_CACHE or "
                                       "~/.cache/vlmeval-encred/report); entries are keyed by file path, size, mtime")
    p.add_argument("--no-cache", action="store_true", help="parse every result file again; read/write no cache")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..report import ReportError, build_report
    from ..safe_files import OutputError
    from ..suites import SuiteError

    encoders = [e.strip() for e in args.encoders.split(",") if e.strip()] if args.encoders else None
    if len(args.model) > 1:
        return _compare(args, encoders)
    try:
        res = build_report(args.work_dir, args.model[0], suite=args.suite, out_dir=args.out,
                           suite_file=args.suite_file, n_boot=args.n_boot, seed=args.seed,
                           encoders=encoders, figures=not args.no_figures, force=args.force,
                           cache=False if args.no_cache else (args.cache_dir or True))
    except (ReportError, SuiteError, OutputError) as exc:
        print(f"encred report: {exc}", file=sys.stderr)
        return 2
    counts: dict[str, int] = {}
    for c in res.cells:
        counts[c["status"]] = counts.get(c["status"], 0) + 1
    print(f"{res.base_model} on {res.suite}: {len(res.cells)} cells "
          + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
          + (f"; {len(res.per_sample_issues)} without usable per-sample data (intervals affected, † below)"
             if res.per_sample_issues else ""))
    ov = res.scores.get(res.variants[0]["name"], {}).get("Overall")
    print(f"full model Overall: {'n/a' if ov is None else f'{ov:.2f}'}; IG Overall: "
          + ("n/a" if res.ig.get("Overall") is None else f"{res.ig['Overall']:.2f}"))
    if res.sampled:
        print(f"{len(res.sampled)} cells are SAMPLED (adaptive sweep, estimates from n of N questions); every "
              "number and interval resting on them is marked \u2020 (Markdown, figure) / has 'sampled' (JSON):")
        for c in res.sampled[:12]:
            print(f"  \u2020 {c['variant']} / {c['benchmark']}: {c['score']:.2f} -- {c['note']}")
        if len(res.sampled) > 12:
            print(f"  ... {len(res.sampled) - 12} more")
        for b in res.bootstrap:
            if b.get("sampled") and b["quantity"] == "CUR" and b["lo"] is not None:
                print(f"  \u2020 CUR {b['subject']} at {b['level']}: {b['estimate']:.1f} % "
                      f"[{b['lo']:.1f}, {b['hi']:.1f}]{' excludes 0' if b['distinguishable'] else ''} ({b['sampled']})")
    if args.n_boot == 0:
        print("bootstrap intervals: off (--n-boot 0); no CUR/IG interval is computed or starred")
    _print_cur(res)
    _print_tokens(res)
    for i in res.per_sample_issues[:10]:
        print(f"per-sample data not usable: {i['variant']}/{i['benchmark']}: {i['reason']}")
    if len(res.per_sample_issues) > 10:
        print(f"... {len(res.per_sample_issues) - 10} more (see the Markdown summary)")
    for m in res.missing_metrics[:10]:
        print(f"not computed: {m['metric']} at {m['level']}: needs {m['needs']}")
    if len(res.missing_metrics) > 10:
        print(f"... {len(res.missing_metrics) - 10} more (see the Markdown summary)")
    for m in res.provenance_warnings:
        print(f"warning: {m}", file=sys.stderr)
    for k, p in res.files.items():
        print(f"{k}: {p}")
    return 0


def _print_tokens(res) -> None:
    """One line per token-budget series and mask: the smallest budget keeping 95 % at Overall (docs/report.md)."""
    from ..report.budgets import THRESHOLD, fmt_budget

    if not res.token_variants:
        return
    bad = sum(c["status"] != "ok" for c in res.token_cells)
    print(f"token budgets: {len(res.token_variants)} variants" + (f", {bad} cells not ok" if bad else "")
          + f"; smallest budget keeping {THRESHOLD:.0f} % of the unpruned score (Overall):")
    for x in res.token_budget95:
        if x["level"] == "Overall":
            print(f"  {x['series']}, mask {x['mask']}: {fmt_budget(x)}")
    for n in res.notes:
        if n.startswith("token budgets: "):
            print(f"  {n[len('token budgets: '):]}")


def _print_cur(res) -> None:
    """CUR per encoder at Overall with its interval, and a mark + footnote where partial input weakened it."""
    from ..report.pipeline import weak_notes

    ci = {b["subject"]: b for b in res.bootstrap if b["quantity"] == "CUR" and b["level"] == "Overall"}
    wk = {w["subject"]: w for w in res.weakened if w["level"] == "Overall"}
    parts = []
    for e in res.encoders:
        v, b, w = res.cur[e].get("Overall"), ci.get(e), wk.get(e)
        s = f"{e} {'n/a' if v is None else f'{v:.2f}'}"
        if b is not None and b["lo"] is not None:
            s += f" [{b['lo']:.2f}, {b['hi']:.2f}]"
        elif w is not None:
            s += " (no interval)"
        if w is not None:
            s += f" {w['mark']}"
        parts.append(s)
    print("CUR Overall (%): " + "; ".join(parts))
    for n in weak_notes(list(wk.values())):
        print(f"  {n}")


def _compare(args: argparse.Namespace, encoders: list[str] | None) -> int:
    from ..report import ReportError
    from ..report.compare import build_comparison
    from ..safe_files import OutputError
    from ..suites import SuiteError

    if encoders:
        print("encred report: --encoders names one unregistered base's encoders; a comparison of several "
              "--model takes registered bases only (their encoders come from the registry)", file=sys.stderr)
        return 2
    try:
        res = build_comparison(args.work_dir, args.model, suite=args.suite, out_dir=args.out,
                               suite_file=args.suite_file, figures=not args.no_figures, force=args.force,
                               cache=False if args.no_cache else (args.cache_dir or True))
    except (ReportError, SuiteError, OutputError) as exc:
        print(f"encred report: {exc}", file=sys.stderr)
        return 2
    for x in res.summary:
        ov, ig = x["full"]["Overall"], x["ig"]["Overall"]
        print(f"{x['model']}: {x['variants_present']}/{x['variants_total']} variants complete, full Overall "
              f"{'n/a' if ov is None else f'{ov:.2f}'}, IG Overall {'n/a' if ig is None else f'{ig:.2f}'}"
              + (f" ({x['error']})" if x["error"] else ""))
    if res.missing_cells:
        print(f"{len(res.missing_cells)} cells missing or not ok (listed in the Markdown and sheet 'Missing cells')")
    for k, p in res.files.items():
        print(f"{k}: {p}")
    return 0
