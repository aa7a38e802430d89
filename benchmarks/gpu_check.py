"""Device check: sweep versus per-variant runs of mid-sized random models, measured next to the cost model.

What it answers on a CUDA machine, in one run of at most ``--budget-s`` seconds (default 480):

* **answers identical** -- the sweep's prediction files against VLMEvalKit's own
  ``infer_data_job`` run once per variant, string by string (count of N), per dtype;
* **measured speed-up** -- per-variant inference (every variant's model built beforehand,
  untimed) over the sweep, the two arms alternated (sweep first on even repeats, per-variant
  first on odd ones), repeated; the minimum and the spread ((max - min) / min) of each arm;
* **predicted speed-up** -- :mod:`vlmeval_encred.sweep.costmodel` for *this* model (its
  language model's dimensions from the loaded config, each tower's FLOPs counted with
  FlopCounterMode through the family's ``SweepSupport.encode``, the prompt and answer lengths
  seen) on the named device (``--device-name``, default from ``torch.cuda.get_device_name``);
* **measured / predicted latency per variant** -- each variant's per-sample time in the
  per-variant arm over the roofline's.

Models (``--cases``):

* ``deepseek_vl_hf`` -- transformers' own ``DeepseekVLHybridForConditionalGeneration``
  (no upstream source needed; base environment, transformers >= 5.18), random weights, built
  by ``model_wrappers/deepseek_vl_hf/tiny.py`` at mid size: SigLIP-L and SAM-B at DeepSeek-VL
  7B's widths, depths, heads and resolutions (384 px / 16 and 1024 px / 16, 576 image tokens;
  their MLPs at 2x the width instead of 4x), a 16-layer, 1536-wide Llama (about 380 M
  parameters in the LLM; the 7B has 30 x 4096) over the package's 320-token tokenizer.
* ``deepseek_vl`` -- the original DeepSeek-VL package's classes (registered ``deepseek_vl``
  source; ``deepseek_vl`` environment, transformers 4.x): SAM-B and SigLIP-L as upstream's own
  tables define them, a 16-layer, 1536-wide Llama (4096-wide MLP), random weights.
* ``demo`` -- the trained CPU demo model (``encred_tiny``) on the three demo datasets: tiny
  even on a GPU, but its answers are confident, so "identical" is not a test of noise.

A case this Python environment cannot run (package versions, missing source) is listed as not
run, with the command that runs it; run the check once per environment.

Answers of random models are noise; comparing them is still a strict exactness check (near
ties are more frequent than in a trained model).  The cost model assumes bf16 (2-byte weights,
bf16 tensor-core peak): in fp32 its prediction is the bf16 one and the measured/predicted
ratios are expected to be larger.  Prompt positions before the image are not shared in the
prediction (``prefix_tokens`` 0).

``--smoke`` (CPU, seconds): the tiny DeepseekVLHybrid of the test suite (or the deepseek_vl
self-test's tiny model) and the demo model on one demo dataset, the full model and the single
masks, two samples, two repeats -- what ``tests/test_gpu_check.py`` runs.
**CPU figures say nothing about a GPU**: the models are tiny and per-call overhead dominates.

Usage (from the checkout, in the project's environment):
    python benchmarks/gpu_check.py --device cuda [--device-name H200] [--dtypes bfloat16 float32]
                                   [--samples 16] [--repeats 3] [--budget-s 480] [--out gpu_check.json]
    python benchmarks/gpu_check.py --smoke --out smoke.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from vlmeval_encred.realcode.envscope import scoped_env

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
MCQ = "EncredBench_MCQ"
GPU_NAMES = ("H200", "H100", "A100")


class CheckError(RuntimeError):
    """The check cannot run as asked (no CUDA device, unknown case, bad option)."""


# --------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    """One model the check runs: how to get its base registered and which datasets it answers."""

    name: str
    what: str
    setup: Callable[["Run"], tuple[Any, list[str]]]
    """``run -> (BaseModelSpec, dataset names)``; builds the checkpoint if needed."""
    env: str = "base"
    """The environment (``bash scripts/env.sh --env ENV``) whose packages it needs."""
    requires: dict[str, str] = field(default_factory=dict)
    """Package versions its code needs (the family's catalog ``requires``); checked before it runs."""
    sources: tuple[str, ...] = ()
    """Upstream sources (``encred sources``) its classes come from."""

    def unavailable(self) -> str:
        """Why this Python environment cannot run the case ('' when it can), with the command that can."""
        from vlmeval_encred.recipes import EnvironmentMismatch, check_requires
        from vlmeval_encred.upstream import NotRegistered, UpstreamNotFound, get, locate

        try:
            check_requires(self.requires, what=f"gpu_check case {self.name}")
        except EnvironmentMismatch as exc:
            env = "" if self.env == "base" else f" --env {self.env}"
            return (f"{exc} Run it in its environment: bash scripts/env.sh{env} "
                    f"python benchmarks/gpu_check.py --cases {self.name} [options]")
        for src in self.sources:
            try:
                locate(src)
            except NotRegistered:
                return f"no {src} source on this machine (encred sources add {src} <clone of {get(src).url}>)"
            except UpstreamNotFound as exc:
                return f"the registered {src} source cannot be used: {exc}"
        return ""


@dataclass
class Run:
    """Options and scratch space shared by the cases."""

    smoke: bool
    samples: int
    tmp: Path
    cache: Path


def mid_hybrid_sizes() -> Any:
    """DeepSeek-VL 7B's towers at their real widths and depths (MLP at half width), a mid LLM."""
    from vlmeval_encred.model_wrappers.deepseek_vl_hf.tiny import HybridSizes

    return HybridSizes(llm_hidden=1536, llm_layers=16, llm_heads=12,
                       siglip_hidden=1024, siglip_layers=24, siglip_heads=16, siglip_image=384, siglip_patch=16,
                       sam_hidden=768, sam_layers=12, sam_heads=12, sam_image=1024, sam_patch=16, sam_window=14,
                       sam_global_attn=(2, 5, 8, 11), sam_output_channels=256)


def setup_deepseek_vl_hf(run: Run) -> tuple[Any, list[str]]:
    """Build (once, cached) a random DeepseekVLHybrid and register it as a base of its family."""
    from vlmeval_encred.model_wrappers.deepseek_vl_hf.catalog import _HF_DSVL, _WRAPPER
    from vlmeval_encred.model_wrappers.deepseek_vl_hf.tiny import HybridSizes, build_deepseek_vl_hybrid
    from vlmeval_encred.registry import BaseModelSpec
    from vlmeval_encred.tiny_models import build_atomically

    sizes = HybridSizes() if run.smoke else mid_hybrid_sizes()
    tag = "tiny" if run.smoke else "mid"
    target = run.cache / f"gpucheck-deepseek-vl-hybrid-{tag}-v1"
    build_atomically(target, lambda d: build_deepseek_vl_hybrid(d, sizes), asdict(sizes))
    base = BaseModelSpec(name=f"gpucheck_dsvl_hf_{tag}", family="deepseek_vl_hf", checkpoint=str(target),
                         encoders=("siglip", "sam"), wrapper=_WRAPPER, requires=_HF_DSVL,
                         loader={"max_new_tokens": 8}, description=f"gpu_check: {tag} random DeepseekVLHybrid")
    return base, [MCQ]


def setup_demo(run: Run) -> tuple[Any, list[str]]:
    """The registered demo base; its datasets (one of them in smoke mode)."""
    from vlmeval_encred.demo.data import DATASET_NAMES
    from vlmeval_encred.registry import get_base

    return get_base("encred_tiny"), list(DATASET_NAMES[:1] if run.smoke else DATASET_NAMES)


# DeepSeek-VL 7B's towers as upstream's own tables name them (deepseek_vl/models/{sam,siglip_vit}.py)
ORIG_SAM, ORIG_SIGLIP = "sam_b_downsample", "siglip_large_patch16_384"
ORIG_LLM = dict(hidden_size=1536, intermediate_size=4096, num_hidden_layers=16, num_attention_heads=12,
                num_key_value_heads=12, max_position_embeddings=4096)


def build_mid_deepseek_vl(dest: Path) -> None:
    """A random upstream ``MultiModalityCausalLM`` with SAM-B and SigLIP-L at full size (1024 px and 384 px,
    576 image tokens, 1024-wide aligner input) and a 16 x 1536 Llama, beside an upstream ``VLChatProcessor``.

    The same construction as the family self-test's tiny checkpoint (its tokenizer and tower
    settings), with upstream's real tower rows instead of the tiny ones."""
    import torch
    from deepseek_vl.models import MultiModalityCausalLM, VLChatProcessor, VLMImageProcessor
    from deepseek_vl.models.modeling_vlm import MultiModalityConfig

    from vlmeval_encred.model_wrappers.deepseek_vl import selftest as st

    tok = st.tiny_tokenizer()
    high = dict(st.HIGH_CFG, model_name=ORIG_SAM, image_size=1024, output_dim=1024)
    low = dict(st.LOW_CFG, model_name=ORIG_SIGLIP, image_size=384, output_dim=1024)
    cfg = MultiModalityConfig(
        vision_config=dict(cls="HybridVisionTower", params=dict(high_res_cfg=high, low_res_cfg=low, concat_type="tuple")),
        aligner_config=dict(cls="MlpProjector", params=dict(projector_type="low_high_hybrid_split_mlp_gelu",
                                                            input_dim=1024, n_embed=ORIG_LLM["hidden_size"], depth=2)),
        language_config=dict(ORIG_LLM, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MultiModalityCausalLM(cfg)
    model.save_pretrained(dest)
    VLChatProcessor(VLMImageProcessor(image_size=1024, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5),
                                      do_normalize=False), tok, num_image_tokens=576).save_pretrained(str(dest))


def setup_deepseek_vl(run: Run) -> tuple[Any, list[str]]:
    """The original deepseek_vl package (its registered source): the self-test's tiny checkpoint in smoke
    mode, else :func:`build_mid_deepseek_vl`; registered as a base of the family."""
    from vlmeval_encred.model_wrappers.deepseek_vl import selftest as st
    from vlmeval_encred.registry import BaseModelSpec, get_base
    from vlmeval_encred.tiny_models import build_atomically

    st.import_real_package()
    tag = "tiny" if run.smoke else "mid"
    if run.smoke:
        target = st.build_tiny_checkpoint(run.cache / "gpucheck-deepseek-vl-orig-tiny-v1")
    else:
        target = build_atomically(run.cache / "gpucheck-deepseek-vl-orig-mid-v1", build_mid_deepseek_vl,
                                  dict(sam=ORIG_SAM, siglip=ORIG_SIGLIP, llm=ORIG_LLM))
    ref = get_base(st.BASE)
    base = BaseModelSpec(name=f"gpucheck_dsvl_orig_{tag}", family=ref.family, checkpoint=str(target),
                         encoders=ref.encoders, wrapper=ref.wrapper, modes=ref.modes, requires=ref.requires,
                         recipe=ref.recipe, loader={"max_new_tokens": 8},
                         description=f"gpu_check: {tag} random DeepSeek-VL (original package)")
    return base, [MCQ]


CASES: dict[str, Case] = {c.name: c for c in [
    Case("deepseek_vl_hf", "transformers' DeepseekVLHybrid, random weights (SigLIP-L + SAM-B widths, "
         "16 x 1536 Llama; smoke: the test suite's tiny one)", setup_deepseek_vl_hf,
         requires={"transformers": ">=5.18"}),
    # the shipped demo checkpoint's tokenizer files do not load under transformers 4.57 (seen in the
    # deepseek_vl environment); the demo runs in the base environment
    Case("demo", "the trained demo model encred_tiny (3 towers, 2-layer LLM)", setup_demo,
         requires={"transformers": ">=5"}),
    Case("deepseek_vl", "the original deepseek_vl package's classes (registered source), random weights "
         "(SAM-B + SigLIP-L from upstream's tables, 16 x 1536 Llama; smoke: the self-test's tiny one)",
         setup_deepseek_vl, env="deepseek_vl", requires={"transformers": ">=4.38.2,<5"}, sources=("deepseek_vl",)),
]}
DEFAULT_CASES = ("deepseek_vl_hf", "demo", "deepseek_vl")


# --------------------------------------------------------------------------- measuring
def sync(device: str) -> None:
    """Wait for queued kernels, so a timer read after it covers them."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def spread(times: Sequence[float]) -> float:
    """(max - min) / min: how far the slowest repeat is from the fastest."""
    return (max(times) - min(times)) / min(times) if times and min(times) > 0 else float("nan")


def register(base: Any) -> None:
    """Add ``base`` to the registry and, if VLMEvalKit's config is loaded, its entries to supported_VLM."""
    from vlmeval_encred.registry import register_base

    register_base(base)
    config = sys.modules.get("vlmeval.config")
    if config is not None and hasattr(config, "supported_VLM"):
        from vlmeval_encred.vlmeval_plugin import after_config

        after_config(config)


def llm_of(wrapper: Any) -> Any:
    """The cost model's :class:`~vlmeval_encred.sweep.costmodel.LLM` from the wrapper's language-model config."""
    from vlmeval_encred.sweep.costmodel import LLM

    model = wrapper.model
    found = [getattr(getattr(model, "config", None), "text_config", None),
             getattr(getattr(model, "language_model", None), "config", None)]
    cfg = next((c for c in found if hasattr(c, "num_attention_heads")), None)  # the demo's text_config is a dict
    if cfg is None:
        raise CheckError(f"{type(wrapper).__name__}: no language-model config found (text_config or "
                         "language_model.config)")
    heads = int(cfg.num_attention_heads)
    return LLM(layers=int(cfg.num_hidden_layers), hidden=int(cfg.hidden_size),
               intermediate=int(cfg.intermediate_size), heads=heads,
               kv_heads=int(getattr(cfg, "num_key_value_heads", None) or heads), vocab=int(cfg.vocab_size))


def answer_tokens(wrapper: Any, answers: Sequence[str], max_new: int) -> int:
    """Mean generated tokens per answer, from the answer text (plus the end-of-sequence token when shorter)."""
    n = [min(len(wrapper.tokenizer.encode(a, add_special_tokens=False)) + 1, max_new) for a in answers]
    return max(1, round(statistics.fmean(n))) if n else 1


def cost_shape(base: Any, wrapper: Any, dataset: Any, ds_name: str) -> dict[str, Any]:
    """Tower FLOPs per image (counted through ``encode``), prompt and image tokens, connector width."""
    import torch

    from vlmeval_encred.sweep.engine import build_message
    from vlmeval_encred.sweep.profile import _flops
    from vlmeval_encred.sweep.protocol import support_for

    support = support_for(wrapper)
    wrapper.set_dump_image(dataset.dump_image)
    inputs = support.prepare(wrapper, build_message(wrapper, dataset, dataset.data.iloc[0]), ds_name)
    with torch.inference_mode():
        towers = {x: float(_flops(lambda x=x: support.encode(wrapper, inputs, [x]))) for x in base.encoders}
        feats = support.encode(wrapper, inputs, list(base.encoders))
    ids = inputs["input_ids"]
    image_tokens = max(int(f.shape[-2]) for f in feats.values())
    return dict(towers=towers, prompt_tokens=int(ids.shape[-1]), image_tokens=image_tokens,
                connector_in=int(sum(int(f.shape[-1]) for f in feats.values())))


def predict(base: Any, shape: dict[str, Any], llm: Any, gpu: Any, entries: Sequence[Any],
            answers: dict[str, int]) -> dict[str, Any]:
    """Per-variant and sweep seconds per sample from the cost model, for this model's measured shape."""
    from vlmeval_encred.sweep import costmodel as cm

    image = min(shape["image_tokens"], shape["prompt_tokens"])
    cost = cm.BaseCost(base.name, dict(shape["towers"]), {x: x for x in base.encoders}, llm, "measured",
                       shape["connector_in"], 0, image, shape["prompt_tokens"] - image)
    per_variant = {}
    for e in entries:
        ds = cm.Dataset("check", 1, 0, answers[e.name])
        per_variant[e.name] = cm.per_variant_sample(cost, gpu, ds, e.kept).total_seconds
    mean_answer = max(1, round(statistics.fmean(answers.values())))
    sweep = cm.sweep_sample(cost, gpu, cm.Dataset("check", 1, 0, mean_answer), [e.kept for e in entries]).total_seconds
    return dict(per_variant_s=per_variant, sweep_s=sweep, speedup=sum(per_variant.values()) / sweep)


@dataclass
class Result:
    """One (case, dtype): what is printed and written to ``--out``."""

    case: str
    dtype: str
    device: str
    device_name: str
    samples: int
    """Questions each variant answers in one arm (every dataset of the case)."""
    variants: list[str]
    datasets: list[str] = field(default_factory=list)
    answers_identical: int = 0
    answers_compared: int = 0
    differing: list[str] = field(default_factory=list)
    sweep_s: list[float] = field(default_factory=list)
    per_variant_s: list[float] = field(default_factory=list)
    per_variant_each_s: dict[str, list[float]] = field(default_factory=dict)
    build_s: float = 0.0
    predicted: dict[str, Any] = field(default_factory=dict)
    measured_speedup: float | None = None
    stopped_early: str = ""


def time_sweep(base, entries, datasets, work: Path, model, device) -> float:
    from vlmeval_encred.sweep.engine import run_sweep

    sync(device)
    t = time.perf_counter()
    run_sweep(base, entries, datasets, str(work), progress=False, model=model)
    sync(device)
    return time.perf_counter() - t


def time_per_variant(entries, models, datasets, work: Path, device) -> dict[str, float]:
    """VLMEvalKit's own inference, once per variant, on already built models; seconds per variant."""
    from vlmeval.dataset import build_dataset
    from vlmeval.inference import infer_data_job

    from vlmeval_encred.sweep import predfiles

    out = {}
    for e in entries:
        out_dir = Path(predfiles.model_dir(str(work), e.name))
        out_dir.mkdir(parents=True, exist_ok=True)
        sync(device)
        t = time.perf_counter()
        for ds in datasets:
            infer_data_job(models[e.name], work_dir=str(out_dir), model_name=e.name, dataset=build_dataset(ds))
        sync(device)
        out[e.name] = time.perf_counter() - t
    return out


def compare(entries, datasets, sweep_dir: Path, ref_dir: Path, res: Result) -> dict[str, list[str]]:
    """Count identical answers; return every variant's answers (per-variant run) for the answer lengths."""
    from sweep_agreement import predictions

    from vlmeval_encred.sweep import predfiles

    answers: dict[str, list[str]] = {}
    for e in entries:
        for ds in datasets:
            a = predictions(predfiles.pred_file(str(sweep_dir), e.name, ds))
            b = predictions(predfiles.pred_file(str(ref_dir), e.name, ds))
            if a.keys() != b.keys():
                raise CheckError(f"{e.name}/{ds}: sweep and per-variant files cover different indices")
            answers.setdefault(e.name, []).extend(b.values())
            for i in a:
                res.answers_compared += 1
                if a[i] == b[i]:
                    res.answers_identical += 1
                elif len(res.differing) < 5:
                    res.differing.append(f"{e.name}/{ds}#{i}: sweep {a[i]!r} vs per-variant {b[i]!r}")
    return answers


def warm_up(base, entries, datasets, work: Path, sweep_model, models, device) -> None:
    """One sample through every model and one through the sweep, untimed (CUDA context, kernel choice, caches)."""
    from vlmeval.dataset import build_dataset

    from vlmeval_encred.sweep.engine import build_message, run_sweep

    dataset = build_dataset(datasets[0])
    for model in models.values():
        model.set_dump_image(dataset.dump_image)
        model.generate(message=build_message(model, dataset, dataset.data.iloc[0]), dataset=datasets[0])
    run_sweep(base, entries, datasets[:1], str(work), limit=1, progress=False, model=sweep_model)
    sync(device)


def check_case(case: Case, run: Run, dtype: str, device: str, device_name: str, gpu: Any, repeats: int,
               deadline: float, work: Path, subsets: str = "all") -> Result:
    """Build the sweep model and every variant's model, alternate the arms, compare, predict."""
    import vlmeval.config as cfg
    from vlmeval.dataset import build_dataset

    from vlmeval_encred.sweep.selection import select_entries

    base, datasets = case.setup(run)
    register(base)
    entries = select_entries(base, subsets)
    kw = dict(torch_dtype=dtype, device=device)
    res = Result(case.name, dtype, device, device_name, run.samples * len(datasets), [e.name for e in entries],
                 list(datasets))
    t = time.perf_counter()
    sweep_model = cfg.supported_VLM[base.name](**kw)
    models = {e.name: cfg.supported_VLM[e.name](**kw) for e in entries}
    res.build_s = time.perf_counter() - t
    try:
        warm_up(base, entries, datasets, work / f"{case.name}_{dtype}_warmup", sweep_model, models, device)
        for r in range(repeats):
            if r and time.perf_counter() > deadline:
                res.stopped_early = f"budget reached after {r} of {repeats} repeats"
                break
            rep = work / f"{case.name}_{dtype}_r{r}"
            arms = ["sweep", "per_variant"] if r % 2 == 0 else ["per_variant", "sweep"]
            for arm in arms:
                if arm == "sweep":
                    res.sweep_s.append(time_sweep(base, entries, datasets, rep / "sweep", sweep_model, device))
                else:
                    each = time_per_variant(entries, models, datasets, rep / "ref", device)
                    res.per_variant_s.append(sum(each.values()))
                    for k, v in each.items():
                        res.per_variant_each_s.setdefault(k, []).append(v)
        first = work / f"{case.name}_{dtype}_r0"
        answers = compare(entries, datasets, first / "sweep", first / "ref", res)
        max_new = int(base.loader.get("max_new_tokens", 8))
        lengths = {e.name: answer_tokens(models[e.name], answers[e.name], max_new) for e in entries}
        shape = cost_shape(base, sweep_model, build_dataset(datasets[0]), datasets[0])
        res.predicted = predict(base, shape, llm_of(sweep_model), gpu, entries, lengths)
        res.predicted.update(shape=shape, answer_tokens=lengths, gpu=gpu.name)
        res.measured_speedup = min(res.per_variant_s) / min(res.sweep_s)
    finally:
        del sweep_model, models
        gc.collect()
        if device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
    return res


# --------------------------------------------------------------------------- reporting
def report(res: Result) -> list[str]:
    """The printed lines of one (case, dtype)."""
    n_samples = res.samples
    lines = [f"== {res.case}, {res.dtype}, {res.device} ({res.device_name}): {len(res.variants)} variants x "
             f"{n_samples} samples, {len(res.sweep_s)} repeats (models built in {res.build_s:.1f} s, untimed)"]
    if res.stopped_early:
        lines.append(f"   STOPPED EARLY: {res.stopped_early}")
    lines.append(f"   answers identical (sweep vs per-variant): {res.answers_identical} of {res.answers_compared}")
    lines += [f"     differs: {d}" for d in res.differing]
    p = res.predicted
    lines.append(f"   measured speed-up: {res.measured_speedup:.2f}x  (per-variant min {min(res.per_variant_s):.2f} s, "
                 f"spread {spread(res.per_variant_s):.0%}; sweep min {min(res.sweep_s):.2f} s, "
                 f"spread {spread(res.sweep_s):.0%}; arms alternated)")
    lines.append(f"   predicted speed-up: {p['speedup']:.2f}x  (cost model, {p['gpu']}, bf16 roofline; "
                 f"measured/predicted {res.measured_speedup / p['speedup']:.2f})")
    lines.append(f"   {'variant':<40} {'measured ms/sample':>18} {'predicted ms/sample':>19} {'measured/predicted':>18}")
    for name in res.variants:
        m = 1000 * min(res.per_variant_each_s[name]) / n_samples
        q = 1000 * p["per_variant_s"][name]
        lines.append(f"   {name:<40} {m:18.4g} {q:19.4g} {m / q:18.3g}")
    return lines


def default_device_name(device: str) -> str:
    """H200 / H100 / A100 from the CUDA device's name; H200 (the device tool's GPU) otherwise."""
    if device.startswith("cuda"):
        import torch

        name = torch.cuda.get_device_name().upper()
        for known in GPU_NAMES:
            if known in name:
                return known
    return "H200"


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default=None,
                    help="default: cuda (cpu with --smoke)")
    ap.add_argument("--device-name", default=None, help="cost model's reference GPU: H200, H100 or A100 "
                    "(default: from the CUDA device's name)")
    ap.add_argument("--dtypes", nargs="+", default=None, choices=("bfloat16", "float32"),
                    help="default: bfloat16 float32 (float32 with --smoke)")
    ap.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES),
                    help=f"among {', '.join(CASES)}; a case this environment cannot run is listed as not run, "
                         "with the command that runs it")
    ap.add_argument("--subsets", default=None,
                    help="which variants (encred sweep's --subsets: all, k<=1, ...; default all, smoke k<=1)")
    ap.add_argument("--samples", type=int, default=None, help="questions per dataset (default 16; smoke 3)")
    ap.add_argument("--repeats", type=int, default=None, help="alternated repeats of both arms (default 3; smoke 2)")
    ap.add_argument("--budget-s", type=float, default=480.0,
                    help="stop starting new work after this many seconds, and say so (default 480)")
    ap.add_argument("--out", default=None, help="write every figure as JSON here")
    ap.add_argument("--smoke", action="store_true", help="tiny models on the CPU, seconds (for the test)")
    args = ap.parse_args(argv)
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        raise CheckError(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    args.device = args.device or ("cpu" if args.smoke else "cuda")
    args.dtypes = args.dtypes or (["float32"] if args.smoke else ["bfloat16", "float32"])
    args.samples = args.samples or (2 if args.smoke else 16)
    args.subsets = args.subsets or ("k<=1" if args.smoke else "all")
    args.repeats = args.repeats or (2 if args.smoke else 3)
    if args.samples < 1 or args.repeats < 1:
        raise CheckError("--samples and --repeats must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    t0 = time.perf_counter()
    deadline = t0 + args.budget_s
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise CheckError("--device cuda but torch sees no CUDA device; use --smoke (or --device cpu) here")
    from vlmeval_encred.sweep import costmodel
    from vlmeval_encred.tiny_models import cache_root

    device_name = args.device_name or default_device_name(args.device)
    gpu = costmodel.gpu(device_name)
    real = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    sys.path.insert(0, str(HERE))  # sweep_agreement.predictions
    sys.path.insert(0, str(ROOT / "tests"))  # conftest.write_mcq_tsv
    tmp = Path(tempfile.mkdtemp(prefix="encred_gpucheck_"))
    lmu = tmp / "LMUData"
    lmu.mkdir()
    from conftest import write_mcq_tsv

    from vlmeval_encred.demo.data import write_datasets

    write_datasets(lmu, samples_per_category=args.samples)
    write_mcq_tsv(lmu / f"{MCQ}.tsv", n=args.samples)
    run = Run(args.smoke, args.samples, tmp, cache_root())
    results: list[Result] = []
    skipped: list[str] = []
    print(f"gpu_check on {real} ({args.device}); cost model: {gpu.name}; budget {args.budget_s:.0f} s"
          + ("; SMOKE MODE: tiny models on the CPU, figures say nothing about a GPU" if args.smoke else ""))
    try:
        with scoped_env(LMUData=str(lmu), PRED_FORMAT="tsv", HF_HUB_OFFLINE="1"):
            import vlmeval.config  # noqa: F401  (registers our entries)

            for name in args.cases:
                case = CASES[name]
                why = case.unavailable()
                if why:
                    skipped.append(f"{name}: {why}")
                    continue
                for dtype in args.dtypes:
                    if time.perf_counter() > deadline:
                        skipped.append(f"{name} {dtype}: budget of {args.budget_s:.0f} s reached before it started")
                        continue
                    res = check_case(case, run, dtype, args.device, real, gpu, args.repeats, deadline, tmp / "work",
                                     args.subsets)
                    results.append(res)
                    print("\n".join(report(res)), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total = time.perf_counter() - t0
    early = [r for r in results if r.stopped_early] or [s for s in skipped if "budget" in s]
    for s in skipped:
        print(f"not run: {s}")
    print(f"total {total:.0f} s" + ("; STOPPED EARLY (budget): see above" if early else ""))
    if args.out:
        Path(args.out).write_text(json.dumps(dict(
            device=args.device, device_name=real, cost_model_gpu=gpu.name, smoke=args.smoke, budget_s=args.budget_s,
            total_s=total, stopped_early=bool(early), skipped=skipped, results=[asdict(r) for r in results]),
            indent=1, default=str))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CheckError as exc:
        sys.exit(f"gpu_check: {exc}")
