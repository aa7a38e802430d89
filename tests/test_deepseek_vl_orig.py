"""DeepSeek-VL masking through the original ``deepseek_vl`` package's ``HybridVisionTower``, on a stand-in.

These tests run on the tiny stand-in under tests/standins/deepseek_vl (same
module paths, class and attribute names and forward contract; tiny towers
instead of SAM-B and SigLIP-L), in the base environment and in the
``deepseek_vl`` one (transformers 4.57).  The real package is tested in
tests/test_deepseek_vl_realcode.py (``deepseek_vl`` environment): under the
base environment's transformers 5 it does not import.  The reference for
``zero`` is the authors' procedure (run the tower, then replace its output by
zeros); for ``drop`` it is zeros at the aligner's concatenation.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

STANDINS = Path(__file__).parent / "standins"
pytestmark = pytest.mark.envs("base", "deepseek_vl")


sys.path.append(str(STANDINS))  # appended: an installed real package would win, so check below
from vlmeval_encred.upstream import forget_modules  # noqa: E402

if "standins" not in str(getattr(sys.modules.get("deepseek_vl"), "__file__", "standins")):
    forget_modules("deepseek_vl")  # the real package, imported by another test module

from vlmeval_encred.masking import MaskError, MaskSpec, count_params, forward_call_recorder  # noqa: E402
from vlmeval_encred.model_wrappers.deepseek_vl import EncredDeepSeekVL, HybridVisionTowerAdapter  # noqa: E402

N_TOKENS = 16
HIGH = dict(model_name="sam_b_downsample", select_feature="same", image_size=64, output_dim=32, select_layer=-1,
            pixel_mean=(0.48145466, 0.4578275, 0.40821073), pixel_std=(0.26862954, 0.26130258, 0.27577711))
LOW = dict(model_name="siglip_large_patch16_384", select_feature="same", image_size=32, output_dim=32,
           select_layer=-1, pixel_mean=(0.5, 0.5, 0.5), pixel_std=(0.5, 0.5, 0.5))


def _standin_only() -> None:
    """The stand-in must be what ``deepseek_vl`` imports (not an installed real package)."""
    import deepseek_vl

    if not getattr(deepseek_vl, "ENCRED_STANDIN", False):
        forget_modules("deepseek_vl")
        sys.path.remove(str(STANDINS))
        sys.path.insert(0, str(STANDINS))
        import deepseek_vl
    assert deepseek_vl.ENCRED_STANDIN, deepseek_vl.__file__


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    """A tiny MultiModalityCausalLM checkpoint of the stand-in, saved with save_pretrained."""
    _standin_only()
    from deepseek_vl.models import VLChatProcessor
    from deepseek_vl.models.modeling_vlm import MultiModalityCausalLM, MultiModalityConfig

    from vlmeval_encred.model_wrappers.deepseek_vl_hf.tiny import build_tokenizer

    tok = build_tokenizer()
    cfg = MultiModalityConfig(
        vision_config=dict(cls="HybridVisionTower", params=dict(high_res_cfg=HIGH, low_res_cfg=LOW,
                                                                 concat_type="tuple")),
        aligner_config=dict(cls="MlpProjector", params=dict(projector_type="low_high_hybrid_split_mlp_gelu",
                                                            input_dim=32, n_embed=64, depth=2)),
        language_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=4, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    torch.manual_seed(0)
    model = MultiModalityCausalLM(cfg)
    d = tmp_path_factory.mktemp("dsvl-standin")
    model.save_pretrained(d)
    VLChatProcessor(tok, image_size=HIGH["image_size"], num_image_tokens=N_TOKENS).save_pretrained(str(d))
    return str(d)


@pytest.fixture(scope="module")
def png(tmp_path_factory) -> str:
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "bars.png"
    img = Image.new("RGB", (50, 40), (240, 240, 240))
    for x in range(5, 45):
        for y in range(10 + x // 3, 40):
            img.putpixel((x, y), (200, 30, 30) if x < 25 else (30, 30, 200))
    img.save(path)
    return str(path)


def _load(ckpt: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(ckpt, trust_remote_code=True).eval()


@pytest.fixture(scope="module")
def batch(ckpt, png):
    from deepseek_vl.models import VLChatProcessor
    from deepseek_vl.utils.io import load_pil_images

    proc = VLChatProcessor.from_pretrained(ckpt)
    conv = [dict(role="User", content="<image_placeholder>Which bar is taller?", images=[png]),
            dict(role="Assistant", content="")]
    return proc(conversations=conv, images=load_pil_images(conv), force_batchify=True).to("cpu", torch.float32)


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        emb = model.prepare_inputs_embeds(**batch)
        return model.language_model(inputs_embeds=emb, attention_mask=batch.attention_mask).logits


TOWER = {"siglip": "vision_tower_low", "sam": "vision_tower_high"}


def _run_then_zero(model, masked) -> None:
    for enc in masked:
        getattr(model.vision_model, TOWER[enc]).register_forward_hook(lambda _m, _i, out: torch.zeros_like(out))


def test_encoders_and_shapes(ckpt, batch):
    model = _load(ckpt)
    infos = HybridVisionTowerAdapter(N_TOKENS).encoders(model)
    assert [i.name for i in infos] == ["siglip", "sam"]
    with torch.no_grad():
        high, low = model.vision_model(batch.pixel_values.flatten(0, 1))
    assert infos[0].output_shape == tuple(low.shape[1:]) and infos[1].output_shape == tuple(high.shape[1:])
    assert infos[1].params == count_params(model.vision_model.vision_tower_high)
    with pytest.raises(MaskError, match="num_image_tokens"):
        HybridVisionTowerAdapter().encoders(model)


@pytest.mark.parametrize("masked", [("siglip",), ("sam",), ("siglip", "sam")])
def test_zero_mask(ckpt, batch, masked):
    full = _logits(_load(ckpt), batch)
    ref = _load(ckpt)
    _run_then_zero(ref, masked)
    reference = _logits(ref, batch)

    model = _load(ckpt)
    towers = {enc: getattr(model.vision_model, attr) for enc, attr in TOWER.items()}
    calls, handles = forward_call_recorder(towers)  # attached before masking
    before = count_params(model)
    report = HybridVisionTowerAdapter(N_TOKENS).apply(model, MaskSpec(masked), "standin")
    out = _logits(model, batch)
    for h in handles:
        h.remove()
    assert torch.equal(out, reference)
    assert not torch.allclose(out, full)
    for enc, attr in TOWER.items():
        if enc in masked:
            assert calls[enc] == 0 and getattr(model.vision_model, attr) is None
        else:
            assert calls[enc] == 1
    tower_params = sum(count_params(t) for e, t in towers.items() if e in masked)
    assert before - count_params(model) == tower_params == report.released_params


def test_wrapper_generates(ckpt, png):
    _standin_only()
    msg = [dict(type="image", value=png), dict(type="text", value="Which bar is taller?")]
    full = EncredDeepSeekVL(ckpt, torch_dtype="float32", device="cpu", max_new_tokens=4)
    w = EncredDeepSeekVL(ckpt, mask=("sam",), encred_base="deepseek_vl_7b_orig", torch_dtype="float32",
                         device="cpu", max_new_tokens=4)
    assert w.model.vision_model.vision_tower_high is None and w.encred_report.released_params > 0
    answer = w.generate(msg)
    assert isinstance(answer, str)
    conv = w.prepare_inputs(msg)  # VLMEvalKit's own conversation builder
    from deepseek_vl.utils.io import load_pil_images

    batch = w.vl_chat_processor(conversations=conv, images=load_pil_images(conv)).to("cpu", torch.float32)
    assert not torch.allclose(_logits(full.model, batch), _logits(w.model, batch))
    assert w.kwargs["do_sample"] is False
    with pytest.raises(MaskError, match=r"no encoder named 'clip'.*siglip, sam"):
        EncredDeepSeekVL(ckpt, mask=("clip",), torch_dtype="float32", device="cpu")
    with pytest.raises(MaskError, match="mask mode 'zero_context'.*zero, drop"):
        EncredDeepSeekVL(ckpt, mask=("sam",), mask_mode="zero_context", torch_dtype="float32", device="cpu")


def test_catalog_points_here():
    from vlmeval_encred.registry import parse_entry_name

    assert parse_entry_name("deepseek_vl_7b_orig_mask_sam").base.load_wrapper_class() is EncredDeepSeekVL


def test_not_a_hybrid_tower():
    with pytest.raises(MaskError, match="HybridVisionTower"):
        HybridVisionTowerAdapter(4).encoders(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("masked", [("siglip",), ("sam",), ("siglip", "sam")])
def test_drop_mask_removes_the_branch_at_the_concatenation(ckpt, batch, masked):
    """``drop``: the masked branch's up-projection output is zero at the concatenation (reference:
    run everything, zero that output); differs from ``zero`` by the branch bias (set non-zero here:
    the stand-in's checkpoint initialises biases to zero)."""

    def _load_biased(path):
        m = _load(path)
        with torch.no_grad():
            for lin in (m.aligner.high_up_proj, m.aligner.low_up_proj):
                lin.bias.copy_(torch.linspace(-0.5, 0.5, lin.bias.numel()))
        return m

    ref = _load_biased(ckpt)
    branch = {"siglip": "low_up_proj", "sam": "high_up_proj"}
    for enc in masked:
        getattr(ref.aligner, branch[enc]).register_forward_hook(lambda _m, _i, out: torch.zeros_like(out))
    reference = _logits(ref, batch)
    zero = _load_biased(ckpt)
    HybridVisionTowerAdapter(N_TOKENS).apply(zero, MaskSpec(masked, "zero"), "standin")
    model = _load_biased(ckpt)
    towers = {enc: getattr(model.vision_model, attr) for enc, attr in TOWER.items()}
    tower_params = sum(count_params(t) for e, t in towers.items() if e in masked)
    up_params = sum(count_params(getattr(model.aligner, branch[e])) for e in masked)
    calls, _ = forward_call_recorder(towers)
    report = HybridVisionTowerAdapter(N_TOKENS).apply(model, MaskSpec(masked, "drop"), "standin")
    out = _logits(model, batch)
    assert torch.equal(out, reference)
    assert not torch.allclose(out, _logits(zero, batch))
    assert all(calls[e] == 0 for e in masked)
    assert report.released_params == tower_params + up_params
    assert report.notes and report.notes[0].startswith("mode=drop:")


def test_wrong_environment_fails_before_loading(monkeypatch):
    """The catalog entry's ``requires``: where transformers cannot run the original package (the
    base environment's 5.x), building a masked entry fails in the wrapper's first line, naming
    the versions and the recipe, before anything is loaded; where it can, the check passes."""
    import importlib.metadata as md

    from packaging.specifiers import SpecifierSet

    from vlmeval_encred.recipes import EnvironmentMismatch, check_requires
    from vlmeval_encred.registry import get_base, parse_entry_name

    spec = get_base("deepseek_vl_7b_orig")
    assert spec.recipe == "deepseek_vl" and "transformers" in spec.requires
    have = md.version("transformers")
    if SpecifierSet(spec.requires["transformers"]).contains(have):
        check_requires(spec.requires, "deepseek_vl_7b_orig", spec.recipe)  # deepseek_vl environment
        return
    import transformers

    def no_load(*_a, **_k):
        raise AssertionError("weights were being loaded before the environment check")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_load)
    entry = parse_entry_name("deepseek_vl_7b_orig_mask_sam")
    with pytest.raises(EnvironmentMismatch) as err:
        entry.base.load_wrapper_class()(**entry.kwargs())
    msg = str(err.value)
    assert f"transformers {have} is installed" in msg and "transformers>=4.38.2,<5" in msg
    assert "deepseek_vl/recipe.txt" in msg and "--env deepseek_vl" in msg


