"""Eagle-1 (NVlabs EAGLE) self-test on a tiny random model built from upstream's *real* classes.

What is upstream's own code here (imported from the EAGLE snapshot, see
:mod:`vlmeval_encred.upstream`): ``EagleLlamaForCausalLM`` / ``EagleConfig``,
``build_vision_tower`` and ``MultiBackboneChannelConcatenationVisionTower``
(the fusion, built from the ``mm_vision_tower`` string as upstream does),
every tower class (``HRCLIPVisionTower``, ``ConvNextVisionTower``,
``SAMVisionTower``, ``EVAVITVisionTower``, ``Pix2StructLargeVisionTower``) with
the model classes they build (transformers' CLIP/SAM/Pix2Struct, EAGLE's own
timm-based ``ConvNeXt`` and ``EVAViT``), ``build_vision_projector``, and
``eagle.mm_utils`` for image processing and prompt tokens.

How it is made tiny and offline (nothing is downloaded):

* CLIP, SAM and Pix2Struct towers call ``from_pretrained`` on hard-coded Hub
  ids (``openai/clip-vit-large-patch14-336``, ``facebook/sam-vit-large``,
  ``google/pix2struct-large``).  :func:`write_fake_hub` saves tiny random
  models and their processors under exactly those ids in a Hugging Face cache
  laid out as the Hub client writes it, and :func:`tiny_upstream` points
  ``huggingface_hub``/``transformers`` at that cache in offline mode.  The
  towers then load them through their unchanged code.
* ConvNeXt and EVA-02 cannot be made tiny through a file: their sizes are
  hard-coded in Python, not read from any config (``convnext_xxlarge`` fixes
  depths 3/4/30/3 and widths up to 3072, 846 M parameters, and would fetch
  timm weights; ``build_eva_vit('eva02-l-16')`` fixes a 24-layer,
  1024-wide ViT-L, about 300 M parameters and ~1 TFLOP per 1024 px image).
  :func:`tiny_upstream` therefore replaces only those two *factory functions*
  in the modules that call them: the ConvNeXt tower still calls upstream's
  ``convnext_xxlarge`` (with depths/widths passed as keyword overrides and
  ``pretrained=False``), and the EVA-02 tower gets upstream's ``EVAViT`` class
  with a small depth and width.  The output widths the towers hard-code stay
  true: ConvNeXt's last stage keeps its 3072 channels (so its block count there
  is 0: one 3072-wide block alone would be 75 M parameters), and the EVA-02
  config dict reports the tiny width as ``hidden_dim``, as upstream's dict
  does for the real one.  SAM keeps its 256-channel neck (the tower hard-codes
  ``256 * 4`` after pixel-unshuffle) and Pix2Struct its 1536-wide hidden size
  (hard-coded too), with one layer and narrow attention/MLP.
* The EVA-02 tower looks for ``checkpoints/pretrained_models/eva02_L_coco_det_sys_o365.pth``
  relative to the working directory and, as upstream does when it is missing,
  warns and keeps its random initialisation.

The five towers run the real fusion at upstream's 1024 px input and 32 x 32
grid, so every resize/interpolation path of
``MultiBackboneChannelConcatenationVisionTower.forward`` is exercised (CLIP at
336 px -> 24 x 24 tokens, ConvNeXt 32 x 32, SAM 64 x 64 -> unshuffled to
32 x 32, EVA-02 64 x 64, Pix2Struct 45 x 45 -> 32 x 32).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from vlmeval_encred.realcode.checks import RealCodeSelfTest
from vlmeval_encred.realcode.fakehub import offline_hub

X5_TOWERS = "clip-448;convnext-1024;sam-1024;det-1024;pix2struct-1024"
"""The X5 checkpoints' ``mm_vision_tower`` (upstream's X5 scripts)."""
X4_TOWERS = "clip-448;convnext-1024;det-1024;pix2struct-1024"
"""The X4 checkpoints' ``mm_vision_tower`` (upstream's X4 scripts)."""
LAYOUTS = {"x5": X5_TOWERS, "x4": X4_TOWERS}

HUB_IDS = {"clip": "openai/clip-vit-large-patch14-336", "sam": "facebook/sam-vit-large",
           "pix2struct": "google/pix2struct-large"}
"""Hub ids upstream's towers hard-code (``hr_clip_encoder``, ``sam_encoder``, ``pix2struct_encoder``)."""

PROMPT = "What colour is the image ?"


