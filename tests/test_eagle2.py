"""Eagle2 masking (model_wrappers/eagle2.py) on a tiny stand-in of the Eagle2-9B remote code.

The stand-in (tests/standins/eagle2/) mirrors the channel-concatenation vision
model, pixel shuffle and LayerNorm-first ``mlp1``; the 9B checkpoint (whose code
exists only as the checkpoint's remote code) cannot exist here.  If a local copy
of that remote code is given in ENCRED_EAGLE2_CODE, its class names are checked.
"""

from __future__ import annotations

import copy
import itertools
import os
from pathlib import Path

import pytest
import torch

from standins.eagle2.modeling_eagle2 import Eagle2ChatModel
from vlmeval_encred.masking import MaskError, MaskSpec, count_params, forward_call_recorder
from vlmeval_encred.model_wrappers.eagle2 import ADAPTER, ZeroTower, dynamic_tiles

TILES = 5  # e.g. 2x2 dynamic tiles + thumbnail


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return Eagle2ChatModel().eval()


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(TILES, 3, 28, 28, generator=torch.Generator().manual_seed(1))


def concat(model, pixels):
    with torch.no_grad():
        return model.vision_model(pixel_values=pixels).last_hidden_state


def masked(base, names):
    m = copy.deepcopy(base)
    return m, ADAPTER.apply(m, MaskSpec(tuple(names), "zero"), "tiny")


def test_encoders_from_config(base):
    infos = ADAPTER.encoders(base)
    assert [(e.name, e.output_shape) for e in infos] == [("siglip", (16, 6)), ("convnext", (16, 10))]


def test_every_subset_resolves(base, pixels):
    ids = torch.tensor([[0, 2] + [1] * (4 * TILES) + [3]])
    for k in range(3):
        for subset in itertools.combinations(["siglip", "convnext"], k):
            m, rep = masked(base, subset)
            out = m(pixels, ids)
            assert out.shape == (1, 3 + 4 * TILES, 16) and torch.isfinite(out).all()
            assert rep.spec.masked == subset


@pytest.mark.parametrize("name,cols", [("siglip", slice(0, 6)), ("convnext", slice(6, 16))])
def test_zero_applies_to_every_tile_and_equals_zero_fill(base, pixels, name, cols):
    full = concat(base, pixels)
    m, _ = masked(base, (name,))
    out = concat(m, pixels)
    assert out.shape == full.shape == (TILES, 16, 16)
    assert (out[:, :, cols] == 0).all()  # every tile, thumbnail (last row) included
    keep = [c for c in range(16) if c not in range(16)[cols]]
    assert torch.equal(out[:, :, keep], full[:, :, keep])
    # Reference: run the tower, then zero its output (the paper's zero-fill), through the whole model.
    ref = copy.deepcopy(base)
    idx = 0 if name == "siglip" else 1
    ref.vision_model.vision_model.vision_towers[idx].register_forward_hook(lambda _m, _i, o: torch.zeros_like(o))
    with torch.no_grad():
        assert torch.allclose(m.extract_feature(pixels), ref.extract_feature(pixels), atol=1e-6)


def test_zero_differs_from_column_removal(base, pixels):
    """Why 'drop' is not offered: the LayerNorm sees the zero channels, so zero-fill != removing them."""
    m, _ = masked(base, ("convnext",))
    with torch.no_grad():
        v = concat(m, pixels).reshape(TILES, 4, 4, -1)
        shuffled = m.pixel_shuffle(v).reshape(TILES, 4, -1)
        ln = m.mlp1[0]
        kept = shuffled.view(TILES, 4, 4, 16)[..., :6].reshape(TILES, 4, -1)  # siglip channels only
        idx = torch.arange(64).view(4, 16)[:, :6].reshape(-1)
        renorm = torch.nn.functional.layer_norm(kept, (24,), ln.weight[idx], ln.bias[idx], ln.eps)
        assert not torch.allclose(ln(shuffled)[..., idx], renorm, atol=1e-3)


def test_masked_tower_not_run_not_resident(base, pixels):
    m = copy.deepcopy(base)
    towers = dict(zip(["siglip", "convnext"], m.vision_model.vision_model.vision_towers))
    calls, handles = forward_call_recorder(towers)
    before = count_params(m)
    rep = ADAPTER.apply(m, MaskSpec(("convnext",), "zero"), "tiny")
    concat(m, pixels)
    for h in handles:
        h.remove()
    assert calls == {"siglip": 1, "convnext": 0}
    assert isinstance(m.vision_model.vision_model.vision_towers[1], ZeroTower)
    assert rep.released_params == count_params(towers["convnext"]) > 0
    assert rep.resident_params == before - rep.released_params == count_params(m)


def test_modes_errors_and_catalog(base):
    with pytest.raises(MaskError, match="does not support mask mode 'drop'"):
        ADAPTER.apply(copy.deepcopy(base), MaskSpec(("siglip",), "drop"))
    single = copy.deepcopy(base)
    single.vision_model = torch.nn.Linear(2, 2)
    with pytest.raises(MaskError, match="only the multi-backbone"):
        ADAPTER.encoders(single)
    from vlmeval_encred.registry import entries, get_base

    b = get_base("eagle2_9b")
    assert b.encoders == ("siglip", "convnext") and b.modes == ("zero",) and len(entries(base="eagle2_9b")) == 4


def test_dynamic_tiles_adds_thumbnail():
    from PIL import Image

    tiles = dynamic_tiles(Image.new("RGB", (900, 450)), tile=448, max_num=12)
    assert len(tiles) == 3 and all(t.size == (448, 448) for t in tiles)  # 2x1 grid + thumbnail
    assert len(dynamic_tiles(Image.new("RGB", (448, 448)), tile=448)) == 1


def test_real_remote_code_names():
    code = os.environ.get("ENCRED_EAGLE2_CODE")
    if not code:
        pytest.skip("Eagle2-9B code exists only as the checkpoint's remote code; set ENCRED_EAGLE2_CODE to a "
                    "local snapshot of nvidia/Eagle2-9B to check the class structure")
    text = "".join(p.read_text(errors="ignore") for p in Path(code).glob("*.py"))
    for needle in ("MultiBackboneChannelConcatenationVisionTower", "vision_towers", "pixel_shuffle", "mlp1",
                   "input_image_size"):
        assert needle in text, needle
