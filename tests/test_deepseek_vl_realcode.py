"""The original DeepSeek-VL family against the *real* upstream code (github.com/deepseek-ai/DeepSeek-VL).

Runs in the ``deepseek_vl`` environment (model_wrappers/deepseek_vl/recipe.txt:
transformers 4.57; the package does not import under transformers 5).  The model
is upstream's ``MultiModalityCausalLM`` with upstream's SAM/SigLIP towers, aligner
and Llama, tiny and random (model_wrappers/deepseek_vl/selftest.py), saved and
loaded like a checkpoint; fp32 on the CPU.  Mocked, because it cannot exist here:
a GPU (VLMEvalKit's ``DeepSeekVL`` calls ``.cuda()``; the test makes that a no-op
and the model stays on the CPU) and the 7B weights (the 7B tower geometry is
checked with parameters on PyTorch's meta device, which computes shapes without weights).

Without a registered DeepSeek-VL clone (encred sources add deepseek_vl ...) its tests are
reported "not run here" (counted in the real-code table CI prints), never passed.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from conftest import real_selftest

pytestmark = [pytest.mark.envs("deepseek_vl"), pytest.mark.realcode("deepseek_vl")]

MASKS = [("siglip",), ("sam",), ("siglip", "sam")]
PROMPT = "Which bar is taller?"


@pytest.fixture(scope="module")
def selftest():
    return real_selftest("deepseek_vl")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dsvl-real")


@pytest.fixture(scope="module")
def base(selftest, workdir):
    return selftest.build(workdir)


@pytest.fixture(scope="module")
def ckpt(selftest, workdir) -> str:
    """The tiny checkpoint (the same folder the self-test's build() uses)."""
    from vlmeval_encred.model_wrappers.deepseek_vl.selftest import build_tiny_checkpoint

    return str(build_tiny_checkpoint(workdir / "deepseek_vl_tiny"))


@pytest.fixture(scope="module")
def message(selftest, workdir):
    from vlmeval_encred.model_wrappers.deepseek_vl.selftest import test_image

    png = test_image(workdir / "msg.png")
    return [dict(type="image", value=png), dict(type="text", value=PROMPT)]


def test_selftest_all_checks_pass(selftest, workdir):
    from vlmeval_encred.realcode.checks import run_selftest

    results = run_selftest(selftest, workdir)
    failed = [r.line() for r in results if not r.ok]
    assert not failed, "\n".join(failed)
    kinds = {(r.check, r.subject) for r in results}
    for masked in MASKS:
        m = ",".join(masked)
        assert ("zero_equals_run_then_zero", f"mask={m} mode=zero") in kinds
        assert ("drop_equals_run_then_drop", f"mask={m} mode=drop") in kinds
        assert ("not_called", f"mask={m} mode=drop") in kinds


@pytest.mark.parametrize("masked", MASKS)
def test_drop_is_exact_branch_removal_and_differs_from_zero(selftest, base, masked):
    """``drop`` (zeros at the concatenation) equals the aligner rebuilt without the branch, bit for
    bit; ``zero`` (zeros before the branch Linear) differs from it by the bias term.  The printed
    figures are the ones docs/masking.md quotes."""
    from vlmeval_encred.masking import MaskSpec

    zero = selftest.fresh(base)
    selftest.adapter().apply(zero, MaskSpec(masked, "zero"))
    drop = selftest.fresh(base)
    selftest.adapter().apply(drop, MaskSpec(masked, "drop"))
    z, d = selftest.run(zero), selftest.run(drop)
    removed = selftest.run_without_branch(selftest.fresh(base), masked)
    full = selftest.run(base)
    assert torch.equal(d, removed)
    diff = (z - d).abs().max().item()
    print(f"mask={','.join(masked)}: max|logits zero - drop| = {diff:.4g}; "
          f"max|full - zero| = {(full - z).abs().max().item():.4g}")
    assert diff > 1e-3


def test_7b_tower_geometry_on_meta_device(selftest):
    """The 7B's own tower configs (SAM-B 1024 px, SigLIP-L 384 px, 1024 channels) through upstream's
    builders on the meta device: both branches give 576 tokens of 1024 channels, the adapter names
    them siglip and sam in that order and reads the same shapes."""
    from attrdict import AttrDict
    from deepseek_vl.models.clip_encoder import HybridVisionTower
    from deepseek_vl.models.projector import MlpProjector

    from vlmeval_encred.model_wrappers.deepseek_vl import HybridVisionTowerAdapter

    high = dict(model_name="sam_b_downsample", select_feature="same", image_size=1024, select_layer=-1,
                pixel_mean=(0.48145466, 0.4578275, 0.40821073), pixel_std=(0.26862954, 0.26130258, 0.27577711))
    low = dict(model_name="siglip_large_patch16_384", select_feature="same", image_size=384, select_layer=-1,
               pixel_mean=(0.5, 0.5, 0.5), pixel_std=(0.5, 0.5, 0.5))

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vision_model = HybridVisionTower(high, low, concat_type="tuple")
            self.aligner = MlpProjector(AttrDict(projector_type="low_high_hybrid_split_mlp_gelu",
                                                 input_dim=1024, n_embed=4096, depth=2))

    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):  # parameters on "meta": no memory
        holder = Holder()
    for sub in (holder.vision_model.vision_tower_high, holder.vision_model.vision_tower_low):
        sub.image_norm = None  # torchvision's Normalize reads its std values, which meta tensors lack
    with torch.no_grad():
        h, lo = holder.vision_model(torch.empty(1, 3, 1024, 1024, device="meta"))
    assert tuple(h.shape) == (1, 576, 1024) and tuple(lo.shape) == (1, 576, 1024)
    infos = HybridVisionTowerAdapter(576).encoders(holder)
    assert [(i.name, i.output_shape) for i in infos] == [("siglip", (576, 1024)), ("sam", (576, 1024))]