def test_sweep_support_equals_per_variant_generate(ckpt, png):
    """On the stand-in, in this environment's transformers: every subset's answer from one shared
    encoding and the shared-prefix decoder equals the masked variant's own ``generate_inner``, in
    both modes; the conversation's system prompt is prefilled once per call, not per subset."""
    import itertools

    from vlmeval_encred.sweep.decoding import collect
    from vlmeval_encred.sweep.protocol import support_for

    _standin_only()
    msg = [dict(type="image", value=png), dict(type="text", value="Which bar is taller?")]
    kw = dict(torch_dtype="float32", device="cpu", max_new_tokens=5)
    full = EncredDeepSeekVL(ckpt, **kw)
    support = support_for(full)
    names = ["siglip", "sam"]
    subsets = [c for k in range(len(names) + 1) for c in itertools.combinations(names, k)]
    inputs = support.prepare(full, msg, None)
    feats = support.encode(full, inputs, names)
    per_subset = [{n: None if n in s else feats[n] for n in names} for s in subsets]
    for mode in ("zero", "drop"):
        with collect() as stats:
            got = support.fuse_and_generate(full, inputs, per_subset, mode)
        assert got == [EncredDeepSeekVL(ckpt, mask=s, mask_mode=mode, **kw).generate_inner(msg) for s in subsets]
        assert stats.calls == 1 and stats.prefix_tokens > 0 and stats.prefilled_tokens < stats.prompt_tokens
        assert len(set(got)) > 1, "every subset answers alike: the comparison would be vacuous"
