"""I-MoF masking (model_wrappers/imof/modeling.py) on a tiny stand-in of the MMVP LLaVA fork.

The stand-in (tests/standins/llava_mof/) mirrors llava_arch.py and dino_encoder.py;
the 13B checkpoint and DINOv2 weights cannot exist here.  DINOv2 is built through
the real ``torch.hub.load(source='local')`` from a temporary hubconf.py, redirected by
:func:`local_dinov2`.  The same adapter on the fork's real classes:
tests/test_imof_realcode.py (environment ``imof``).  Runs in ``base`` and ``imof``.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import pytest
import torch

from standins.llava_mof.llava_arch import IMAGE_TOKEN_INDEX, HubDinoNet, TinyLlavaForCausalLM
from vlmeval_encred.masking import MaskError, MaskSpec, count_params, forward_call_recorder
from vlmeval_encred.model_wrappers.imof import ADAPTER, ENV_DINOV2_PATH, ReleasedTower, local_dinov2

pytestmark = pytest.mark.envs("base", "imof")

N = 16  # tokens per tower in the stand-in (28 px, patch 7)
PREFIX = 3


@pytest.fixture(scope="module")
def hub_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("dinov2_clone")
    (d / "hubconf.py").write_text(
        "from standins.llava_mof.llava_arch import HubDinoNet\n"
        "def dinov2_vitl14(pretrained=True):\n"
        "    import torch\n    torch.manual_seed(7)\n    net = HubDinoNet()\n"
        "    net.pretrained_flag = pretrained\n    return net\n")
    return d


@pytest.fixture(scope="module")
def base(hub_dir):
    torch.manual_seed(0)
    m = TinyLlavaForCausalLM()
    with local_dinov2(str(hub_dir)):
        m.get_dino_vision_tower().load_model()
    return m.eval()


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 40, (2, 7), generator=g)
    ids[:, PREFIX] = IMAGE_TOKEN_INDEX
    return ids, torch.randn(2, 3, 28, 28, generator=g)


def embeds(model, inputs):
    with torch.no_grad():
        return model(*inputs)[0]


def masked(base, names, mode):
    m = copy.deepcopy(base)
    return m, ADAPTER.apply(m, MaskSpec(tuple(names), mode), "tiny")


def test_local_dinov2_redirect(hub_dir, tmp_path, monkeypatch):
    with local_dinov2(str(hub_dir)):
        assert isinstance(torch.hub.load("facebookresearch/dinov2", "dinov2_vitl14"), HubDinoNet)
    w = tmp_path / "dinov2_vitl14_pretrain.pth"
    ref = HubDinoNet()
    torch.save(ref.state_dict(), w)
    monkeypatch.setenv(ENV_DINOV2_PATH, str(hub_dir))
    with local_dinov2(weights=str(w)):
        net = torch.hub.load("facebookresearch/dinov2", "dinov2_vitl14")
    assert net.pretrained_flag is False and torch.equal(net.patch_embed.weight, ref.patch_embed.weight)
    with local_dinov2(skip=True):
        assert count_params(torch.hub.load("facebookresearch/dinov2", "dinov2_vitl14")) == 0
    with pytest.raises(FileNotFoundError, match="no hubconf.py"):
        with local_dinov2(str(tmp_path)):
            pass


def test_encoders(base):
    infos = ADAPTER.encoders(base)
    assert [(e.name, e.output_shape) for e in infos] == [("clip", (N, 12)), ("dinov2", (N, 12))]


def test_every_subset_resolves_with_token_counts(base, inputs):
    for mode in ADAPTER.modes:
        for k in range(3):
            for subset in itertools.combinations(["clip", "dinov2"], k):
                m, _ = masked(base, subset, mode)
                n_img = 2 * N if (mode == "zero" or not subset) else (N if k == 1 else 0)
                assert embeds(m, inputs).shape == (2, 6 + n_img, 16), (mode, subset)


@pytest.mark.parametrize("name,slot", [("clip", 0), ("dinov2", 1)])
def test_zero_is_projector_of_zero_before_projection(base, inputs, name, slot):
    """Reference: run the tower, replace its output by zeros (hook), then the fork's code as is."""
    ref = copy.deepcopy(base)
    tower = ref.get_model().vision_tower if name == "clip" else ref.get_model().dino_tower
    tower.register_forward_hook(lambda _m, _i, out: torch.zeros_like(out))
    m, _ = masked(base, (name,), "zero")
    out = embeds(m, inputs)
    assert torch.allclose(out, embeds(ref, inputs), atol=1e-6)
    img = out[:, PREFIX:PREFIX + 2 * N]
    masked_tokens = img[:, slot::2]
    assert torch.allclose(masked_tokens, masked_tokens[:1, :1].expand_as(masked_tokens))  # one constant token
    assert torch.allclose(img[:, 1 - slot::2], embeds(base, inputs)[:, PREFIX + 1 - slot:PREFIX + 2 * N:2])


@pytest.mark.parametrize("name,slot", [("clip", 0), ("dinov2", 1)])
def test_drop_removes_that_towers_tokens(base, inputs, name, slot):
    full = embeds(base, inputs)
    keep = [i for i in range(full.shape[1]) if not (PREFIX <= i < PREFIX + 2 * N and (i - PREFIX) % 2 == slot)]
    m, _ = masked(base, (name,), "drop")
    out = embeds(m, inputs)
    assert out.shape[1] == 6 + N
    assert torch.allclose(out, full[:, keep], atol=1e-6)


@pytest.mark.parametrize("mode", ["zero", "drop"])
def test_masked_tower_not_run_not_resident(base, inputs, mode):
    m = copy.deepcopy(base)
    lm = m.get_model()
    towers = {"clip": lm.vision_tower, "dinov2": lm.dino_tower}
    calls, handles = forward_call_recorder(towers)
    before = count_params(m)
    rep = ADAPTER.apply(m, MaskSpec(("dinov2",), mode), "tiny")
    embeds(m, inputs)
    for h in handles:
        h.remove()
    assert calls == {"clip": 1, "dinov2": 0}
    assert isinstance(lm.dino_tower, ReleasedTower) and count_params(lm.dino_tower) == 0
    freed = count_params(towers["dinov2"]) + (count_params(base.get_model().dino_mm_projector) if mode == "drop" else 0)
    assert rep.released_params == freed and rep.resident_params == before - freed
    with pytest.raises(RuntimeError, match="released"):
        lm.dino_tower(inputs[1])


def test_clip_masked_keeps_fork_entry_checks_working(base, inputs):
    """The fork returns early when get_vision_tower() is None: the released stand-in must not be None."""
    m, _ = masked(base, ("clip",), "zero")
    assert m.get_vision_tower() is not None and m.get_vision_tower().dummy_feature.shape == (1, 12)
    assert embeds(m, inputs).shape[1] == 6 + 2 * N


def test_errors_and_catalog(base):
    with pytest.raises(MaskError, match="does not support mask mode 'zero_context'"):
        masked(base, ("clip",), "zero_context")
    from vlmeval_encred.registry import entries, get_base

    b = get_base("imof_13b")
    assert b.encoders == ("clip", "dinov2") and b.modes == ("zero", "drop") and len(entries(base="imof_13b")) == 4
