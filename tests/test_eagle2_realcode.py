"""Eagle2-9B's adapter against NVIDIA's *real* vision code (github.com/NVlabs/Eagle, Eagle2_5/eaglevl).

What is upstream's here: the config class (``MultiBackboneChannelConcatenationVisionModelConfig``),
the vision model and its multi-backbone tower (the ``vision_towers`` list the adapter edits, the
``{name: tokens}`` dict of layout ``convnext_512_siglip_448``), the SigLIP tower over eaglevl's
SiglipVisionModel and the ConvNeXt tower over eaglevl's timm-style ConvNeXt -- tiny, random,
offline, float32 on the CPU (model_wrappers/eagle2/selftest.py says how).  What is not: the chat
model (``Eagle2ChatModel``: pixel shuffle, ``mlp1``, ``generate``) exists only inside the Hugging
Face checkpoint, so the stand-in's (tests/standins/eagle2/) wraps the real vision model.

Without a registered clone of NVlabs/Eagle (encred sources add eagle2 ...) its tests are reported
"not run here" and counted in CI's real-code table.
"""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import real_selftest

pytestmark = [pytest.mark.envs("eagle2"), pytest.mark.realcode("eagle2")]

MASKS = [("siglip",), ("convnext",), ("siglip", "convnext")]


@pytest.fixture(scope="module")
def selftest():
    return real_selftest("eagle2")


@pytest.fixture(scope="module")
def tiny(selftest):
    from vlmeval_encred.model_wrappers.eagle2.selftest import build

    return build()


def test_selftest_is_registered(selftest):
    from vlmeval_encred.realcode import SELFTESTS, load_selftest

    assert SELFTESTS["eagle2"] == "vlmeval_encred.model_wrappers.eagle2.selftest:SELFTEST"
    assert load_selftest("eagle2") is selftest and selftest.upstream == ("eagle2",)


def test_every_subset_zero(selftest, tmp_path):
    """Masked tower never called, zero == run-then-zero bit for bit, parameters freed: every subset."""
    from vlmeval_encred.realcode.checks import run_selftest

    from test_eagle2 import assert_every_subset_checked

    assert_every_subset_checked(run_selftest(selftest, tmp_path))


def test_tower_classes_are_upstreams(tiny):
    from vlmeval_encred.upstream import import_root

    model, _ = tiny
    root = str(import_root("eagle2"))
    vm = model.vision_model
    tower = vm.vision_model
    siglip, convnext = tower.vision_towers
    for obj in (vm, tower, siglip, convnext, siglip.vision_tower):
        assert type(obj).__module__.startswith("eaglevl.model."), type(obj)
        assert __import__("sys").modules[type(obj).__module__].__file__.startswith(root)
    # the ConvNeXt is upstream's class (a subclass only overrides hidden_size; see model_wrappers/eagle2/selftest.py)
    assert type(convnext.vision_tower).__mro__[1].__module__ == "eaglevl.model.multimodal_encoder.convnext"
    assert (siglip.name, convnext.name) == ("siglip", "convnext")
    assert tower.hidden_size == {"siglip": 8, "convnext": 16} and model.mlp1[0].normalized_shape == (16 + 4 * 8,)


@pytest.mark.parametrize("masked", MASKS, ids=lambda m: "+".join(m))
def test_zeros_at_the_fusion_point(tiny, selftest, masked):
    """Upstream's tower dict: the masked tower's entry is zeros of its own shape, the other's unchanged."""
    from vlmeval_encred.masking import MaskSpec
    from vlmeval_encred.model_wrappers.eagle2 import ADAPTER, ZeroTower

    model, _ = tiny
    m = copy.deepcopy(model)
    ADAPTER.apply(m, MaskSpec(masked, "zero"), "tiny")
    with torch.no_grad():
        ref = model.vision_model(pixel_values=selftest.px).last_hidden_state
        out = m.vision_model(pixel_values=selftest.px).last_hidden_state
    assert set(out) == {"siglip", "convnext"}
    assert ref["siglip"].shape == (5, 16, 8) and ref["convnext"].shape == (5, 4, 16)
    for name in ("siglip", "convnext"):
        assert out[name].shape == ref[name].shape and out[name].dtype == ref[name].dtype
        if name in masked:
            assert (out[name] == 0).all()
        else:
            assert torch.equal(out[name], ref[name]) and (out[name] != 0).any()
    slots = {t.name: t for t in m.vision_model.vision_model.vision_towers}
    assert all(isinstance(slots[n], ZeroTower) for n in masked)


def test_all_kept_equals_unmasked_bit_exact(tiny, selftest):
    """The same model with no tower masked (a deep copy through the checks' run) is the unmasked one."""
    model, _ = tiny
    a = selftest.run(model)
    b = selftest.run(copy.deepcopy(model))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("masked", [()] + MASKS, ids=lambda m: "+".join(m) or "none")
def test_chat_generates(tiny, selftest, masked):
    from vlmeval_encred.masking import MaskSpec
    from vlmeval_encred.model_wrappers.eagle2 import ADAPTER

    model, tok = tiny
    m = copy.deepcopy(model)
    if masked:
        ADAPTER.apply(m, MaskSpec(masked, "zero"), "tiny")
    reply = m.chat(tok, selftest.px, "What is in the image?", dict(max_new_tokens=3, do_sample=False))
    assert isinstance(reply, str)


def test_model_output_wrapper_under_transformers_4_39(tiny, selftest):
    """Upstream wraps the tower's dict in BaseModelOutputWithPooling; under transformers 4.37-4.39
    ModelOutput files a dict first field under the dict's own keys, yet ``.last_hidden_state``
    (the attribute Eagle2's extract_feature reads) still holds the dict."""
    model, _ = tiny
    with torch.no_grad():
        out = model.vision_model(pixel_values=selftest.px)
    assert isinstance(out.last_hidden_state, dict) and set(out.last_hidden_state) == {"siglip", "convnext"}
    assert list(out.keys()) == ["siglip", "convnext"]


def test_sweep_equals_per_variant_runs(selftest, tmp_path):
    """The sweep (upstream towers run once per sample, the shared-prefix decoder) gives each masked
    variant's own generate_inner answer on every subset, with upstream's vision code; the
    chat half is the stand-in's (the one thing not public)."""
    from vlmeval_encred.model_wrappers.eagle2.selftest import build

    from test_eagle2 import assert_sweep_equals_per_variant, wrapper_class

    assert_sweep_equals_per_variant(wrapper_class("convnext_512_siglip_448", builder=build), tmp_path)
