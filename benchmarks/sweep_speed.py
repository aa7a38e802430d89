"""Sweep vs one-by-one VLMEvalKit inference on the CPU, next to the cost model's prediction.  Prints figures.

**These CPU figures say nothing about a GPU run of a real checkpoint** (use
`encred profile --plan` for that): the models here are tiny, so per-call Python overhead and
model construction dominate, not the language model's prefill.

Models (CPU, fp32):
* ``concat5_standin`` (tests/standins/concat5.py): five channel-concatenated towers with
  Eagle-X5-like vision-FLOP shares, a chat-template prefix before the image; 32 subsets.
* ``encred_tiny`` (the CPU demo model, three towers, 8 subsets) when its trained checkpoint is
  installed (skipped otherwise).
* ``deepseek_vl_tiny_random`` (transformers' DeepseekVLHybrid, random tiny weights, 4 subsets).

Baseline: VLMEvalKit's own ``infer_data_job`` once per variant, **in this one process** --
so the ~14 s ``import vlmeval`` is paid once, not 32 times as separate ``python run.py``
invocations would pay it; the baseline is therefore optimistic for VLMEvalKit.  It builds the
model once per variant, as run.py does; "one by one, inference only" excludes those builds
(each variant's model is built first, untimed, and handed to ``infer_data_job``).  Sweep time
includes loading the model once.

Prediction: the FLOP ratio per-variant / sweep from the measured components
(:func:`vlmeval_encred.sweep.costmodel.lattice_flop_ratio`): each tower's FLOPs
(FlopCounterMode through ``SweepSupport.encode``) and the language side per subset
(FlopCounterMode around ``fuse_and_generate`` of one subset with every tower masked: connector,
prefill, decoding).  The gap between predicted and measured ratio is overhead the FLOPs do not see.

concat5 only: the sweep with its previous decoding (one ``generate`` over all subsets, no shared
prefix) as well, to measure what :func:`vlmeval_encred.sweep.decoding.greedy_subsets` changes.

Usage: python benchmarks/sweep_speed.py [--samples 8] [--models concat5_standin encred_tiny deepseek_vl_tiny_random]
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


def lm_side_flops(base, dataset_name: str) -> float:
    """FLOPs of fuse_and_generate for one subset with every tower masked, on the dataset's first sample."""
    import torch

    from vlmeval_encred.registry import Entry
    from vlmeval_encred.sweep.engine import _build_dataset, build_message, load_model
    from vlmeval_encred.sweep.profile import _flops
    from vlmeval_encred.sweep.protocol import support_for

    model = load_model(base, [Entry(base, ())])
    support = support_for(model)
    dataset = _build_dataset(dataset_name)
    model.set_dump_image(dataset.dump_image)
    inputs = support.prepare(model, build_message(model, dataset, dataset.data.iloc[0]), dataset_name)
    with torch.inference_mode():
        return float(_flops(lambda: support.fuse_and_generate(model, inputs, [{x: None for x in base.encoders}],
                                                              base.modes[0])))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--models", nargs="+", default=["concat5_standin", "encred_tiny", "deepseek_vl_tiny_random"])
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="encred_bench_"))
    from conftest import write_mcq_tsv

    lmu = tmp / "LMUData"
    lmu.mkdir()
    ds = "EncredBench_MCQ"
    write_mcq_tsv(lmu / f"{ds}.tsv", n=args.samples)
    os.environ.update(LMUData=str(lmu), PRED_FORMAT="xlsx", HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    from standins import concat5

    concat5.register()
    import vlmeval.config  # noqa: F401
    from vlmeval.config import supported_VLM
    from vlmeval.dataset import build_dataset
    from vlmeval.inference import infer_data_job

    from vlmeval_encred.registry import get_base
    from vlmeval_encred.sweep.costmodel import lattice_flop_ratio
    from vlmeval_encred.sweep.engine import run_sweep
    from vlmeval_encred.sweep.profile import encoder_flops, synthetic_messages
    from vlmeval_encred.sweep.selection import select_entries

    print(f"import vlmeval (paid once here; each separate run.py process pays it again): "
          f"{time.perf_counter() - t0:.1f} s")
    print("CPU figures of tiny models: they would mislead about a GPU run of a real checkpoint "
          "(see `encred profile --plan`).")
    for name in args.models:
        base = get_base(name)
        entries = select_entries(base, "all")
        try:
            enc = encoder_flops(base, synthetic_messages(1, str(tmp)))
        except Exception as exc:  # e.g. demo checkpoint not trained/installed yet
            print(f"\n{name}: skipped ({type(exc).__name__}: {exc})")
            continue
        lm = lm_side_flops(base, ds)
        predicted = lattice_flop_ratio(enc, lm, [e.kept for e in entries])
        work = tmp / f"sweep_{name}"
        t = time.perf_counter()
        rep = run_sweep(base, entries, [ds], str(work), progress=False).datasets[0]
        sweep_s = time.perf_counter() - t
        old_s = None
        if name == "concat5_standin":
            support = concat5.Concat5Standin.sweep_support
            support.shared_decoding = False
            t = time.perf_counter()
            run_sweep(base, entries, [ds], str(tmp / f"sweep_old_{name}"), progress=False)
            old_s = time.perf_counter() - t
            support.shared_decoding = True
        ref = tmp / f"ref_{name}"
        t = time.perf_counter()
        for e in entries:
            (ref / e.name).mkdir(parents=True, exist_ok=True)
            infer_data_job(e.name, work_dir=str(ref / e.name), model_name=e.name, dataset=build_dataset(ds))
        ref_s = time.perf_counter() - t
        ref2 = tmp / f"ref2_{name}"
        inference_only = 0.0
        for e in entries:
            model = supported_VLM[e.name]()
            (ref2 / e.name).mkdir(parents=True, exist_ok=True)
            t = time.perf_counter()
            infer_data_job(model, work_dir=str(ref2 / e.name), model_name=e.name, dataset=build_dataset(ds))
            inference_only += time.perf_counter() - t
            del model
        floor = sum(enc.values()) * args.samples
        sweep_vision = sum(enc[x] * n for x, n in rep.encoder_calls.items())
        ref_vision = sum(enc[x] for e in entries for x in e.kept) * args.samples
        shares = ", ".join(f"{x} {v / sum(enc.values()):.0%}" for x, v in enc.items())
        print(f"\n{name}: {len(base.encoders)} encoders, {len(entries)} variants, {args.samples} samples "
              f"(vision FLOP shares: {shares}; language side per subset {lm / 1e6:.2f} MFLOPs, "
              f"towers {sum(enc.values()) / 1e6:.2f} MFLOPs)")
        print(f"  sweep                       {sweep_s:8.1f} s  ({rep.decode_calls} batched decode calls)")
        if old_s is not None:
            d = rep.decoding
            print(f"  sweep, previous decoding    {old_s:8.1f} s  (one generate over all subsets; shared-prefix "
                  f"decoding prefilled {d.prefilled_tokens} of {d.prompt_tokens} prompt positions, "
                  f"{d.rows_dropped_early} rows left early)")
        print(f"  one by one                  {ref_s:8.1f} s  ({len(entries)} x infer_data_job, one process, "
              f"model built per variant)")
        print(f"  one by one, inference only  {inference_only:8.1f} s  (model builds excluded)")
        print(f"  speed-up measured           {ref_s / sweep_s:8.1f} x  ({inference_only / sweep_s:.1f} x without "
              f"model builds)")
        print(f"  speed-up predicted (FLOPs)  {predicted:8.2f} x  (cost model from measured components)")
        print(f"  vision FLOPs     sweep / floor = {sweep_vision / floor:.2f}, "
              f"one-by-one / floor = {ref_vision / floor:.2f}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