def _wrapper(ckpt: str, **kw):
    from vlmeval_encred.model_wrappers.deepseek_vl import EncredDeepSeekVL

    kw.setdefault("torch_dtype", "float32")
    return EncredDeepSeekVL(ckpt, device="cpu", max_new_tokens=kw.pop("max_new_tokens", 6),
                            encred_base="deepseek_vl_7b_orig", **kw)


def test_vlmevalkit_wrapper_and_ours_answer_alike(ckpt, message, monkeypatch):
    """VLMEvalKit's own ``DeepSeekVL`` (its loader, conversation, processor call and decoding) and our
    unmasked ``EncredDeepSeekVL`` give the same greedy answer on the same checkpoint, in VLMEvalKit's
    bfloat16.  Mocked: ``.cuda()`` (no GPU here) returns the module unchanged, so it runs on the CPU."""
    from vlmeval.vlm.deepseek_vl import DeepSeekVL

    monkeypatch.setattr(torch.nn.Module, "cuda", lambda self, *a, **k: self)
    theirs = DeepSeekVL(model_path=ckpt, max_new_tokens=6)
    assert theirs.model.dtype == torch.bfloat16 and type(theirs.model).__module__.startswith("deepseek_vl.")
    ours = _wrapper(ckpt, torch_dtype="bfloat16")
    assert ours.generate(message) == theirs.generate(message).strip()


@pytest.mark.parametrize("mode", ["zero", "drop"])
def test_masked_wrapper_reports_its_mode(ckpt, message, mode):
    """The mode is on the wrapper and in its MaskReport; masking happens before the cast to the
    run dtype, so the zeros (and ZeroBranch's) follow the model into bfloat16."""
    w = _wrapper(ckpt, mask=("sam",), mask_mode=mode, torch_dtype="bfloat16", max_new_tokens=3)
    assert isinstance(w.generate(message), str)
    assert w.mask_mode == mode and w.encred_report.spec.mode == mode
    from vlmeval_encred.model_wrappers.deepseek_vl import MODE_NOTES

    assert w.encred_report.notes == [f"mode={mode}: {MODE_NOTES[mode]}"]
    assert w.model.vision_model.vision_tower_high is None
    dropped = type(w.model.aligner.high_up_proj).__name__
    assert dropped == ("ZeroBranch" if mode == "drop" else "Linear")


