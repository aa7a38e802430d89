"""A tiny random Cambrian-1 built from the *real* upstream classes, offline.

Upstream (cambrian-mllm/cambrian) names its towers by Hugging Face repository
ids and loads them through ``transformers`` (CLIP, DINOv2) and ``open_clip``
(SigLIP, ConvNeXt, whose trunks are ``timm`` models).  Nothing can be
downloaded here, so :func:`write_fake_hub` writes a *local* hub cache in which
those very repository ids hold tiny random towers of the same classes:

* ``openai/clip-vit-large-patch14-336``: a ``CLIPVisionModel`` (2 layers,
  width 32) and a ``CLIPImageProcessor``;
* ``facebook/dinov2-giant``: a ``Dinov2Model`` (1 layer, width 32) and a
  ``BitImageProcessor`` (what DINOv2 repositories ship);
* ``timm/ViT-SO400M-14-SigLIP-384``: an ``open_clip_config.json`` and
  ``open_clip_pytorch_model.bin`` whose image trunk is timm's
  ``VisionTransformer`` with SigLIP's settings (no class token, MAP pool),
  registered with timm under :data:`SIGLIP_TIMM`;
* ``laion/CLIP-convnext_xxlarge-laion2B-s34B-b82K-augreg-soup``: the same for
  timm's ``ConvNeXt``, registered as :data:`CONVNEXT_TIMM`.

Two widths cannot be shrunk: upstream's SigLIP and ConvNeXt towers hard-code
their channel counts (1152, and 5760 for ConvNeXt-XXL multi-stage) when built
with ``delay_load`` (as ``CambrianMetaModel`` builds them), and the SVA
projectors are sized from those numbers.  The tiny SigLIP therefore keeps width
1152 (one block, a 32-wide MLP) and the tiny ConvNeXt's four stages sum to 5760
channels (16, 32, 64, 5648; the wide last stage is its downsampling layer only, since
timm 0.9's ConvNeXt blocks have a fixed 4x MLP).  The model itself is upstream's
``CambrianLlamaForCausalLM`` (or ``CambrianPhi3ForCausalLM``) from a tiny
config: real SVA connector, in-LLM SVA layers, projectors and towers.

:func:`offline_hub` points ``huggingface_hub`` and ``transformers`` at that
cache with offline mode on, also when they were imported before (their module
constants are read at import time), and restores everything afterwards.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

SIGLIP_TIMM = "vit_so400m_patch14_siglip_encred_tiny"
CONVNEXT_TIMM = "convnext_xxlarge_encred_tiny"

# Tower names as in released Cambrian-1 configs, except ConvNeXt's resolution (upstream's
# own "-res<N>" syntax): 128 px instead of 1024 keeps the tiny tower cheap on a CPU.
TOWERS = ["siglip/CLIP-ViT-SO400M-14-384", "openai/clip-vit-large-patch14-336",
          "facebook/dinov2-giant-res378", "clip-convnext-XXL-multi-stage-res128"]
TOKEN_LENS = [16, 16, 16, 64]     # released: 576, 576, 576, 9216
IMAGE_TOKEN_LEN = 16              # released: 576 (24 x 24 queries)
SIGLIP_PX, CLIP_PX, DINO_PX, CONVNEXT_PX = 70, 56, 378, 128
CONVNEXT_DIMS = (16, 32, 64, 5648)  # sums to 5760, the width upstream hard-codes for XXL multi-stage
COMMIT = "0" * 40


@dataclass
class TinySpec:
    """Sizes of the tiny language model; everything else is fixed above."""

    flavor: str = "llama"           # "llama" (8B/13B/34B) or "phi3" (phi3-3b)
    hidden_size: int = 64
    layers: int = 4
    heads: int = 4
    vision_hidden_size: int = 32    # 16 heads are hard-coded in the SVA
    sampler_layers: int = 2
    sampler_start: int = 0
    sampler_stride: int = 2
    connector_depth: int = 2
    image_position: int = 4
    extra: dict[str, Any] = field(default_factory=dict)


def _register_timm() -> None:
    import timm
    from timm.models import register_model
    from timm.models.convnext import _create_convnext
    from timm.models.vision_transformer import _create_vision_transformer

    if not timm.is_model(SIGLIP_TIMM):
        def vit_so400m_patch14_siglip_encred_tiny(pretrained: bool = False, **kwargs: Any):
            args = dict(img_size=SIGLIP_PX, patch_size=14, embed_dim=1152, depth=1, num_heads=16,
                        mlp_ratio=32 / 1152, class_token=False, global_pool="map")
            return _create_vision_transformer("vit_so400m_patch14_siglip_384", pretrained=False,
                                              **dict(args, **kwargs))
        register_model(vit_so400m_patch14_siglip_encred_tiny)
    if not timm.is_model(CONVNEXT_TIMM):
        def convnext_xxlarge_encred_tiny(pretrained: bool = False, **kwargs: Any):
            args = dict(depths=[1, 1, 1, 0], dims=list(CONVNEXT_DIMS), norm_eps=1e-5)
            return _create_convnext("convnext_xxlarge", pretrained=False, **dict(args, **kwargs))
        register_model(convnext_xxlarge_encred_tiny)


def _snapshot(cache: Path, repo_id: str) -> Path:
    """The folder a hub cache holds for ``repo_id`` at its main revision (created)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snap


