"""Eagle-1 masking (model_wrappers/eagle1/modeling.py) on a tiny stand-in of NVlabs EAGLE.

The ``eagle`` package is not pip-installable and its checkpoints are 7B+, so
these tests import the stand-in under tests/standins/eagle/ (same module
paths, class/attribute names and forward contracts as upstream; each module
names the upstream file it mirrors) and build a tiny random checkpoint with
all five towers.  Tower widths differ (clip 24, convnext 40, sam 16, eva02
12, pix2struct 20) and so do their raw grids (24x24 tokens, 32x32 tokens, a
pixel-shuffled 32x32 map, a 64x64 map, a 45x45 grid resized by the tower),
so the fusion's interpolation paths are all exercised.

Mocked, because it is GPU-specific and no GPU exists here: only in the
wrapper tests, VLMEvalKit's hard-coded ``device_map="cuda"`` (load) and
``.to(device='cuda')`` (generate_inner) are redirected to the CPU.  The
model runs in float16 there, as VLMEvalKit asks.  Everything else --
VLMEvalKit's ``Eagle.__init__``/``generate_inner``, the stand-in's loader,
the adapter -- is real code.

Tolerance for ``drop`` == ``zero``: float32, ``atol=1e-6, rtol=1e-5``
(dropping columns changes only the summation order of the first Linear).
"""

from __future__ import annotations

import copy
import itertools
import sys
from pathlib import Path

import pytest
import torch

from vlmeval_encred.masking import MaskError, MaskSpec, count_params, forward_call_recorder

pytestmark = pytest.mark.envs("base", "eagle1")

STANDINS = Path(__file__).parent / "standins"
X5 = ("clip", "convnext", "sam", "eva02", "pix2struct")
WIDTHS = {"clip": 24, "convnext": 40, "sam": 16, "eva02": 12, "pix2struct": 20}
SUBSETS = [s for k in range(1, len(X5) + 1) for s in itertools.combinations(X5, k)]


