"""Masking versus retraining, in miniature, on the CPU demo (opt-in; tens of minutes to hours).

Masking measures what one trained checkpoint relies on; retraining on encoder subsets
measures what each encoder *can* provide.  This script does both on the demo model:

1. Retrains ``encred_tiny`` on every non-empty encoder subset S with the defaults of
   ``python -m vlmeval_encred.demo.train`` -- same data, same seed, same steps and
   batch size, same dropout of the kept towers; the towers outside S are zeroed at
   every step (``train(..., encoders=S)``), exactly as masking zeroes them.
2. Registers each retrained checkpoint as a base (``rt_<S>``) and evaluates the
   variant that masks the towers outside S through VLMEvalKit's own ``run.main``
   (``--judge exact_matching``), like any other variant; the shipped checkpoint's full
   and leave-one-out variants are evaluated the same way.
3. Per category: the encoder ranking by masking (CUR of the shipped model) and by
   retraining (capacity = the retrained single-encoder score; necessity = retrained
   full minus retrained leave-one-out), Kendall's tau between them, and whether the
   best single encoder agrees.  Nothing is tuned towards agreement or disagreement.

    python benchmarks/masking_vs_retraining.py --work DIR [--samples 300] [--threads 2]
    python benchmarks/masking_vs_retraining.py --work DIR --smoke   # tiny budget: checks the plumbing only

Writes ``DIR/masking_vs_retraining.json`` and ``.png`` and prints the tables and wall times.
Re-running reuses finished checkpoints and VLMEvalKit results in DIR.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import sys
import time
import warnings
from pathlib import Path

BASE = "encred_tiny"


def kendall_tau(a: list[float], b: list[float]) -> float | None:
    """Kendall's tau-b (scipy) of two score vectors over the same encoders; None if undefined."""
    import math

    from scipy.stats import kendalltau

    t = float(kendalltau(a, b).statistic)
    return None if math.isnan(t) else t


def ranking(scores: dict[str, float]) -> list[str]:
    return sorted(scores, key=lambda e: -scores[e])


