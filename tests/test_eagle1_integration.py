"""Eagle-1 masking against the real ``eagle`` package (github NVlabs/EAGLE), environment ``eagle1``.

The real package comes from the user's registered EAGLE clone (:mod:`vlmeval_encred.upstream`:
``encred sources add eagle ...`` or ``ENCRED_SRC_EAGLE``); it needs transformers 4.37-4.44,
hence the ``eagle1`` environment.  "Not run here" where no clone is registered.  What runs:

* the real upstream classes our adapter relies on exist with the contract it
  assumes (module paths, ``load_pretrained_model``'s ``device_map``, the
  ``vicuna_v1`` template, ``IMAGE_TOKEN_INDEX``);
* the real ``MultiBackboneChannelConcatenationVisionTower.forward`` (the
  fusion point), real ``build_vision_projector('mlp2x_gelu')`` and the real
  ``EagleLlamaForCausalLM`` (tiny Llama config), with tiny towers written here
  whose grids differ from upstream's (the fusion object is created without its
  constructor and given them), are masked by our adapter.  This complements
  tests/test_eagle1_realcode.py, which builds everything, towers included,
  from upstream's own classes;
* only when ``EAGLE_CHECKPOINT`` names a local or cached NVEagle checkpoint
  (a GPU machine): the full wrapper, loaded by VLMEvalKit's own code, masks a
  tower and generates greedily and reproducibly.  Not collected otherwise.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from vlmeval_encred.masking import MaskSpec, count_params, forward_call_recorder

pytestmark = [pytest.mark.envs("eagle1"), pytest.mark.realcode("eagle")]
TOWERS = "clip-448;convnext-1024;sam-1024;det-1024;pix2struct-1024"
NAMES = ("clip", "convnext", "sam", "eva02", "pix2struct")


@pytest.fixture(autouse=True)
def real_eagle():
    """The real ``eagle`` package first on sys.path (a stand-in imported earlier is forgotten)."""
    from vlmeval_encred.model_wrappers.eagle1.selftest import import_eagle

    return import_eagle()


class TinyTower(nn.Module):
    """A small tower with the attributes the fusion reads (``input_image_size``, ``hidden_size``).

    ``kind``: ``tokens`` -> (B, N, C); ``map`` -> (B, C, H, W); the grid side is
    ``input_image_size // patch``, so some outputs need the fusion's interpolation.
    """

    def __init__(self, input_image_size: int, patch: int, hidden: int, kind: str):
        super().__init__()
        self.input_image_size = input_image_size
        self.kind = kind
        self.conv = nn.Conv2d(3, hidden, patch, patch)
        self.mix = nn.Linear(hidden, hidden)
        self._hidden = hidden

    @property
    def hidden_size(self) -> int:
        return self._hidden

    def forward(self, x):
        y = self.conv(x.to(self.conv.weight.dtype))
        y = y + self.mix(F.gelu(y).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return y.flatten(2).transpose(1, 2) if self.kind == "tokens" else y


def _tiny_towers() -> list[TinyTower]:
    torch.manual_seed(0)
    return [TinyTower(336, 14, 24, "tokens"),    # clip: 24x24 tokens -> interpolated
            TinyTower(1024, 32, 40, "tokens"),   # convnext: 32x32 = 1024 tokens, used as is
            TinyTower(1024, 32, 16, "map"),      # sam (pixel-shuffled upstream): 32x32 map
            TinyTower(1024, 16, 12, "map"),      # eva02: 64x64 map -> interpolated
            TinyTower(1024, 64, 20, "map")]      # pix2struct: 16x16 map -> interpolated


def _model():
    """Real EagleLlamaForCausalLM (tiny Llama), real fusion class and projector, tiny towers."""
    from eagle.model import EagleLlamaForCausalLM
    from eagle.model.language_model.eagle_llama import EagleConfig
    from eagle.model.multimodal_encoder.multi_backbone_channel_concatenation_encoder import \
        MultiBackboneChannelConcatenationVisionTower as Fusion
    from eagle.model.multimodal_projector.builder import build_vision_projector

    cfg = EagleConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
    torch.manual_seed(0)
    model = EagleLlamaForCausalLM(cfg).eval()  # no mm_vision_tower yet: builds no (downloading) towers
    fusion = Fusion.__new__(Fusion)
    nn.Module.__init__(fusion)
    fusion.is_loaded, fusion.grid_size, fusion.input_image_size = True, 32, 1024
    fusion.num_tokens = fusion.grid_size ** 2
    fusion.vision_towers = nn.ModuleList(_tiny_towers())
    model.config.mm_vision_tower = TOWERS
    model.config.mm_projector_type = "mlp2x_gelu"
    model.config.mm_hidden_size = fusion.hidden_size
    model.get_model().vision_tower = fusion
    model.get_model().mm_projector = build_vision_projector(model.config)
    return model.eval()


def test_upstream_contract_is_what_the_adapter_assumes():
    import inspect

    from eagle.constants import IMAGE_TOKEN_INDEX
    from eagle.conversation import conv_templates
    from eagle.mm_utils import get_model_name_from_path, process_images, tokenizer_image_token  # noqa: F401
    from eagle.model.builder import load_pretrained_model
    from eagle.model.multimodal_encoder.multi_backbone_channel_concatenation_encoder import \
        MultiBackboneChannelConcatenationVisionTower as Fusion

    assert IMAGE_TOKEN_INDEX == -200 and "vicuna_v1" in conv_templates
    assert get_model_name_from_path("NVEagle/Eagle-X5-7B") == "Eagle-X5-7B"
    assert "device_map" in inspect.signature(load_pretrained_model).parameters
    assert list(inspect.signature(Fusion.forward).parameters) == ["self", "x"]
    assert isinstance(Fusion.hidden_size, property)


@pytest.mark.parametrize("masked", [("clip",), ("sam",), ("convnext", "pix2struct"), NAMES])
def test_adapter_on_real_fusion(masked):
    from vlmeval_encred.model_wrappers.eagle1 import Eagle1Adapter

    base = _model()
    g = torch.Generator().manual_seed(1)
    images = torch.rand(1, 3, 1024, 1024, generator=g)
    ids = torch.tensor([[1, 5, 6, -200, 7, 8, 9]])
    with torch.no_grad():
        fused = base.get_vision_tower()(images)
    widths = [t.hidden_size for t in base.get_vision_tower().vision_towers]
    ref = fused.clone()
    start = 0
    for n, w in zip(NAMES, widths):
        if n in masked:
            ref[..., start:start + w] = 0
        start += w
    with torch.no_grad():
        ref_feats = base.get_model().mm_projector(ref)
    total = count_params(base)
    out = {}
    for mode in ("zero", "drop"):
        model = copy.deepcopy(base)
        towers = dict(zip(NAMES, model.get_vision_tower().vision_towers))
        calls, _ = forward_call_recorder(towers)
        freed = sum(count_params(towers[n]) for n in masked)
        report = Eagle1Adapter(expected=NAMES).apply(model, MaskSpec(masked, mode), "integration")
        assert report.released_params == freed > 0
        assert all(p.is_meta for n in masked for p in towers[n].parameters())
        assert count_params(model) <= total - freed
        with torch.no_grad():
            feats = model.encode_images(images)
            logits = model(input_ids=ids, images=images).logits
        assert all(calls[n] == 0 for n in masked) and all(calls[n] == 2 for n in NAMES if n not in masked)
        out[mode] = feats, logits
    assert torch.equal(out["zero"][0], ref_feats)
    assert torch.allclose(out["drop"][0], out["zero"][0], atol=1e-6, rtol=1e-5)
    assert torch.allclose(out["drop"][1], out["zero"][1], atol=1e-6, rtol=1e-5)


def _full_wrapper_on_gpu(tmp_path):
    from PIL import Image

    assert torch.cuda.is_available(), "EAGLE_CHECKPOINT is set but no CUDA GPU: VLMEvalKit's Eagle loads on cuda"

    from vlmeval_encred.model_wrappers.eagle1 import EncredEagle, ZeroTower

    path = os.environ["EAGLE_CHECKPOINT"]
    base = "eagle_x4_8b_plus" if "X4-8B" in path else "eagle_x4_13b_plus" if "X4-13B" in path else \
        "eagle_x5_13b" if "13B" in path else "eagle_x5"
    model = EncredEagle(model_path=path, mask=("sam",) if "X5" in path else ("clip",), encred_base=base,
                        max_new_tokens=16)
    assert any(isinstance(t, ZeroTower) for t in model.model.get_vision_tower().vision_towers)
    img = tmp_path / "bars.png"
    Image.new("RGB", (448, 336), (30, 120, 200)).save(img)
    msg = [dict(type="image", value=str(img)), dict(type="text", value="What colour is the image?")]
    first = model.generate(msg)
    assert isinstance(first, str) and first == model.generate(msg)


if os.environ.get("EAGLE_CHECKPOINT"):  # a GPU machine with a real checkpoint; CI sets neither
    test_full_wrapper_on_gpu = _full_wrapper_on_gpu
