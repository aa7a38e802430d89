"""How long `encred report` takes on a full 5-encoder lattice: 32 variants x 15 benchmarks.

Synthetic sheets in VLMEvalKit's formats (the files its evaluate writes: `_acc.csv`,
`_<judge>_result.xlsx`, `_results.xlsx`, MME `_score.csv` + `_auxmatch.xlsx`, OCRBench
`_score.json` + predictions, MathVista judge sheet + `_score.csv`), written with
xlsxwriter like VLMEvalKit's dump().  Sample counts are the real datasets' sizes, capped
by --cap (default 2000) to keep generation quick; --cap 0 uses the real sizes.
Prints the time and its breakdown (read, metrics, bootstrap with 2000 resamples, write) for a
cold run (empty score cache), a warm run over the same files (cache hits; output up to date)
and a warm run into a new output directory (cache hits, every file written), with ratios.
Targets on the 2-core development machine: cold < 10 s, warm < 2 s.

    python benchmarks/report_speed.py [--cap N] [--n-boot 2000] [--keep DIR] [--engine openpyxl]
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ENC = ("clip", "convnext", "sam", "eva02", "pix2struct")
BASE = "speedx5"
SIZES = {"GQA_TestDev_Balanced": 12578, "MMBench_DEV_EN": 4329, "MME": 2374, "SEEDBench_IMG": 14233,
         "AI2D_TEST": 3088, "MathVista_MINI": 1000, "ScienceQA_TEST": 2017, "MMMU_DEV_VAL": 1050,
         "DocVQA_VAL": 5349, "ChartQA_TEST": 2500, "OCRBench": 1000, "TextVQA_VAL": 5000,
         "CV-Bench-2D": 1438, "CV-Bench-3D": 1200, "MMVP": 300, "RealWorldQA": 765}
MCQ = {"MMBench_DEV_EN", "SEEDBench_IMG", "AI2D_TEST", "ScienceQA_TEST", "MMMU_DEV_VAL", "CV-Bench-2D",
       "CV-Bench-3D", "MMVP", "RealWorldQA"}
VQA = {"GQA_TestDev_Balanced": "mean", "DocVQA_VAL": "anls", "ChartQA_TEST": "max", "TextVQA_VAL": "mean"}
MME_TASKS = ["OCR", "artwork", "celebrity", "color", "count", "existence", "landmark", "position", "posters",
             "scene", "code_reasoning", "commonsense_reasoning", "numerical_calculation", "text_translation"]


def xlsx(path: Path, header: list[str], cols: list[list]) -> None:
    import xlsxwriter

    wb = xlsxwriter.Workbook(str(path), {"constant_memory": True})
    ws = wb.add_worksheet()
    ws.write_row(0, 0, header)
    for r, row in enumerate(zip(*cols), 1):
        ws.write_row(r, 0, row)
    wb.close()


def csv1(path: Path, header: list[str], rows: list[list]) -> None:
    lines = [",".join(f'"{h}"' for h in header)] + [",".join(f'"{v}"' for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def write_variant(d: Path, model: str, p: float, cap: int, rng: np.random.Generator) -> None:
    d.mkdir(parents=True)
    for ds, n in SIZES.items():
        n = min(n, cap) if cap else n
        n -= n % 2
        hit = (rng.random(n) < p).astype(int)
        idx = list(range(n))
        pre = d / f"{model}_{ds}"
        if ds in MCQ:
            extra_h, extra = [], []
            if ds == "MMMU_DEV_VAL":
                split = ["dev" if i < n // 7 else "validation" for i in idx]
                extra_h, extra = ["split"], [split]
            if ds == "CV-Bench-2D":
                extra_h, extra = ["source"], [["ADE20K" if i % 3 else "COCO" for i in idx]]
            if ds == "MMVP":
                hit[1::2] = hit[0::2] if p > 0.5 else hit[1::2]
                q = [f"pair {i // 2}" for i in idx]
            else:
                q = [f"question {i}" for i in idx]
            id_col = "g_index" if ds == "MMBench_DEV_EN" else "index"
            xlsx(Path(f"{pre}_exact_matching_result.xlsx"), [id_col, "question", "prediction", "hit", *extra_h],
                 [idx, q, ["A"] * n, hit.tolist(), *extra])
            if ds == "MMMU_DEV_VAL":
                rows = [[sp, np.mean([h for h, s in zip(hit, split) if s == sp])] for sp in ("dev", "validation")]
            elif ds == "CV-Bench-2D":
                src = np.array(extra[0])
                rows = [["2D", np.mean([hit[src == s].mean() for s in ("ADE20K", "COCO")])]]
            elif ds == "MMVP":
                rows = [["none", float(np.mean(np.minimum(hit[0::2], hit[1::2])))]]
            else:
                rows = [["none", float(hit.mean())]]
            csv1(Path(f"{pre}_acc.csv"), ["split", "Overall"], rows)
        elif ds in VQA:
            if VQA[ds] == "anls":
                m = [f"[{1 - h * 0.9:.3f}]" for h in hit]
                sc = [0.9 * h if 0.9 * h >= 0.5 else 0.0 for h in hit]
            else:
                m = [f"[{float(h)}]" for h in hit]
                sc = hit.astype(float).tolist()
            xlsx(Path(f"{pre}_results.xlsx"), ["index", "question", "prediction", "eval_match"],
                 [idx, [f"q{i}" for i in idx], ["x"] * n, m])
            csv1(Path(f"{pre}_acc.csv"), ["Overall"], [[100 * float(np.mean(sc))]])
        elif ds == "MME":
            cat = [MME_TASKS[(i // 2) % len(MME_TASKS)] for i in idx]
            img = [f"img{i // 2}.jpg" for i in idx]
            xlsx(Path(f"{pre}_auxmatch.xlsx"), ["index", "category", "image_path", "prediction", "score"],
                 [idx, cat, img, ["Yes"] * n, [bool(h) for h in hit]])
            per = 0.0
            for t in MME_TASKS[:10]:
                sel = [i for i in idx if cat[i] == t]
                a = np.mean(hit[sel])
                plus = np.mean([hit[i] * hit[i + 1] for i in sel[0::2]])
                per += 100 * (a + plus)
            csv1(Path(f"{pre}_score.csv"), ["perception", "reasoning"], [[per, 0.0]])
        elif ds == "OCRBench":
            xlsx(Path(f"{pre}.xlsx"), ["index", "question", "answer", "category", "prediction"],
                 [idx, ["read"] * n, ["['hello']"] * n, ["Doc-oriented VQA"] * n,
                  ["hello" if h else "nope" for h in hit]])
            Path(f"{pre}_score.json").write_text(json.dumps({"Final Score": int(hit.sum()),
                                                             "Final Score Norm": hit.sum() / 10}))
        elif ds == "MathVista_MINI":
            xlsx(Path(f"{pre}_gpt-4o-mini.xlsx"),
                 ["index", "question", "answer", "question_type", "answer_type", "answer_option", "choices", "res"],
                 [idx, ["q"] * n, ["3"] * n, ["free_form"] * n, ["integer"] * n, [""] * n, ["[]"] * n,
                  [3 if h else 4 for h in hit]])
            csv1(Path(f"{pre}_gpt-4o-mini_score.csv"), ["Task&Skill", "tot", "hit", "acc"],
                 [["Overall", n, int(hit.sum()), 100 * hit.mean()]])


def generate(root: Path, cap: int) -> Path:
    work = root / "work"
    rng = np.random.default_rng(0)
    for k in range(len(ENC) + 1):
        for masked in itertools.combinations(ENC, k):
            model = BASE if not masked else BASE + "_mask_" + "_".join(masked)
            p = 0.85 - 0.12 * k + 0.02 * ENC.index(masked[0]) if masked else 0.85
            write_variant(work / model, model, max(0.1, p), cap, rng)
    return work


def _run(build_report, root: Path, out: str, cache: Path, n_boot: int, label: str) -> float:
    t = time.perf_counter()
    res = build_report(root / "work", BASE, encoders=list(ENC), out_dir=root / out, n_boot=n_boot,
                       force=True, cache=cache)
    total = time.perf_counter() - t
    ok = sum(c["status"] == "ok" for c in res.cells)
    bad_ps = sum(c["per_sample"] != "ok" for c in res.cells)
    print(f"{label}: cells ok {ok}/{len(res.cells)}, per-sample problems {bad_ps}, bootstrap rows "
          f"{len(res.bootstrap)}")
    for k in ("read", "metrics", "bootstrap", "write"):
        v = res.timings.get(k, 0.0)
        print(f"  {k:<9} {v:6.2f} s  ({100 * v / total:4.1f} %)")
    print(f"  total     {total:6.2f} s")
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cap", type=int, default=2000, help="max samples per dataset (0 = real sizes)")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--keep", help="reuse/keep the generated sheets in this directory")
    ap.add_argument("--engine", choices=("calamine", "openpyxl"),
                    help="xlsx engine (sets ENCRED_XLSX_ENGINE; default: calamine when installed)")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import os

    if args.engine:
        os.environ["ENCRED_XLSX_ENGINE"] = args.engine
    from vlmeval_encred.report import build_report
    from vlmeval_encred.report.xlsx import engine

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="encred_speed_"))
    marker = root / f".generated_cap{args.cap}"
    if not marker.exists():
        shutil.rmtree(root / "work", ignore_errors=True)
        t = time.perf_counter()
        generate(root, args.cap)
        marker.touch()
        print(f"generated 32 x 16 dataset sheets in {time.perf_counter() - t:.1f} s under {root}")
    n_samples = sum(min(n, args.cap) if args.cap else n for n in SIZES.values())
    for d in ("cache", "out", "out2"):
        shutil.rmtree(root / d, ignore_errors=True)
    print(f"variants 32, benchmarks 15, samples per variant {n_samples}, resamples {args.n_boot}, "
          f"xlsx engine {engine()}")
    cold = _run(build_report, root, "out", root / "cache", args.n_boot, "cold (empty score cache, new output)")
    warm = _run(build_report, root, "out", root / "cache", args.n_boot,
                "warm (same files again: cache hits, output up to date)")
    rewrite = _run(build_report, root, "out2", root / "cache", args.n_boot,
                   "warm, new output directory (cache hits, everything written)")
    print(f"cold {cold:.2f} s (target < 10 s: {'met' if cold < 10 else 'NOT met'}); warm {warm:.2f} s "
          f"(target < 2 s: {'met' if warm < 2 else 'NOT met'}); cold/warm {cold / warm:.1f}x; "
          f"warm with rewrite {rewrite:.2f} s, cold/that {cold / rewrite:.1f}x")
    if not args.keep:
        shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