def _open_clip_repo(cache: Path, repo_id: str, packaged: str, timm_name: str, embed_dim: int,
                    px: int, seed: int) -> None:
    import open_clip
    import torch
    from open_clip.factory import get_model_config

    cfg = json.loads(json.dumps(get_model_config(packaged)))  # open_clip's own config for the real model
    cfg["embed_dim"] = embed_dim
    cfg.pop("custom_text", None)
    cfg["vision_cfg"].update(timm_model_name=timm_name, image_size=px, timm_drop_path=None)
    cfg["text_cfg"] = dict(context_length=8, vocab_size=64, width=16, heads=2, layers=1)
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**cfg)
    snap = _snapshot(cache, repo_id)
    torch.save(model.state_dict(), snap / "open_clip_pytorch_model.bin")
    pre = dict(size=px, mean=list(open_clip.OPENAI_DATASET_MEAN), std=list(open_clip.OPENAI_DATASET_STD),
               interpolation="bicubic", resize_mode="shortest")
    (snap / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": pre}))


def write_fake_hub(cache: Path, seed: int = 0) -> Path:
    """Write the four tiny towers under their upstream repository ids into hub cache ``cache``."""
    import torch
    from transformers import (BitImageProcessor, CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel,
                              Dinov2Config, Dinov2Model)

    cache = Path(cache)
    if (cache / ".encred-complete").exists():
        return cache
    _register_timm()
    torch.manual_seed(seed)
    snap = _snapshot(cache, "openai/clip-vit-large-patch14-336")
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=2, image_size=CLIP_PX, patch_size=14,
                                     projection_dim=16)).save_pretrained(snap, safe_serialization=False)
    CLIPImageProcessor(size={"shortest_edge": CLIP_PX},
                       crop_size={"height": CLIP_PX, "width": CLIP_PX}).save_pretrained(snap)
    torch.manual_seed(seed + 1)
    snap = _snapshot(cache, "facebook/dinov2-giant")
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2,
                             image_size=DINO_PX, patch_size=14)).save_pretrained(snap, safe_serialization=False)
    BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                      do_center_crop=True, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225]).save_pretrained(snap)
    _open_clip_repo(cache, "timm/ViT-SO400M-14-SigLIP-384", "ViT-SO400M-14-SigLIP-384", SIGLIP_TIMM,
                    1152, SIGLIP_PX, seed + 2)
    _open_clip_repo(cache, "laion/CLIP-convnext_xxlarge-laion2B-s34B-b82K-augreg-soup", "convnext_xxlarge",
                    CONVNEXT_TIMM, 16, CONVNEXT_PX, seed + 3)
    (cache / ".encred-complete").write_text("tiny random towers for vlmeval-encred's Cambrian self-test\n")
    return cache


@contextlib.contextmanager
def offline_hub(cache: Path) -> Iterator[Path]:
    """Hub look-ups answered from ``cache`` only (see :mod:`.fakehub`), with the tiny timm towers registered."""
    from vlmeval_encred.realcode.fakehub import offline_hub as _offline

    _register_timm()
    with _offline(cache) as path:
        yield path