@dataclass(frozen=True)
class TinySizes:
    """Widths and depths of the tiny model; widths the towers hard-code are not here."""

    llm_hidden: int = 32
    llm_layers: int = 2
    clip_hidden: int = 16
    clip_layers: int = 2
    convnext_dims: tuple[int, int, int] = (8, 16, 32)   # stages 1-3; stage 4 is 3072 wide (hard-coded)
    sam_hidden: int = 16
    sam_layers: int = 1
    eva_hidden: int = 32
    eva_layers: int = 1
    pix2struct_kv: int = 8


# ------------------------------------------------------------------------------- tokenizers

_CORPUS = (
    "A chat between a curious user and an artificial intelligence assistant . The assistant gives helpful , "
    "detailed , and polite answers to the user's questions . USER : ASSISTANT : What colour is the image ? "
    "red green blue yellow white black A B C D Answer with the option's letter from the given choices "
    "directly . Hint : Question : Options : the a of is in chart value 0 1 2 3 4 5 6 7 8 9"
)


def _word_level(specials: list[str], bos: str | None):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = sorted(set(re.findall(r"\w+|[^\w\s]", _CORPUS)) - set(specials))
    vocab = {tok: i for i, tok in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:  # Llama's tokenizer starts every sequence with <s>; tokenizer_image_token relies on it
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                           special_tokens=[(bos, vocab[bos])])
    return tok


def build_llm_tokenizer():
    """Word-level stand-in for the Vicuna/Llama tokenizer (``<unk>``=0, ``<s>``=1, ``</s>``=2)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=_word_level(["<unk>", "<s>", "</s>"], "<s>"),
                                   unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<unk>")


# ------------------------------------------------------------------------------- fake hub


def _hub_snapshot(hub: Path, repo_id: str) -> Path:
    """``<hub>/models--org--name/snapshots/<rev>/`` with ``refs/main`` naming it (the Hub client's layout)."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    rev = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(rev)
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def write_fake_hub(hub: Path, sizes: TinySizes = TinySizes(), seed: int = 0) -> Path:
    """Tiny random CLIP / SAM / Pix2Struct checkpoints and processors under upstream's Hub ids."""
    import torch
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, Pix2StructConfig,
                              Pix2StructForConditionalGeneration, Pix2StructImageProcessor, Pix2StructProcessor,
                              SamConfig, SamImageProcessor, SamModel, SamProcessor, T5TokenizerFast)

    hub = Path(hub)
    done = hub / ".encred-complete"
    if done.exists():
        return hub
    torch.manual_seed(seed)
    snap = _hub_snapshot(hub, HUB_IDS["clip"])
    CLIPVisionModel(CLIPVisionConfig(
        hidden_size=sizes.clip_hidden, intermediate_size=2 * sizes.clip_hidden, num_hidden_layers=sizes.clip_layers,
        num_attention_heads=2, image_size=336, patch_size=14, projection_dim=sizes.clip_hidden,
    )).save_pretrained(snap)
    CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}).save_pretrained(snap)

    snap = _hub_snapshot(hub, HUB_IDS["sam"])
    SamModel(SamConfig(
        vision_config=dict(hidden_size=sizes.sam_hidden, output_channels=256, num_hidden_layers=sizes.sam_layers,
                           num_attention_heads=2, mlp_dim=2 * sizes.sam_hidden, image_size=1024, patch_size=16,
                           window_size=16, global_attn_indexes=[]),
        prompt_encoder_config=dict(hidden_size=256),
        mask_decoder_config=dict(hidden_size=256, num_hidden_layers=1, mlp_dim=16, iou_head_hidden_dim=16,
                                 num_attention_heads=2),
    )).save_pretrained(snap)
    SamProcessor(SamImageProcessor()).save_pretrained(snap)

    snap = _hub_snapshot(hub, HUB_IDS["pix2struct"])
    t5 = T5TokenizerFast(tokenizer_object=_word_level(["<pad>", "</s>", "<unk>"], None), extra_ids=0,
                         eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    kv = sizes.pix2struct_kv
    Pix2StructForConditionalGeneration(Pix2StructConfig(
        vision_config=dict(hidden_size=1536, patch_embed_hidden_size=768, d_ff=2 * kv, d_kv=kv, num_attention_heads=2,
                           num_hidden_layers=1, seq_len=64),
        text_config=dict(vocab_size=len(t5), hidden_size=16, d_ff=16, d_kv=kv, num_heads=2, num_layers=1),
    )).save_pretrained(snap)
    Pix2StructProcessor(Pix2StructImageProcessor(is_vqa=False), t5).save_pretrained(snap)
    done.write_text("ok")
    return hub


# ------------------------------------------------------------------------------- environment


def import_eagle() -> Path:
    """Put the real EAGLE source first on ``sys.path`` (a stand-in ``eagle`` is forgotten first).

    It stays there for the rest of the process, as an installed ``eagle`` would: models built
    from it keep referring to its modules, and VLMEvalKit's ``Eagle`` imports ``eagle`` lazily."""
    from vlmeval_encred.upstream import forget_modules, import_root

    root = import_root("eagle")
    loaded = sys.modules.get("eagle")
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve().is_relative_to(root.resolve()):
        return root
    forget_modules("eagle")
    if str(root) in sys.path:
        sys.path.remove(str(root))
    sys.path.insert(0, str(root))
    import eagle  # noqa: F401

    return root


@contextlib.contextmanager
def tiny_upstream(workdir: Path, sizes: TinySizes = TinySizes()) -> Iterator[Path]:
    """Within the block, upstream's towers build tiny and offline (see the module docstring).

    Yields the fake Hub cache.  Loading a checkpoint saved by :func:`build_checkpoint`
    (e.g. through VLMEvalKit's ``Eagle`` wrapper) must happen inside this block too,
    because upstream builds every tower again in the model's constructor."""
    import_eagle()
    from eagle.model.multimodal_encoder import convnext_encoder
    from eagle.model.multimodal_encoder.vision_models import convnext as up_convnext
    from eagle.model.multimodal_encoder.vision_models import eva_vit as up_eva

    hub = write_fake_hub(Path(workdir) / "hub", sizes)

    def tiny_convnext(_name: str, **_kw: Any):
        # upstream's own factory and ConvNeXt class; only depths/widths overridden, no timm weights
        return up_convnext.convnext_xxlarge(False, depths=[1, 1, 1, 0], dims=[*sizes.convnext_dims, 3072],
                                            num_classes=0)

    def tiny_eva(args: Any, model_name: str | None = None, image_size: int = 224, window_attn: bool = True):
        if model_name != "eva02-l-16":
            raise NotImplementedError(f"tiny EVA-02 builder: only eva02-l-16 (det-1024) is used, got {model_name}")
        depth, width = sizes.eva_layers, sizes.eva_hidden
        window_blocks = tuple(range(depth)) if window_attn else ()
        model = up_eva.EVAViT(img_size=image_size, patch_size=16, window_size=16, in_chans=3, embed_dim=width,
                              depth=depth, num_heads=2, mlp_ratio=4 * 2 / 3, window_block_indexes=window_blocks,
                              qkv_bias=True, drop_path_rate=0.0, xattn=False)
        config = dict(image_size=image_size, patch_size=16, window_size=16, hidden_dim=width, depth=depth,
                      num_heads=2, window_block_indexes=window_blocks, num_patches=image_size ** 2 // 16 ** 2,
                      pretrained_from=args.vision_tower_pretrained_from)
        return model, config

    patches = [(convnext_encoder, "convnext_xxlarge", tiny_convnext), (up_eva, "build_eva_vit", tiny_eva)]
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in patches]
    for mod, name, value in patches:
        setattr(mod, name, value)
    try:
        with offline_hub(hub):
            yield hub
    finally:
        for mod, name, value in saved:
            setattr(mod, name, value)


