"""Do sweep predictions equal per-variant VLMEvalKit predictions, per dtype?  Prints disagreement rates.

The sweep decodes all subsets of a sample as one batch; a per-variant run decodes a
batch of one.  Same arithmetic on paper, but batched kernels may reduce in another
order, and in bf16 a last-bit difference can flip a near-tied argmax.  This script
measures how often that happens: for each dtype it runs (a) ``encred sweep``'s engine
and (b) VLMEvalKit's own ``infer_data_job`` once per variant, on the same model
weights and questions, and compares the prediction files string by string.

Models:
* ``encred_tiny`` -- the trained CPU demo model on the demo benchmark (confident
  answers, like a trained 7B model on most questions).
* ``deepseek_vl_tiny_random`` (opt-in) -- a randomly initialised DeepseekVLHybrid; on
  the CPU it gives one and the same answer to every question, so its agreement says
  nothing (the ``distinct`` column shows it); kept to exercise a transformers family.

On a GPU machine run ``--device cuda --dtypes bfloat16`` for the figure that matters
there (kernels differ from the CPU's); on the CPU, bf16 matmuls go through oneDNN.

Usage: python benchmarks/sweep_agreement.py [--samples 60] [--dtypes float32 bfloat16]
       [--device cpu] [--models encred_tiny [deepseek_vl_tiny_random]]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

DATASETS = {"encred_tiny": None, "deepseek_vl_tiny_random": "EncredBench_MCQ"}
"""Dataset per model; ``None``: the three demo datasets."""


def predictions(path: str) -> dict:
    from vlmeval.smp import load

    df = load(path)
    return dict(zip(df["index"], df["prediction"].astype(str)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=60, help="questions per dataset")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", nargs="+", default=["encred_tiny"], choices=list(DATASETS))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="encred_agree_"))
    lmu = tmp / "LMUData"
    lmu.mkdir()
    from conftest import write_mcq_tsv

    from vlmeval_encred.demo.data import DATASET_NAMES, write_datasets

    write_datasets(lmu, samples_per_category=args.samples)
    write_mcq_tsv(lmu / "EncredBench_MCQ.tsv", n=args.samples)
    os.environ.update(LMUData=str(lmu), PRED_FORMAT="xlsx", HF_HUB_OFFLINE="1")
    import vlmeval.config as cfg
    from vlmeval.dataset import build_dataset
    from vlmeval.inference import infer_data_job

    from vlmeval_encred.registry import get_base
    from vlmeval_encred.sweep import predfiles
    from vlmeval_encred.sweep.engine import run_sweep
    from vlmeval_encred.sweep.selection import select_entries

    print(f"device {args.device}, {args.samples} questions per dataset")
    print(f"{'model':<24} {'dtype':<9} {'variants':>8} {'answers':>8} {'differ':>7} {'rate':>7}  "
          f"{'sweep s':>8} {'1-by-1 s':>8} {'distinct':>8} {'vs dtype1':>9}")
    print("(differ/rate: sweep vs per-variant answers; distinct: different answer strings; vs dtype1: "
          "per-variant answers that differ from the first dtype's)")
    per_dtype: dict[str, tuple[str, dict]] = {}
    for name in args.models:
        base = get_base(name)
        entries = select_entries(base, "all")
        datasets = list(DATASET_NAMES) if DATASETS.get(name) is None else [DATASETS[name]]
        for dtype in args.dtypes:
            kw = dict(torch_dtype=dtype, device=args.device)
            work = tmp / f"{name}_{dtype}"
            t = time.perf_counter()
            run_sweep(base, entries, datasets, str(work / "sweep"), progress=False,
                      model=cfg.supported_VLM[base.name](**kw))
            sweep_s = time.perf_counter() - t
            t = time.perf_counter()
            for e in entries:
                model = cfg.supported_VLM[e.name](**kw)
                out_dir = Path(predfiles.model_dir(str(work / "ref"), e.name))
                out_dir.mkdir(parents=True, exist_ok=True)
                for ds in datasets:
                    infer_data_job(model, work_dir=str(out_dir),
                                   model_name=e.name, dataset=build_dataset(ds))
            ref_s = time.perf_counter() - t
            n = differ = 0
            examples = []
            refs: dict[tuple[str, str, object], str] = {}
            for e in entries:
                for ds in datasets:
                    a = predictions(predfiles.pred_file(str(work / "sweep"), e.name, ds))
                    b = predictions(predfiles.pred_file(str(work / "ref"), e.name, ds))
                    if a.keys() != b.keys():
                        raise SystemExit(f"{e.name}/{ds}: sweep and per-variant files cover different indices")
                    refs.update({(e.name, ds, i): p for i, p in b.items()})
                    for i in a:
                        n += 1
                        if a[i] != b[i]:
                            differ += 1
                            examples.append(f"{e.name}/{ds}#{i}: sweep {a[i]!r} vs per-variant {b[i]!r}")
            # Sanity: the comparison is not vacuous -- answers vary, and the dtype itself moves some.
            distinct = len(set(refs.values()))
            first = per_dtype.setdefault(name, (dtype, refs))
            vs_first = "" if first[0] == dtype else \
                f"{100 * sum(refs[k] != first[1][k] for k in refs) / len(refs):6.2f}%"
            print(f"{name:<24} {dtype:<9} {len(entries):>8} {n:>8} {differ:>7} {100 * differ / n:6.2f}%  "
                  f"{sweep_s:8.1f} {ref_s:8.1f} {distinct:>8} {vs_first:>9}", flush=True)
            for ex in examples[:3]:
                print(f"    e.g. {ex}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
