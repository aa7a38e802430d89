"""DeepSeek-VL masking through transformers' DeepseekVLHybridForConditionalGeneration.

Everything here is real code: a tiny random checkpoint is built offline by
``vlmeval_encred.tiny_models`` and loaded with ``from_pretrained`` exactly as the
7B checkpoint would be; only the weights' size differs (no 7B checkpoint can be
downloaded here).  The reference for ``zero`` is the paper's procedure: run the
tower, then replace its output by zeros before the aligner.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from vlmeval_encred.masking import MaskError, MaskSpec, count_params, forward_call_recorder
from vlmeval_encred.model_wrappers.deepseek_vl_hf import DeepseekVLHybridAdapter, EncredDeepseekVLHybrid
from vlmeval_encred.tiny_models import TINY_PREFIX, TinyModelError, ensure_tiny, resolve_model_path

TINY = TINY_PREFIX + "deepseek-vl-hybrid"
BRANCH_MODULES = {"siglip": ("vision_model",),
                  "sam": ("high_res_vision_model", "high_res_vision_neck", "high_res_vision_proj")}
BRANCH_FN = {"siglip": "get_low_res_image_features", "sam": "get_high_res_image_features"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("encred-cache")
    old = os.environ.get("VLMEVAL_ENCRED_CACHE")
    os.environ["VLMEVAL_ENCRED_CACHE"] = str(root)
    yield root
    if old is None:
        os.environ.pop("VLMEVAL_ENCRED_CACHE", None)
    else:
        os.environ["VLMEVAL_ENCRED_CACHE"] = old


@pytest.fixture(scope="module")
def ckpt(cache) -> str:
    return resolve_model_path(TINY)


@pytest.fixture(scope="module")
def png(tmp_path_factory) -> str:
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "chart.png"
    img = Image.new("RGB", (48, 36), (30, 120, 200))
    for x in range(0, 48, 6):
        for y in range(36):
            img.putpixel((x, y), (250, 240, 10))
    img.save(path)
    return str(path)


def message(png: str) -> list[dict]:
    return [dict(type="image", value=png), dict(type="text", value="What colour is the image?")]


def load(ckpt: str):
    from transformers import DeepseekVLHybridForConditionalGeneration

    return DeepseekVLHybridForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def inputs(ckpt, png):
    from PIL import Image
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(ckpt)
    prompt = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                     {"type": "text", "text": "Colour?"}]}],
                                      add_generation_prompt=True, tokenize=False)
    return dict(proc(text=prompt, images=[Image.open(png).convert("RGB")], return_tensors="pt"))


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def run_then_zero(model, masked: tuple[str, ...]) -> None:
    """The authors' semantics: the tower runs, its output is replaced by zeros afterwards."""
    inner = model.model
    for enc in masked:
        original = getattr(inner, BRANCH_FN[enc])

        def patched(pixel_values, *a, _orig=original, **kw):
            out = _orig(pixel_values, *a, **kw)
            out.last_hidden_state = torch.zeros_like(out.last_hidden_state)
            return out

        setattr(inner, BRANCH_FN[enc], patched)