def tiny_config(towers: str, vocab_size: int, sizes: TinySizes = TinySizes()):
    """An ``EagleConfig`` as upstream's training leaves it (``mlp2x_gelu`` projector, ``pad`` images)."""
    from eagle.model import EagleConfig
    from eagle.model.multimodal_encoder.builder import build_vision_tower

    h = sizes.llm_hidden
    config = EagleConfig(
        vocab_size=vocab_size, hidden_size=h, intermediate_size=2 * h, num_hidden_layers=sizes.llm_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, bos_token_id=1, eos_token_id=2,
        pad_token_id=0, tie_word_embeddings=False, mm_vision_tower=towers, mm_projector_type="mlp2x_gelu",
        mm_vision_select_layer=-2, mm_vision_select_feature="patch", mm_patch_merge_type="flat",
        image_aspect_ratio="pad", mm_use_im_start_end=False, mm_use_im_patch_token=False, use_mm_proj=True)
    # upstream's initialize_vision_modules sets it so: the width of the towers' channel concatenation
    config.mm_hidden_size = build_vision_tower(config).hidden_size
    return config


def _spread_weights(model: Any) -> None:
    """Random weights that make every tower matter (default inits leave ConvNeXt's layer scales at 1e-6)."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".vision_tower." not in f".{name}" and "mm_projector" not in name:
                continue
            if p.dim() > 1:
                p.normal_(0.0, 1.0 / max(1, p[0].numel()) ** 0.5)
            elif name.endswith("gamma"):
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)


def build_model(towers: str, sizes: TinySizes = TinySizes(), seed: int = 0):
    """(model, tokenizer): a random ``EagleLlamaForCausalLM``; call inside :func:`tiny_upstream`."""
    import torch
    from eagle.model import EagleLlamaForCausalLM

    tok = build_llm_tokenizer()
    torch.manual_seed(seed)
    model = EagleLlamaForCausalLM(tiny_config(towers, len(tok), sizes))
    _spread_weights(model)
    return model.float().eval(), tok


def build_checkpoint(out: Path, towers: str = X5_TOWERS, sizes: TinySizes = TinySizes(), seed: int = 0) -> Path:
    """Save a tiny model and its tokenizer as an NVEagle checkpoint directory (name it ``...Eagle...``).

    Call inside :func:`tiny_upstream`; load it inside the same block."""
    model, tok = build_model(towers, sizes, seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out))
    # EVA-02's rotary tables are one module shared by its blocks; safetensors refuses shared
    # buffers that the model class does not declare tied, so this file is a torch pickle.
    model.save_pretrained(str(out), safe_serialization=False)
    return out


# ------------------------------------------------------------------------------- the self-test


class Eagle1SelfTest(RealCodeSelfTest):
    """The adapter of model_wrappers/eagle1/modeling.py on upstream's real Eagle classes (one tower layout)."""

    recipe = "eagle1"
    upstream = ("eagle",)
    modes = ("zero", "drop")
    drop_equals_zero = True
    drop_tolerance = (1e-6, 1e-5)
    """float32: ``drop`` only changes the summation order of the projector's first Linear."""

    def __init__(self, layout: str = "x5", sizes: TinySizes = TinySizes()) -> None:
        self.layout = layout
        self.towers = LAYOUTS[layout]
        self.family = "eagle1" if layout == "x5" else f"eagle1_{layout}"
        self.sizes = sizes
        self._inputs: tuple[Any, Any] | None = None

    def import_upstream(self) -> str:
        import transformers

        root = import_eagle()
        import eagle.model.multimodal_encoder.multi_backbone_channel_concatenation_encoder as fusion

        return (f"eagle from {root} (fusion {Path(fusion.__file__).name}); transformers {transformers.__version__}; "
                f"towers {self.towers}")

    def build(self, workdir: Path) -> Any:
        import torch
        from PIL import Image

        with tiny_upstream(Path(workdir), self.sizes):
            model, tok = build_model(self.towers, self.sizes)
        from eagle.constants import IMAGE_TOKEN_INDEX
        from eagle.conversation import conv_templates
        from eagle.mm_utils import process_images, tokenizer_image_token

        g = torch.Generator().manual_seed(1)
        pixels = (torch.rand(96, 80, 3, generator=g) * 255).to(torch.uint8).numpy()
        proc = model.get_vision_tower().image_processor
        images = process_images([Image.fromarray(pixels)], proc, model.config).float()
        conv = conv_templates["vicuna_v1"].copy()
        conv.append_message(conv.roles[0], "<image>\n" + PROMPT)
        conv.append_message(conv.roles[1], None)
        ids = tokenizer_image_token(conv.get_prompt(), tok, IMAGE_TOKEN_INDEX, return_tensors="pt")[None]
        self._inputs = (images, ids)
        return model

    def encoders(self, model: Any) -> list[str]:
        return self._adapter().names(model)

    def tower_modules(self, model: Any) -> dict[str, Any]:
        names = self._adapter().names(model)
        return dict(zip(names, model.get_vision_tower().vision_towers))

    def _adapter(self, expected: tuple[str, ...] | None = None):
        from .modeling import Eagle1Adapter

        return Eagle1Adapter(expected=expected, checkpoint=f"tiny Eagle {self.layout}")

    def mask(self, model: Any, masked: tuple[str, ...], mode: str) -> Any:
        from vlmeval_encred.masking import MaskSpec

        adapter = self._adapter()
        return adapter.apply(model, MaskSpec(tuple(masked), mode), f"tiny Eagle {self.layout}")

    def run(self, model: Any) -> Any:
        import torch

        images, ids = self._inputs
        with torch.no_grad():
            return model(input_ids=ids, images=images).logits

    def run_then_zero(self, model: Any, masked: tuple[str, ...]) -> Any:
        """Every tower runs; a forward hook replaces each masked tower's output by zeros."""
        import torch

        handles = [tower.register_forward_hook(lambda _m, _i, out: torch.zeros_like(out))
                   for name, tower in self.tower_modules(model).items() if name in masked]
        try:
            return self.run(model)
        finally:
            for h in handles:
                h.remove()


SELFTEST = Eagle1SelfTest("x5")
SELFTEST_X4 = Eagle1SelfTest("x4")
