"""Real-code self-test of Eagle2-9B's vision side (NVIDIA's multi-backbone tower, github.com/NVlabs/Eagle).

What is real and what is not
----------------------------
nvidia/Eagle2-9B ships its model code only inside the Hugging Face checkpoint.
No public GitHub repository that ``fetch`` can bring holds those files as
shipped (docs/masking.md, Eagle2, lists the ones tried).  NVIDIA's own
repository github.com/NVlabs/Eagle does hold, under ``Eagle2_5/eaglevl/model/``,
the *vision half* of that code, by the same file and class names:

* ``multimodal_encoder/configuration_multi_backbone_channel_concatentation_model.py``
  (``MultiBackboneChannelConcatenationVisionModelConfig``, ``model_type 'MOB'``);
* ``multimodal_encoder/multi_backbone_channel_concatentation_model.py``
  (``MultiBackboneChannelConcatenationVisionModel``);
* ``multimodal_encoder/multi_backbone_channel_concatenation_encoder.py``
  (``MultiBackboneChannelConcatenationVisionTower``, layouts
  ``convnext_512_siglip_448`` and ``radio_448_siglip_448``; ``all_tiling`` is an
  ``assert False`` there);
* ``multimodal_encoder/siglip_vision_tower.py`` (``SiglipVisionTower`` over
  ``siglip/modeling_siglip.py``), ``multimodal_encoder/convnext_encoder.py``
  (``ConvNextVisionTower`` over ``convnext.py``'s timm-style ConvNeXt).

The chat model (``Eagle2ChatModel``: ``mlp1``, pixel shuffle, ``extract_feature``,
``chat``/``generate``) is not there; Eagle2.5 replaced it.  So this self-test
builds the real vision model from the real config class and hands it to the
project's stand-in ``Eagle2ChatModel`` (tests/standins/eagle2/, which takes a
``vision_model=`` like the real one): the towers, the tower list the adapter
edits, the dict the fusion reads and the output wrapper are upstream's; the
fusion after the tower is the stand-in's.

Tiny geometry, offline, float32
-------------------------------
* SigLIP: upstream's ``SiglipVisionModel`` from a tiny ``SiglipVisionConfig``
  (``delay_load=True`` makes the tower build from
  ``raw_config.vision_config.siglip_vision_config``, upstream's own path);
  28-pixel tiles, patch 7 -> a 4 x 4 grid (``grid_size`` 4), 8 channels.
* ConvNeXt: upstream's ``ConvNextVisionTower`` always builds
  ``convnext_xxlarge`` (846 M parameters) and then sets ``hidden_size = 3072``.
  :func:`tiny_convnext_factory` replaces the name ``convnext_xxlarge`` *in the
  imported encoder module only* by a builder of upstream's ``convnext.ConvNeXt``
  class with four one-block stages (upstream's class builds four; stride
  4 * 2 * 2 * 2 = 32 as in ConvNeXt-XXL: a 64-pixel input -> 2 x 2 tokens, the
  shuffled SigLIP grid, as 512 -> 16 x 16 in the 9B), 16 channels; its
  ``hidden_size`` ignores the hard-coded 3072.  The tower also
  casts itself to bfloat16; the built model is cast back to float32.
* The encoder module imports ``internvl.model.c_radio`` (RADIO towers, unused by
  Eagle2-9B's two layouts); when no ``internvl`` is importable a placeholder
  module is registered whose classes raise if anything builds a RADIO tower.

Source: the user's clone of NVlabs/Eagle, registered with ``encred sources add eagle2 <clone>``
(or ``ENCRED_SRC_EAGLE2``; see vlmeval_encred/upstream.py).
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from vlmeval_encred.realcode.checks import RealCodeSelfTest

LAYOUT = "convnext_512_siglip_448"
TILE = 28             # siglip input (448 in the 9B)
CONVNEXT_SIZE = 64    # convnext input (512 in the 9B)
GRID = 4              # siglip tokens per side (32 in the 9B)
SIGLIP = dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
              image_size=TILE, patch_size=7)
CONVNEXT = dict(depths=(1, 1, 1, 1), dims=(4, 8, 12, 16))
TILES = 5
PKG = "eaglevl.model.multimodal_encoder"
MODULES = ("configuration_multi_backbone_channel_concatentation_model", "multi_backbone_channel_concatentation_model",
           "multi_backbone_channel_concatenation_encoder", "siglip_vision_tower", "convnext_encoder")


def _radio_placeholder() -> None:
    """Register ``internvl.model.c_radio`` if absent (upstream imports it at module level)."""
    try:
        importlib.import_module("internvl.model.c_radio")
        return
    except Exception:  # noqa: BLE001 - absent, or present but broken: the placeholder is enough
        pass

    class _Radio:
        def __init__(self, *a, **k):
            raise RuntimeError("RADIO towers are not part of the Eagle2 self-test (placeholder module)")

        @classmethod
        def from_pretrained(cls, *a, **k):
            cls()

    names = ("internvl", "internvl.model", "internvl.model.c_radio")
    for name in names:
        mod = sys.modules.get(name) or types.ModuleType(name)
        mod.__path__ = []  # a package
        sys.modules[name] = mod
    c_radio = sys.modules["internvl.model.c_radio"]
    c_radio.RADIOModel, c_radio.RADIOConfig, c_radio.ENCRED_PLACEHOLDER = _Radio, _Radio, True


def import_real_modules() -> dict[str, Any]:
    """Import upstream's vision modules from ``Eagle2_5`` of NVlabs/Eagle; short name -> module."""
    from vlmeval_encred import upstream

    root = str(upstream.import_root("eagle2"))  # UpstreamNotFound says how to provide one
    upstream.forget_modules("eaglevl")
    if root not in sys.path:
        sys.path.insert(0, root)
    _radio_placeholder()
    mods = {name: importlib.import_module(f"{PKG}.{name}") for name in MODULES}
    for m in mods.values():
        if not str(getattr(m, "__file__", "")).startswith(root):
            raise ImportError(f"{m.__name__} came from {m.__file__}, not from {root}")
    return mods