@pytest.mark.parametrize("mode", ["zero", "drop"])
def test_sweep_support_equals_per_variant_generate(ckpt, message, mode):
    """Every subset's answer from one shared encoding and the shared-prefix decoder
    (``decode([fuse(...)])``) equals the masked variant's own ``generate_inner``, string for
    string (fp32, CPU, greedy); the chat template's system prompt was prefilled once, not per
    subset.  With sampling settings the support falls back to ``generate`` and ``fuse`` refuses."""
    from vlmeval_encred.masking import MaskError
    from vlmeval_encred.sweep.decoding import DecodeRequest, collect
    from vlmeval_encred.sweep.protocol import support_for

    full = _wrapper(ckpt)
    support = support_for(full)
    names = ["siglip", "sam"]
    subsets = [c for k in range(len(names) + 1) for c in itertools.combinations(names, k)]
    inputs = support.prepare(full, message, None)
    feats = support.encode(full, inputs, names)
    per_subset = [{n: None if n in s else feats[n] for n in names} for s in subsets]
    request = support.fuse(full, inputs, per_subset, mode)
    assert isinstance(request, DecodeRequest) and request.embeds.shape[0] == len(subsets)
    with collect() as stats:
        got = support.fuse_and_generate(full, inputs, per_subset, mode)
    want = [_wrapper(ckpt, mask=s, mask_mode=mode).generate_inner(message) for s in subsets]
    print(mode, got, stats)
    assert got == want
    assert len(set(got)) > 1, "all subsets answer alike: the comparison would be vacuous"
    assert stats.calls == 1 and stats.rows == len(subsets)
    assert stats.prefix_tokens > 0 and stats.prefilled_tokens < stats.prompt_tokens
    sampled = _wrapper(ckpt, do_sample=True, temperature=0.7)
    assert sampled.greedy_settings()[1] == "do_sample=True"
    with pytest.raises(MaskError, match="not plain greedy"):
        support.fuse(sampled, inputs, per_subset, mode)
    with collect() as stats:
        assert len(support.fuse_and_generate(sampled, inputs, per_subset, mode)) == len(subsets)
    assert stats.calls == 0  # decoded by generate(), not the shared-prefix decoder
    # the full model's fusion was restored after the sweep's temporary swaps
    assert type(full.model.aligner.high_up_proj).__name__ == "Linear" and "forward" not in vars(full.model.vision_model)


@pytest.mark.parametrize("mode", ["zero", "drop"])
def test_engine_sweep_equals_vlmevalkit_per_variant(ckpt, workdir, tmp_path, mode):
    """``run_sweep`` over every subset of a base whose (first) mode is ``mode``, against VLMEvalKit's
    own ``infer_data_job`` per variant: the predictions are equal, string for string."""
    from conftest import write_mcq_tsv
    from vlmeval.dataset import build_dataset
    from vlmeval.inference import infer_data_job
    from vlmeval.smp import load

    import vlmeval.config
    from vlmeval_encred.registry import BaseModelSpec, entries, register_base
    from vlmeval_encred.sweep.engine import run_sweep
    from vlmeval_encred.vlmeval_plugin import after_config

    ds = "EncredDsvlSweep_MCQ"
    lmu = workdir / f"LMUData-{mode}"
    lmu.mkdir(exist_ok=True)
    write_mcq_tsv(lmu / f"{ds}.tsv", n=2)
    from vlmeval_encred.realcode.envscope import scoped_env

    with scoped_env(LMUData=str(lmu), PRED_FORMAT="xlsx"):
        spec = register_base(BaseModelSpec(
            name=f"dsvl_realtiny_{mode}", family="deepseek_vl", checkpoint=ckpt,
            encoders=("siglip", "sam"), wrapper="vlmeval_encred.model_wrappers.deepseek_vl:EncredDeepSeekVL",
            loader={"max_new_tokens": 5, "torch_dtype": "float32", "device": "cpu"}, modes=(mode,),
            description="tiny random upstream DeepSeek-VL (test only)"))
        after_config(vlmeval.config)
        chosen = entries(base=spec.name)
        rep = run_sweep(spec, chosen, [ds], str(tmp_path / "sweep"), progress=False)
        assert rep.datasets[0].encoder_calls == {"siglip": 2, "sam": 2}
        dec = rep.datasets[0].decoding  # the shared-prefix decoder ran: system prompt once, not per subset
        assert dec.calls == 2 and dec.prefix_tokens > 0 and dec.prefilled_tokens < dec.prompt_tokens
        seen = set()
        for e in chosen:
            root = tmp_path / "ref" / e.name
            root.mkdir(parents=True)
            infer_data_job(e.name, work_dir=str(root), model_name=e.name, dataset=build_dataset(ds))
            got = load(str(tmp_path / "sweep" / e.name / f"{e.name}_{ds}.xlsx"))
            want = load(str(root / f"{e.name}_{ds}.xlsx"))
            assert list(got["prediction"]) == list(want["prediction"]), e.name
            seen.update(got["prediction"])
        assert len(seen) > 1


def test_transformers_port_refuses_this_environment():
    """transformers' DeepseekVLHybrid entries need 5.x (see the catalog); here (4.57) building one
    fails in the wrapper's first line, naming the versions, before the tiny checkpoint is built."""
    import importlib.metadata as md

    from vlmeval_encred.recipes import EnvironmentMismatch
    from vlmeval_encred.registry import parse_entry_name

    entry = parse_entry_name("deepseek_vl_tiny_random_mask_sam")
    with pytest.raises(EnvironmentMismatch) as err:
        entry.base.load_wrapper_class()(**entry.kwargs())
    assert f"transformers {md.version('transformers')} is installed, deepseek_vl_tiny_random needs " \
           "transformers>=5.18" in str(err.value)
