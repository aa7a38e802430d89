"""What masking a DeepSeek-VL tower saves: per-sample latency and peak memory, full vs masked.

A CPU-sized DeepseekVLHybrid is built with the project's own tiny-model recipe
(random weights, real transformers classes, loaded through the VLMEvalKit
wrapper ``EncredDeepseekVLHybrid``), with the real model's proportions in the
vision part: the SAM (high-res) tower sees a 4x larger image with a 16x
larger token grid than SigLIP, and dominates the vision FLOPs, as SAM-B at
1024 px does against SigLIP-L at 384 px in DeepSeek-VL 7B.

For each configuration -- full, mask_sam, mask_siglip -- we report:

* latency: median of ``--repeats`` timed forward passes (one prefill of one
  image + prompt: the step that runs the vision towers) after ``--warmup``
  untimed passes, single-threaded and round-robin across configurations
  for stable numbers on a shared machine;
* the masked encoder's share of the full latency, measured by timing that
  branch's ``get_*_image_features`` alone on the same input (median);
* the fall (full - masked) / full and the fall as a fraction of the share
  (1.0 = masking saves exactly what the tower cost; target >= 0.8);
* peak memory = resident parameter bytes + the peak of tensor memory
  allocated during one forward pass.  The latter comes from the PyTorch
  profiler's memory timeline (``profile_memory=True``): tracemalloc does not see
  ATen's CPU allocations (they bypass Python's allocator), and the process
  RSS high-water mark (``resource.getrusage``) is monotonic, so it would still
  hold the full model that was loaded before the mask freed a tower.

Usage: ``python benchmarks/masking_cost.py [--repeats 15] [--warmup 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from vlmeval_encred.masking import count_params
from vlmeval_encred.model_wrappers.deepseek_vl_hf.tiny import HybridSizes, build_deepseek_vl_hybrid

# Vision proportions of DeepSeek-VL 7B, scaled for a CPU: SAM image/grid 4x SigLIP's side.
BENCH_SIZES = HybridSizes(
    llm_hidden=128, llm_layers=2, llm_heads=4,
    siglip_hidden=128, siglip_layers=4, siglip_heads=4, siglip_image=128, siglip_patch=16,
    sam_hidden=96, sam_layers=4, sam_heads=4, sam_image=384, sam_patch=16, sam_window=8,
    sam_global_attn=(1, 3), sam_output_channels=64)


def interleaved_medians(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds per function, timing them round-robin so load drift hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def peak_forward_bytes(fn: Callable[[], Any]) -> int:
    """Peak of CPU tensor memory created and not yet freed during ``fn`` (profiler timeline)."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        fn()
    cur = peak = 0
    for _t, action, (key, _v), size in prof._memory_profile().timeline:
        if key.device.type != "cpu":
            continue
        if action == Action.CREATE:
            cur += size
        elif action == Action.DESTROY:
            cur -= size
        peak = max(peak, cur)
    return peak


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from PIL import Image

    from vlmeval_encred.model_wrappers.deepseek_vl_hf import EncredDeepseekVLHybrid

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "bench-ckpt"
        build_deepseek_vl_hybrid(ckpt, BENCH_SIZES)
        png = Path(tmp) / "img.png"
        Image.effect_noise((640, 480), 60).convert("RGB").save(png)
        message = [dict(type="image", value=str(png)), dict(type="text", value="Describe the chart.")]

        configs = [("full", ()), ("mask_sam", ("sam",)), ("mask_siglip", ("siglip",))]
        fns: dict[str, Callable[[], Any]] = {}
        rows: dict[str, dict[str, float]] = {}
        for label, mask in configs:
            w = EncredDeepseekVLHybrid(str(ckpt), mask=mask, torch_dtype="float32", device="cpu", max_new_tokens=1)
            inputs = w.build_inputs(message)

            def forward(model=w.model, inputs=inputs):
                with torch.inference_mode():
                    return model(**inputs).logits

            fns[label] = forward
            params = count_params(w.model)
            rows[label] = dict(params=params, peak=params * 4 + peak_forward_bytes(forward))
            if label == "full":
                inner = w.model.model
                for enc, fn, key in [("sam", inner.get_high_res_image_features, "high_res_pixel_values"),
                                     ("siglip", inner.get_low_res_image_features, "pixel_values")]:
                    def branch(fn=fn, x=inputs[key]):
                        with torch.inference_mode():
                            return fn(x)

                    fns["branch_" + enc] = branch
        # Round-robin timing: every configuration sees the same machine load (shared CPUs drift).
        times = interleaved_medians(fns, args.repeats, args.warmup)
        for label, _ in configs:
            rows[label]["latency"] = times[label]
        share = {enc: times["branch_" + enc] / times["full"] for enc in ("sam", "siglip")}

    full = rows["full"]
    print(f"DeepseekVLHybrid CPU benchmark ({args.threads} thread(s), median of {args.repeats} after "
          f"{args.warmup} warm-up; one prefill forward per sample)")
    print(f"sizes: SAM {BENCH_SIZES.sam_image}px/{BENCH_SIZES.sam_patch} hidden {BENCH_SIZES.sam_hidden} x"
          f"{BENCH_SIZES.sam_layers}; SigLIP {BENCH_SIZES.siglip_image}px/{BENCH_SIZES.siglip_patch} hidden "
          f"{BENCH_SIZES.siglip_hidden} x{BENCH_SIZES.siglip_layers}; LLM hidden {BENCH_SIZES.llm_hidden} "
          f"x{BENCH_SIZES.llm_layers}")
    print(f"{'config':<12} {'latency ms':>10} {'params':>10} {'peak MiB':>9} {'enc share':>9} "
          f"{'fall':>7} {'fall/share':>10}")
    ok = True
    for label, r in rows.items():
        if label == "full":
            print(f"{label:<12} {r['latency'] * 1e3:10.2f} {r['params']:10d} {r['peak'] / 2**20:9.2f}")
            continue
        enc = label.split("_", 1)[1]
        fall = (full["latency"] - r["latency"]) / full["latency"]
        ratio = fall / share[enc]
        ok &= ratio >= 0.8
        print(f"{label:<12} {r['latency'] * 1e3:10.2f} {r['params']:10d} {r['peak'] / 2**20:9.2f} "
              f"{share[enc]:9.1%} {fall:7.1%} {ratio:10.2f}")
    print(f"peak memory fall: mask_sam {1 - rows['mask_sam']['peak'] / full['peak']:.1%}, "
          f"mask_siglip {1 - rows['mask_siglip']['peak'] / full['peak']:.1%}")
    print("target fall/share >= 0.80:", "met" if ok else "NOT met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