def _forget_eagle() -> None:
    for name in [m for m in sys.modules if m == "eagle" or m.startswith("eagle.")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def eagle_pkg():
    """Put the stand-in first on sys.path as ``eagle``; undo afterwards (the integration test
    must see the real package if one is installed)."""
    _forget_eagle()
    sys.path.insert(0, str(STANDINS))
    import eagle
    import eagle_tiny

    assert Path(eagle.__file__).resolve().is_relative_to(STANDINS.resolve())
    yield eagle_tiny
    sys.path.remove(str(STANDINS))
    sys.modules.pop("eagle_tiny", None)
    _forget_eagle()


@pytest.fixture(scope="module")
def ckpt(eagle_pkg, tmp_path_factory) -> Path:
    return eagle_pkg.build_checkpoint(tmp_path_factory.mktemp("ckpt") / "Eagle-X5-tiny")


@pytest.fixture(scope="module")
def base_model(ckpt):
    from eagle.model import EagleLlamaForCausalLM

    from eagle.model.builder import DTYPE_KEYWORD

    return EagleLlamaForCausalLM.from_pretrained(str(ckpt), **{DTYPE_KEYWORD: torch.float32}).eval()


@pytest.fixture(scope="module")
def inputs(base_model, eagle_pkg):
    """One noisy 1024 px image and a prompt with the image token, as the wrapper builds them."""
    from eagle.constants import IMAGE_TOKEN_INDEX
    from eagle.mm_utils import process_images, tokenizer_image_token
    from PIL import Image
    from transformers import AutoTokenizer

    g = torch.Generator().manual_seed(1)
    pixels = (torch.rand(96, 80, 3, generator=g) * 255).to(torch.uint8).numpy()
    proc = base_model.get_vision_tower().image_processor
    images = process_images([Image.fromarray(pixels)], proc, base_model.config).float()
    tok = AutoTokenizer.from_pretrained(str(Path(base_model.config._name_or_path)))
    ids = tokenizer_image_token("USER: <image>\nWhat colour is the image? ASSISTANT:", tok, IMAGE_TOKEN_INDEX,
                                return_tensors="pt")[None]
    return images, ids


def _logits(model, inputs):
    images, ids = inputs
    with torch.no_grad():
        return model(input_ids=ids, images=images).logits


@pytest.fixture(scope="module")
def full(base_model, inputs):
    """Unmasked: the fusion's concatenation (pre-projector), the projected features, the logits."""
    images, _ = inputs
    with torch.no_grad():
        fused = base_model.get_vision_tower()(images)
        feats = base_model.get_model().mm_projector(fused)
    return fused, feats, _logits(base_model, inputs)


def _adapter(**kw):
    from vlmeval_encred.model_wrappers.eagle1 import Eagle1Adapter

    return Eagle1Adapter(**kw)


def test_encoders_read_from_model(base_model):
    infos = _adapter(expected=X5).encoders(base_model)
    assert [e.name for e in infos] == list(X5)
    assert [e.output_shape for e in infos] == [(1024, WIDTHS[n]) for n in X5]
    towers = base_model.get_vision_tower().vision_towers
    assert [e.params for e in infos] == [count_params(t) for t in towers]
    assert all(p > 0 for p in (e.params for e in infos))


def test_order_and_widths_follow_mm_vision_tower(eagle_pkg):
    from eagle.model import EagleLlamaForCausalLM

    x4 = "clip-448;convnext-1024;pix2struct-1024;det-1024"
    model = EagleLlamaForCausalLM(eagle_pkg.tiny_config(x4))
    infos = _adapter().encoders(model)
    assert [e.name for e in infos] == ["clip", "convnext", "pix2struct", "eva02"]
    assert [e.output_shape[1] for e in infos] == [24, 40, 20, 12]
    with pytest.raises(MaskError, match=r"catalog entry lists clip, convnext, sam, eva02, pix2struct"):
        _adapter(expected=X5, checkpoint="tiny-x4").encoders(model)


def test_unknown_tower_and_unknown_mask_name_are_errors(base_model, eagle_pkg):
    with pytest.raises(MaskError, match=r"its encoders, in order, are: clip, convnext, sam, eva02, pix2struct"):
        _adapter().apply(copy.deepcopy(base_model), MaskSpec(("vit",)), "eagle_x5")
    with pytest.raises(MaskError, match="does not support mask mode 'zero_context'"):
        _adapter().apply(copy.deepcopy(base_model), MaskSpec(("sam",), "zero_context"), "eagle_x5")
    from vlmeval_encred.model_wrappers.eagle1 import short_name

    with pytest.raises(MaskError, match=r"unknown Eagle vision tower 'siglip-384'.*det-\* \(eva02\)"):
        short_name("siglip-384")


def _zero_reference(base_model, fused, masked):
    """The paper's semantics literally: the unmasked concatenation with the masked blocks zeroed,
    through the unchanged projector."""
    fused = fused.clone()
    start = 0
    for n in X5:
        if n in masked:
            fused[..., start:start + WIDTHS[n]] = 0
        start += WIDTHS[n]
    with torch.no_grad():
        return base_model.get_model().mm_projector(fused)


# Logits (a full LLM pass over ~1040 tokens) for single towers and for all towers masked; the
# projected image features, which is all the LLM sees of the towers, for every subset.
LOGIT_SUBSETS = {s for s in SUBSETS if len(s) in (1, len(X5))}


@pytest.mark.parametrize("masked", SUBSETS, ids=["_".join(s) for s in SUBSETS])
def test_every_subset_zero_and_drop(base_model, inputs, full, masked):
    full_fused, full_feats, full_logits = full
    total = count_params(base_model)
    tower_params = {n: count_params(t) for n, t in zip(X5, base_model.get_vision_tower().vision_towers)}
    masked_params = sum(tower_params[n] for n in masked)
    hidden = base_model.config.hidden_size
    with_logits = masked in LOGIT_SUBSETS

    results = {}
    for mode in ("zero", "drop"):
        model = copy.deepcopy(base_model)
        towers = dict(zip(X5, model.get_vision_tower().vision_towers))
        calls, handles = forward_call_recorder(towers)
        report = _adapter(expected=X5).apply(model, MaskSpec(masked, mode), "eagle_x5")
        assert report.spec.masked == masked and report.released_params == masked_params
        # Not resident: gone from the model, storage released, counts drop by exactly the towers
        # (drop also removes their input columns of the projector's first Linear).
        resident = {id(m) for m in model.modules()}
        for n in masked:
            assert id(towers[n]) not in resident
            assert all(p.is_meta for p in towers[n].parameters())
        removed_cols = sum(WIDTHS[n] for n in masked) * hidden if mode == "drop" else 0
        assert count_params(model) == total - masked_params - removed_cols == report.resident_params
        with torch.no_grad():
            feats = model.encode_images(inputs[0])
        results[mode] = (feats, _logits(model, inputs) if with_logits else None)
        # Masked towers never ran; the others ran once per pass over the image.
        runs = 2 if with_logits else 1
        assert {n: calls[n] for n in X5} == {n: 0 if n in masked else runs for n in X5}
        for h in handles:
            h.remove()

    zero_feats, zero_logits = results["zero"]
    assert torch.equal(zero_feats, _zero_reference(base_model, full_fused, masked))
    assert not torch.allclose(zero_feats, full_feats, atol=1e-4)
    drop_feats, drop_logits = results["drop"]
    assert torch.allclose(drop_feats, zero_feats, atol=1e-6, rtol=1e-5)
    if with_logits:
        assert not torch.allclose(zero_logits, full_logits, atol=1e-4)
        assert torch.allclose(drop_logits, zero_logits, atol=1e-6, rtol=1e-5)


def test_masking_twice_is_refused(base_model):
    model = copy.deepcopy(base_model)
    _adapter().apply(model, MaskSpec(("sam",)), "eagle_x5")
    with pytest.raises(MaskError, match="already masked"):
        _adapter().apply(model, MaskSpec(("clip",)), "eagle_x5")


# ----------------------------------------------------------------------------- VLMEvalKit wrapper

def _is_cuda(dev) -> bool:
    return (isinstance(dev, str) and dev.startswith("cuda")) or (isinstance(dev, torch.device) and dev.type == "cuda")


@pytest.fixture()
def cuda_on_cpu(monkeypatch, eagle_pkg):
    """GPU-specific mock: VLMEvalKit's Eagle wrapper hard-codes CUDA; send it to the CPU."""
    import eagle.model.builder as builder

    real_load = builder.load_pretrained_model

    def load(*args, device_map="auto", **kwargs):
        return real_load(*args, device_map="cpu" if _is_cuda(device_map) else device_map, **kwargs)

    real_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        args = tuple("cpu" if _is_cuda(a) else a for a in args)
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(builder, "load_pretrained_model", load)
    monkeypatch.setattr(torch.Tensor, "to", to)


@pytest.fixture()
def image_file(tmp_path):
    from PIL import Image

    g = torch.Generator().manual_seed(2)
    path = tmp_path / "img.png"
    Image.fromarray((torch.rand(64, 64, 3, generator=g) * 255).to(torch.uint8).numpy()).save(path)
    return str(path)


def test_wrapper_generates_greedily_through_vlmeval(ckpt, cuda_on_cpu, image_file):
    from vlmeval.vlm.eagle_x import Eagle

    from vlmeval_encred.model_wrappers.eagle1 import EncredEagle, ZeroTower

    model = EncredEagle(model_path=str(ckpt), mask=("sam",), mask_mode="zero", encred_base="eagle_x5",
                        max_new_tokens=4)
    assert isinstance(model, Eagle)
    assert model.kwargs["do_sample"] is False and model.kwargs["max_new_tokens"] == 4
    assert "temperature" not in model.kwargs and "top_p" not in model.kwargs
    assert model.model.dtype == torch.float16
    towers = model.model.get_vision_tower().vision_towers
    assert isinstance(towers[2], ZeroTower) and not any(isinstance(t, ZeroTower) for i, t in enumerate(towers) if i != 2)
    assert model.encred_report.released_params > 0
    message = [dict(type="image", value=image_file), dict(type="text", value="What colour is the image?")]
    first = model.generate(message)
    assert isinstance(first, str)
    assert model.generate(message) == first


def test_wrapper_keeps_entry_generation_overrides(ckpt, cuda_on_cpu):
    from vlmeval_encred.model_wrappers.eagle1 import EncredEagle

    model = EncredEagle(model_path=str(ckpt), mask=(), encred_base="eagle_x5", do_sample=True, temperature=0.7)
    assert model.kwargs["do_sample"] is True and model.kwargs["temperature"] == 0.7
    assert model.kwargs.get("top_p") is None  # greedy's top_p=None stays unless the entry sets one


def test_wrapper_refuses_catalog_mismatch(ckpt, cuda_on_cpu):
    from vlmeval_encred.model_wrappers.eagle1 import EncredEagle

    with pytest.raises(MaskError, match="catalog entry lists clip, convnext, eva02, pix2struct"):
        EncredEagle(model_path=str(ckpt), mask=("clip",), encred_base="eagle_x4_8b_plus")


def test_module_import_does_not_import_eagle(monkeypatch):
    """Re-import the wrapper module with every ``eagle`` import refused: it must still load
    (VLMEvalKit imports all registered wrappers at start-up, on machines without ``eagle``)."""
    import importlib
    import importlib.abc

    class RefuseEagle(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "eagle" or name.startswith("eagle."):
                raise ImportError(f"test: importing {name!r} is refused")
            return None

    import vlmeval_encred.model_wrappers.eagle1 as pkg
    import vlmeval_encred.model_wrappers.eagle1.modeling as current  # vlmeval (and its hook) loaded as usual first

    for name in [m for m in sys.modules if m == "eagle" or m.startswith("eagle.")]:
        monkeypatch.delitem(sys.modules, name)
    # Restored afterwards, so VLMEvalKit's registered partials keep pointing at the module's class.
    monkeypatch.delitem(sys.modules, current.__name__)
    monkeypatch.setattr(pkg, "modeling", current)
    monkeypatch.setattr(sys, "meta_path", [RefuseEagle(), *sys.meta_path])
    module = importlib.import_module("vlmeval_encred.model_wrappers.eagle1.modeling")
    assert module is not current and hasattr(module, "EncredEagle") and "eagle" not in sys.modules


def test_sweep_on_the_standin_decodes_through_the_shared_prefix_decoder(ckpt, cuda_on_cpu, image_file):
    """The sweep on the stand-in (float16 on the CPU, as VLMEvalKit loads it): each tower once,
    the subsets fused by the stand-in's prepare_inputs_labels_for_multimodal and decoded by the
    shared-prefix decoder; every answer equals its masked variant's own generate_inner.  Runs in
    the base environment too (transformers 5.x), where the real EAGLE cannot."""
    from vlmeval_encred.model_wrappers.eagle1 import Eagle1Adapter, EncredEagle
    from vlmeval_encred.sweep.decoding import collect

    subsets = [(), ("sam",), ("clip", "pix2struct"), ("convnext", "sam", "eva02"), X5]
    message = [dict(type="image", value=image_file), dict(type="text", value="What colour is the image?")]
    full = EncredEagle(model_path=str(ckpt), encred_base="eagle_x5", max_new_tokens=4)
    support = full.sweep_support
    inputs = support.prepare(full, message, None)
    feats = support.encode(full, inputs, X5)
    with collect() as stats:
        got = support.fuse_and_generate(full, inputs, [{n: None if n in s else feats[n] for n in X5}
                                                       for s in subsets], "zero")
    assert stats.rows == len(subsets) and 0 < stats.prefix_tokens and stats.prefilled_tokens < stats.prompt_tokens
    want = []
    for s in subsets:
        variant = copy.deepcopy(full)
        variant.adapter = Eagle1Adapter(expected=X5, checkpoint=str(ckpt))
        variant.apply_mask(variant.model, MaskSpec(s, "zero"), "eagle_x5")
        want.append(variant.generate_inner(message))
    assert got == want
    assert len(set(want)) > 1, f"every subset gave the same answer {want[0]!r}: the test could not fail"