def test_tiny_checkpoint_is_built_once_atomically(cache, ckpt):
    d = Path(ckpt)
    assert d.parent == cache and (d / "config.json").is_file() and (d / "encred_tiny.json").is_file()
    assert (d / "chat_template.jinja").is_file() and (d / "tokenizer.json").is_file()
    stamp = (d / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny("deepseek-vl-hybrid") == d
    assert (d / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []  # no temporary leftovers
    assert resolve_model_path("deepseek-community/deepseek-vl-7b-chat") == "deepseek-community/deepseek-vl-7b-chat"
    with pytest.raises(TinyModelError, match="deepseek-vl-hybrid"):
        resolve_model_path(TINY_PREFIX + "nope")


def test_encoders_and_shapes_match_the_real_outputs(ckpt, inputs):
    model = load(ckpt)
    infos = DeepseekVLHybridAdapter().encoders(model)
    assert [i.name for i in infos] == ["siglip", "sam"]
    with torch.no_grad():
        low = model.model.get_low_res_image_features(inputs["pixel_values"]).last_hidden_state
        high = model.model.get_high_res_image_features(inputs["high_res_pixel_values"]).last_hidden_state
    assert infos[0].output_shape == tuple(low.shape[1:])
    assert infos[1].output_shape == tuple(high.shape[1:])
    assert high.abs().mean() > 1e-3  # initializer_range=0.02: SAM output does not vanish
    assert infos[0].params == count_params(model.model.vision_model)
    assert infos[1].params == sum(count_params(getattr(model.model, m)) for m in BRANCH_MODULES["sam"]) + 1


@pytest.mark.parametrize("masked", [("siglip",), ("sam",), ("siglip", "sam")])
def test_zero_mask_real_class(ckpt, inputs, masked):
    full = logits(load(ckpt), inputs)

    ref_model = load(ckpt)
    run_then_zero(ref_model, masked)
    reference = logits(ref_model, inputs)

    model = load(ckpt)
    watched = {m: getattr(model.model, m) for enc in ("siglip", "sam") for m in BRANCH_MODULES[enc]}
    calls, handles = forward_call_recorder(watched)  # attached before masking
    before = count_params(model)
    report = DeepseekVLHybridAdapter().apply(model, MaskSpec(masked), "tiny")
    masked_logits = logits(model, inputs)
    for h in handles:
        h.remove()

    assert torch.equal(masked_logits, reference), "zero mask differs from run-then-zero"
    assert not torch.allclose(masked_logits, full), "masking did not change the logits"
    for enc in ("siglip", "sam"):
        for m in BRANCH_MODULES[enc]:
            if enc in masked:
                assert calls[m] == 0, f"{m} ran although {enc} is masked"
                assert getattr(model.model, m) is None
            else:
                assert calls[m] >= 1
    tower_params = sum(i.params for i in report.encoders if i.name in masked)
    assert before - count_params(model) == tower_params == report.released_params
    if "sam" in masked:
        assert model.model.high_res_vision_alpha is None


def test_wrapper_generates_and_masks(cache, png):
    full = EncredDeepseekVLHybrid(TINY, torch_dtype="float32", device="cpu", max_new_tokens=4)
    w = EncredDeepseekVLHybrid(TINY, mask=("sam",), encred_base="deepseek_vl_tiny_random",
                               torch_dtype="float32", device="cpu", max_new_tokens=4)
    assert w.encred_report.spec.masked == ("sam",) and w.model.model.high_res_vision_model is None
    msg = message(png)
    inputs = w.build_inputs(msg)
    assert int((inputs["input_ids"] == w.model.config.image_token_id).sum()) == 16
    assert not torch.allclose(logits(full.model, inputs), logits(w.model, inputs))
    answer = w.generate(msg)
    assert isinstance(answer, str)
    assert w.kwargs["do_sample"] is False and w.kwargs["max_new_tokens"] == 4
    sampled = EncredDeepseekVLHybrid(TINY, torch_dtype="float32", device="cpu", do_sample=True, temperature=0.7)
    assert sampled.kwargs["do_sample"] is True and sampled.kwargs["temperature"] == 0.7


def test_catalog_entry_builds_this_wrapper(cache):
    from vlmeval_encred.registry import parse_entry_name

    entry = parse_entry_name("deepseek_vl_tiny_random_mask_siglip")
    cls = entry.base.load_wrapper_class()
    assert cls is EncredDeepseekVLHybrid
    assert parse_entry_name("deepseek_vl_7b_hf").base.load_wrapper_class() is EncredDeepseekVLHybrid
    kw = entry.kwargs()
    assert kw["max_new_tokens"] == 8 and kw["torch_dtype"] == "float32" and kw["device"] == "cpu"
    w = cls(**kw)
    assert w.encred_report.spec.masked == ("siglip",) and w.model.model.vision_model is None


def test_errors_name_valid_encoders_and_modes(ckpt):
    model = load(ckpt)
    with pytest.raises(MaskError, match=r"no encoder named 'clip'.*siglip, sam"):
        DeepseekVLHybridAdapter().apply(model, MaskSpec(("clip",)), "tiny")
    with pytest.raises(MaskError, match=r"does not support mask mode 'drop'.*zero"):
        DeepseekVLHybridAdapter().apply(model, MaskSpec(("sam",), "drop"), "tiny")
    assert model.model.high_res_vision_model is not None  # nothing was touched
    with pytest.raises(MaskError, match="not a DeepseekVLHybrid"):
        DeepseekVLHybridAdapter().encoders(torch.nn.Linear(2, 2))


@pytest.fixture(scope="module")
def loud_ckpt(ckpt, tmp_path_factory) -> str:
    """The tiny checkpoint with the aligner's and language model's matrices redrawn at std 0.3, so
    that greedy answers depend on the image and differ between subsets (the stock init, std 0.02,
    answers the same for every input, which would make an equality test vacuous)."""
    from transformers import AutoProcessor

    model = load(ckpt)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for part in (model.model.aligner, model.model.language_model):
            for prm in part.parameters():
                if prm.dim() >= 2:
                    prm.copy_(torch.randn(prm.shape, generator=gen) * 0.3)
    dest = tmp_path_factory.mktemp("dsvl-loud")
    model.save_pretrained(dest)
    AutoProcessor.from_pretrained(ckpt).save_pretrained(dest)
    return str(dest)


def test_sweep_support_equals_per_variant_generate(loud_ckpt, png, tmp_path):
    """Every subset's answer from one shared encoding and the shared-prefix decoder
    (``decode([fuse(...)])``) equals the masked variant's own ``generate_inner`` (transformers'
    ``generate`` on the pixels), string for string, for two prompts and images; the chat
    template's text before the image was prefilled once per call, not per subset.  With
    sampling settings ``fuse`` refuses and ``fuse_and_generate`` decodes with ``generate``."""
    import itertools

    import numpy as np
    from PIL import Image

    from vlmeval_encred.sweep.decoding import DecodeRequest, collect
    from vlmeval_encred.sweep.protocol import support_for

    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(noise)
    messages = [message(png), [dict(type="image", value=str(noise)), dict(type="text", value="Count the dots.")]]
    names = ["siglip", "sam"]
    subsets = [c for k in range(len(names) + 1) for c in itertools.combinations(names, k)]
    kw = dict(torch_dtype="float32", device="cpu", max_new_tokens=6)
    full = EncredDeepseekVLHybrid(loud_ckpt, **kw)
    variants = [EncredDeepseekVLHybrid(loud_ckpt, mask=s, **kw) for s in subsets]
    support = support_for(full)
    seen = set()
    for msg in messages:
        inputs = support.prepare(full, msg, None)
        feats = support.encode(full, inputs, names)
        per_subset = [{n: None if n in s else feats[n] for n in names} for s in subsets]
        request = support.fuse(full, inputs, per_subset, "zero")
        assert isinstance(request, DecodeRequest) and request.embeds.shape[0] == len(subsets)
        with collect() as stats:
            got = support.fuse_and_generate(full, inputs, per_subset, "zero")
        assert got == [v.generate_inner(msg) for v in variants]
        assert stats.calls == 1 and stats.prefix_tokens > 0 and stats.prefilled_tokens < stats.prompt_tokens
        seen.update(got)
    assert len(seen) > 1, "every answer alike: the comparison would be vacuous"
    sampled = EncredDeepseekVLHybrid(loud_ckpt, do_sample=True, temperature=0.7, **kw)
    with pytest.raises(ValueError, match=r"not plain greedy \(do_sample=True\)"):
        support.fuse(sampled, inputs, per_subset, "zero")
    with collect() as stats:
        assert len(support.fuse_and_generate(sampled, inputs, per_subset, "zero")) == len(subsets)
    assert stats.calls == 0