def tiny_convnext_factory(convnext_module: Any):
    """A stand-in for the name ``convnext_xxlarge``: upstream's ``ConvNeXt`` class at tiny sizes."""
    base = convnext_module.ConvNeXt

    class TinyConvNeXt(base):
        @property
        def hidden_size(self) -> int:
            return int(self.num_features)

        @hidden_size.setter
        def hidden_size(self, value) -> None:  # upstream sets 3072 (ConvNeXt-XXL) after building
            pass

    def convnext_xxlarge(pretrained=False, **kwargs):
        if pretrained:
            raise RuntimeError("the Eagle2 self-test builds random towers only")
        return TinyConvNeXt(depths=CONVNEXT["depths"], dims=CONVNEXT["dims"], num_classes=0)

    return convnext_xxlarge


def tiny_vision_config(mods: dict[str, Any]) -> Any:
    cfg_mod = mods["configuration_multi_backbone_channel_concatentation_model"]
    siglip_cfg = importlib.import_module("eaglevl.model.siglip").SiglipVisionConfig(**SIGLIP)
    cfg = cfg_mod.MultiBackboneChannelConcatenationVisionModelConfig(
        vision_path="MOB:palisiglip;convnext-1024", grid_size=GRID, moe_version_type=LAYOUT, delay_load=True,
        convnext_img_size=CONVNEXT_SIZE, siglip_img_size=TILE, normalize_type="siglip",
        vision_tower_siglip_path="encred-tiny-siglip (not a path)",
        vision_tower_convnext_path="convnext_xxlarge.encred_tiny",
        image_size={"siglip": TILE, "convnext": CONVNEXT_SIZE})
    cfg.siglip_vision_config = siglip_cfg  # what upstream reads when the tower path is not a file
    return cfg


def build_vision_model(mods: dict[str, Any], seed: int = 0) -> tuple[Any, Any]:
    """(upstream ``MultiBackboneChannelConcatenationVisionModel``, its config), tiny and random."""
    import torch

    enc = mods["convnext_encoder"]
    convnext = importlib.import_module(f"{PKG}.convnext")
    saved = enc.convnext_xxlarge
    enc.convnext_xxlarge = tiny_convnext_factory(convnext)
    try:
        cfg = tiny_vision_config(mods)
        torch.manual_seed(seed)
        model_cls = mods["multi_backbone_channel_concatentation_model"].MultiBackboneChannelConcatenationVisionModel
        vm = model_cls(cfg, raw_config=SimpleNamespace(vision_config=cfg))
    finally:
        enc.convnext_xxlarge = saved
    return vm.float().eval(), cfg