def best(scores: dict[str, float]) -> str | None:
    """The single best encoder, or None when the top is tied (no winner to agree on)."""
    top = max(scores.values())
    tops = [e for e, v in scores.items() if v == top]
    return tops[0] if len(tops) == 1 else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="directory for data, checkpoints and VLMEvalKit results")
    ap.add_argument("--samples", type=int, default=300, help="benchmark questions per category (demo: 300)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smoke", action="store_true",
                    help="5 steps on 40 training samples per category, 12 questions: plumbing only, no findings")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ["LMUData"] = str(work / "LMUData")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from vlmeval_encred.demo import data as demo_data
    from vlmeval_encred.demo.train import train
    from vlmeval_encred.registry import get_base, register_base

    budget = dict(steps=5, n_train=40, n_eval=10) if args.smoke else {}
    n_q = 12 if args.smoke else args.samples
    t_all = time.perf_counter()
    written = demo_data.write_datasets(work / "LMUData", samples_per_category=n_q)
    datasets = {w.name: cat for w, cat in zip(written, ("General", "OCR & Chart", "Vision-Centric"))}
    shipped = get_base(BASE)
    encs = shipped.encoders
    subsets = [s for k in range(1, len(encs) + 1) for s in itertools.combinations(encs, k)]

    # 1. retraining --------------------------------------------------------------------------
    train_s: dict[str, float] = {}
    ckpts: dict[tuple[str, ...], Path] = {}
    for s in subsets:
        d = work / "ckpt" / ("smoke-" if args.smoke else "") / "+".join(s)
        ckpts[s] = d
        if (d / "model.safetensors").is_file():
            continue
        t = time.perf_counter()
        print(f"training on {', '.join(s)} ...", flush=True)
        train(d, threads=args.threads, quiet=True, encoders=list(s), **budget)
        train_s["+".join(s)] = time.perf_counter() - t
        print(f"  {train_s['+'.join(s)]:.0f} s", flush=True)

    # 2. VLMEvalKit --------------------------------------------------------------------------
    from vlmeval_encred.commands.demo import _load_run_main, _read_acc, _redirect_fds, _run_vlmeval
    from vlmeval_encred.flavour import detect

    log = work / "vlmeval.log"
    names: dict[tuple[str, ...], str] = {}
    for s in subsets:
        spec = dataclasses.replace(shipped, name=("rt_smoke_" if args.smoke else "rt_") + "_".join(s),
                                   checkpoint=str(ckpts[s]), description=f"demo retrained on {', '.join(s)}")
        register_base(spec)
        names[s] = spec.entry_name(tuple(e for e in encs if e not in s))
    masking = {"full": shipped.entry_name(()), **{e: shipped.entry_name((e,)) for e in encs}}
    t_eval = time.perf_counter()
    with open(log, "a") as logf, _redirect_fds(logf), contextlib.redirect_stdout(logf), \
            contextlib.redirect_stderr(logf), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import vlmeval.config as vcfg

        from vlmeval_encred.vlmeval_plugin import after_config

        after_config(vcfg)  # the retrained bases registered above
        flavour = detect()
        vlmeval_main = _load_run_main(flavour)  # ms-vlmeval's vlmeval.run or a checkout's run.py
        reuse = ["--reuse"] if flavour.layout == "run-folders" else []
        results = work / "results"
        for model in [*masking.values(), *names.values()]:
            if all(_read_acc(results, model, d) is not None for d in datasets):
                continue
            _run_vlmeval(vlmeval_main, ["--model", model, "--data", *datasets, "--judge", "exact_matching",
                                        "--work-dir", str(results), "--api-nproc", "1", *reuse],
                         prog=str(flavour.run_py))
    eval_s = time.perf_counter() - t_eval
    acc = {m: {datasets[d]: _read_acc(results, m, d) for d in datasets}
           for m in [*masking.values(), *names.values()]}

    # 3. rankings ----------------------------------------------------------------------------
    out: dict = {"samples_per_category": n_q, "smoke": args.smoke, "budget": budget or "train.py defaults",
                 "categories": {}, "train_seconds": train_s, "eval_seconds": eval_s}
    full_rt = names[tuple(encs)]
    for cat in datasets.values():
        full = acc[masking["full"]][cat]
        cur = {e: (full - acc[masking[e]][cat]) / full * 100 for e in encs}
        cap = {e: acc[names[(e,)]][cat] for e in encs}
        nec = {e: acc[full_rt][cat] - acc[names[tuple(x for x in encs if x != e)]][cat] for e in encs}
        row = {"cur": cur, "capacity": cap, "necessity": nec,
               "ranking_masking": ranking(cur), "ranking_capacity": ranking(cap), "ranking_necessity": ranking(nec),
               "tau_cur_capacity": kendall_tau([cur[e] for e in encs], [cap[e] for e in encs]),
               "tau_cur_necessity": kendall_tau([cur[e] for e in encs], [nec[e] for e in encs]),
               "best_masking": best(cur), "best_capacity": best(cap),
               "best_single_agrees": None if best(cur) is None or best(cap) is None else best(cur) == best(cap),
               "full_shipped": full, "full_retrained": acc[full_rt][cat]}
        out["categories"][cat] = row
    out["wall_seconds"] = time.perf_counter() - t_all
    (work / "masking_vs_retraining.json").write_text(json.dumps(out, indent=1))
    _figure(work / "masking_vs_retraining.png", out, list(encs))
    for cat, r in out["categories"].items():
        print(f"\n{cat}: full shipped {r['full_shipped']:.1f}, full retrained {r['full_retrained']:.1f}")
        print(f"  {'encoder':<8} {'CUR %':>8} {'capacity':>9} {'necessity':>10}")
        for e in encs:
            print(f"  {e:<8} {r['cur'][e]:8.1f} {r['capacity'][e]:9.1f} {r['necessity'][e]:10.1f}")
        print(f"  masking {' > '.join(r['ranking_masking'])}; capacity {' > '.join(r['ranking_capacity'])}; "
              f"necessity {' > '.join(r['ranking_necessity'])}")
        print(f"  Kendall tau(CUR, capacity) {r['tau_cur_capacity']}, tau(CUR, necessity) {r['tau_cur_necessity']}; "
              f"best single encoder by masking {r['best_masking']}, by capacity {r['best_capacity']}: "
              f"agree {r['best_single_agrees']}")
    print(f"\ntraining {sum(train_s.values()):.0f} s ({len(train_s)} subsets trained now), VLMEvalKit {eval_s:.0f} s, "
          f"total {out['wall_seconds']:.0f} s; {work / 'masking_vs_retraining.json'}")
    if args.smoke:
        print("smoke run: a 5-step budget says nothing about the encoders; run without --smoke for findings")
    return 0


def _figure(path: Path, out: dict, encs: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    cats = list(out["categories"])
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    for ax, (key, label) in zip(axes, (("cur", "masking: CUR (%)"), ("capacity", "retraining: capacity"),
                                       ("necessity", "retraining: necessity (points)"))):
        w = 0.8 / len(encs)
        for j, e in enumerate(encs):
            xs = [i + (j - (len(encs) - 1) / 2) * w for i in range(len(cats))]
            ax.bar(xs, [out["categories"][c][key][e] for c in cats], w, label=e)
        ax.set_xticks(range(len(cats)), cats, fontsize=8)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(label, fontsize=9)
    axes[0].legend(fontsize=8)
    fig.suptitle("encred_tiny: masking one checkpoint vs retraining on encoder subsets", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