def tiny_config(spec: TinySpec | None = None) -> Any:
    """A Cambrian config (upstream's ``CambrianConfig``) with the SVA fields of released checkpoints."""
    spec = spec or TinySpec()
    common = dict(
        hidden_size=spec.hidden_size, intermediate_size=2 * spec.hidden_size, num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads, num_key_value_heads=spec.heads, vocab_size=300,
        max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        mm_projector_type="sva", mm_vision_tower_aux_list=list(TOWERS),
        mm_vision_tower_aux_token_len_list=list(TOKEN_LENS), image_token_len=IMAGE_TOKEN_LEN,
        num_query_group=1, query_num_list=[IMAGE_TOKEN_LEN], connector_depth=spec.connector_depth,
        connector_only=False, vision_hidden_size=spec.vision_hidden_size,
        num_of_vision_sampler_layers=spec.sampler_layers, start_of_vision_sampler_layers=spec.sampler_start,
        stride_of_vision_sampler_layers=spec.sampler_stride, image_position=spec.image_position,
        mm_vision_select_layer=-2, mm_vision_select_feature="patch", mm_use_im_start_end=False,
        mm_use_im_patch_token=False, image_aspect_ratio="pad", tokenizer_padding_side="right",
        use_cache=True, tie_word_embeddings=False,
        # 10x Llama's 0.02: with it the greedy answers of this random model depend on the towers
        initializer_range=0.2, **spec.extra)
    if spec.flavor == "phi3":
        from cambrian.model.language_model.cambrian_phi3 import CambrianConfig as Cfg

        common.update(rope_scaling=None, sliding_window=None)
    elif spec.flavor == "llama":
        from cambrian.model.language_model.cambrian_llama import CambrianConfig as Cfg
    else:
        raise ValueError(f"unknown Cambrian flavor {spec.flavor!r}; use 'llama' or 'phi3'")
    return Cfg(**common)


def model_class(flavor: str) -> type:
    if flavor == "phi3":
        from cambrian.model.language_model.cambrian_phi3 import CambrianPhi3ForCausalLM

        return CambrianPhi3ForCausalLM
    from cambrian.model.language_model.cambrian_llama import CambrianLlamaForCausalLM

    return CambrianLlamaForCausalLM


def build_tiny_model(cache: Path, spec: TinySpec | None = None, seed: int = 0) -> Any:
    """Upstream's model class from :func:`tiny_config`, towers loaded from the fake hub, eval, fp32."""
    import torch

    spec = spec or TinySpec()
    with offline_hub(cache):
        torch.manual_seed(seed)
        model = model_class(spec.flavor)(tiny_config(spec))
        with torch.no_grad():  # upstream leaves image_newline uninitialised (torch.empty) until weights load
            model.get_model().image_newline.normal_(0, spec.hidden_size ** -0.5)
        for tower in model.get_vision_tower_aux_list():
            if not tower.is_loaded:
                tower.load_model()  # what cambrian.model.builder.load_pretrained_model does
            tower.float().eval()
    return model.float().eval()


SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|end|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>",
                  "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                  "<|eot_id|>", "<|system|>", "<|user|>", "<|assistant|>"]


def tiny_tokenizer() -> Any:
    """A byte-level tokenizer (every string encodes; no merges) with the chat templates' special
    tokens, ``<s>`` prepended like Llama's, as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, processors
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for ch in sorted(ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<unk>")


def image_position(tokenizer: Any, conv_mode: str) -> int:
    """Where the image token sits in a prompt of template ``conv_mode`` (the checkpoint's
    ``config.image_position``, which the in-LLM SVA reads)."""
    from cambrian.conversation import conv_templates
    from cambrian.mm_utils import tokenizer_image_token

    conv = conv_templates[conv_mode].copy()
    conv.append_message(conv.roles[0], "<image>\nquestion")
    conv.append_message(conv.roles[1], None)
    ids = tokenizer_image_token(conv.get_prompt(), tokenizer, -200)
    return ids.index(-200)


def save_tiny_checkpoint(path: Path, cache: Path, flavor: str = "llama", conv_mode: str = "llama_3",
                         seed: int = 0) -> Path:
    """A loadable tiny Cambrian checkpoint folder (config, weights, tokenizer); its towers load
    from the fake hub ``cache`` by their upstream ids, as released checkpoints' towers do."""
    path = Path(path)
    tok = tiny_tokenizer()
    spec = TinySpec(flavor=flavor, image_position=image_position(tok, conv_mode))
    model = build_tiny_model(cache, spec, seed=seed)
    model.config.vocab_size = model.get_input_embeddings().weight.shape[0]
    model.save_pretrained(path, safe_serialization=False)
    tok.save_pretrained(path)
    return path