def _standin_chat_module():
    """The project's stand-in ``modeling_eagle_chat`` (the real one is not public on GitHub)."""
    tests = Path(__file__).resolve().parents[2] / "tests"
    if not (tests / "standins" / "eagle2" / "modeling_eagle_chat.py").is_file():
        raise ImportError("the Eagle2 self-test needs this project's tests/standins/eagle2 (a source checkout)")
    if str(tests) not in sys.path:
        sys.path.insert(0, str(tests))
    return importlib.import_module("standins.eagle2.modeling_eagle_chat"), importlib.import_module("standins.eagle2.tiny")


def build(seed: int = 0, llm_layers: int | None = None) -> tuple[Any, Any]:
    """(model, tokenizer): upstream's vision model inside the stand-in ``Eagle2ChatModel``, float32, eval.
    ``llm_layers``: decoder layers of the language model (the stand-in's 2 by default; the token-budget
    tests use 4, so that layers on both sides of the pruning point are more than one)."""
    import torch

    mods = import_real_modules()
    chat, tiny = _standin_chat_module()
    vm, vcfg = build_vision_model(mods, seed)
    tok = tiny.tiny_tokenizer()
    cfg = tiny.tiny_config(LAYOUT, vocab_size=len(tok), bos=tok.convert_tokens_to_ids("<|endoftext|>"),
                           eos=tok.convert_tokens_to_ids("<|im_end|>"), llm_layers=llm_layers or 2)
    cfg.vision_config = vcfg
    torch.manual_seed(seed + 1)
    model = chat.Eagle2ChatModel(cfg, vision_model=vm).float().eval()
    return model, tok


def towers(model: Any) -> dict[str, Any]:
    return {t.name: t for t in model.vision_model.vision_model.vision_towers}


class Eagle2Runs(RealCodeSelfTest):
    """What the checks run on an Eagle2 model, real or stand-in (both have ``extract_feature``, a
    ``language_model`` and the towers under ``vision_model.vision_model``): projected image tokens
    and the language model's logits over them, compared exactly.  Subclasses provide ``px``."""

    def run(self, model: Any) -> Any:
        import torch

        with torch.no_grad():
            feats = model.extract_feature(self.px)
            logits = model.language_model(inputs_embeds=feats.reshape(1, -1, feats.shape[-1])).logits
        return [feats, logits]

    def run_then_zero(self, model: Any, masked: tuple[str, ...]) -> Any:
        import torch

        for name, tower in towers(model).items():
            if name in masked:  # run the tower, then zero its output at the fusion point (the paper's zero-fill)
                tower.register_forward_hook(lambda _m, _i, out: torch.zeros_like(out))
        return self.run(model)


class Eagle2SelfTest(Eagle2Runs):
    family, recipe, upstream, modes = "eagle2", "eagle2", ("eagle2",), ("zero",)

    def __init__(self) -> None:
        self._px = None

    def import_upstream(self) -> str:
        from vlmeval_encred.recipes import check_requires
        from vlmeval_encred.registry import get_base

        spec = get_base("eagle2_9b")
        check_requires(spec.requires, what="the Eagle2-9B remote code", recipe=spec.recipe)
        mods = import_real_modules()
        where = Path(mods["multi_backbone_channel_concatenation_encoder"].__file__).parent
        radio = "placeholder" if getattr(sys.modules.get("internvl.model.c_radio"), "ENCRED_PLACEHOLDER", False) \
            else "real"
        return f"NVlabs/Eagle vision code from {where} (RADIO import: {radio}); chat model: stand-in"

    @property
    def px(self):
        import torch

        if self._px is None:
            self._px = torch.randn(TILES, 3, TILE, TILE, generator=torch.Generator().manual_seed(2))
        return self._px

    def build(self, workdir: Path) -> Any:
        return build()[0]

    def encoders(self, model: Any) -> list[str]:
        from vlmeval_encred.model_wrappers.eagle2 import ADAPTER

        return ADAPTER.names(model)

    def tower_modules(self, model: Any) -> dict[str, Any]:
        return towers(model)

    def mask(self, model: Any, masked: tuple[str, ...], mode: str) -> Any:
        from vlmeval_encred.masking import MaskSpec
        from vlmeval_encred.model_wrappers.eagle2 import ADAPTER

        return ADAPTER.apply(model, MaskSpec(masked, mode), "eagle2-realcode-tiny")



SELFTEST = Eagle2SelfTest()
