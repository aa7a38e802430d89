"""Build a tiny Eagle-1 checkpoint for the stand-in ``eagle`` package (tests only).

The directory looks like an NVEagle checkpoint to ``load_pretrained_model``:
``config.json`` (``model_type`` ``eagle_llama``, ``mm_vision_tower`` naming
the towers, ``mm_projector_type`` ``mlp2x_gelu``, ``image_aspect_ratio``
``pad``), safetensors weights of the whole model (towers included) and a
tokenizer.  The tokenizer is a word-level ``tokenizers`` model written
offline (no downloads) with Llama's ``<s>``/``</s>``/``<unk>`` specials and
a ``<s>`` prefix, which ``tokenizer_image_token`` relies on.

The stand-in package must be importable as ``eagle`` (tests/standins on
``sys.path``) before calling :func:`build_checkpoint`.
"""

from __future__ import annotations

import re
from pathlib import Path

X5_TOWERS = "clip-448;convnext-1024;sam-1024;det-1024;pix2struct-1024"

_CORPUS = (
    "A chat between a curious user and an artificial intelligence assistant . The assistant gives helpful , "
    "detailed , and polite answers to the user's questions . USER : ASSISTANT : What colour is the image ? "
    "red green blue yellow white black A B C D Answer with the option's letter from the given choices "
    "directly . Hint : Question : Options : the a of is in chart value 0 1 2 3 4 5 6 7 8 9"
)


def build_tokenizer(out: Path):
    """Write a word-level tokenizer to ``out``; returns the loaded ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    words = sorted(set(re.findall(r"\w+|[^\w\s]", _CORPUS)))
    vocab = {tok: i for i, tok in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<unk>")
    fast.save_pretrained(str(out))
    return fast


def tiny_config(towers: str = X5_TOWERS, vocab_size: int = 64, **over):
    from eagle.model import EagleConfig

    cfg = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
               bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
               mm_vision_tower=towers, mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2,
               mm_vision_select_feature="patch", mm_patch_merge_type="flat", image_aspect_ratio="pad",
               mm_use_im_start_end=False, mm_use_im_patch_token=False, use_mm_proj=True)
    cfg.update(over)
    config = EagleConfig(**cfg)
    # As upstream's training sets it: the projector reads the channel concatenation of all towers.
    from eagle.model.multimodal_encoder.builder import build_vision_tower

    config.mm_hidden_size = build_vision_tower(config).hidden_size
    return config


def build_checkpoint(out: Path, towers: str = X5_TOWERS, seed: int = 0) -> Path:
    """A random tiny Eagle checkpoint in ``out`` (created); name it ``...Eagle...``."""
    import torch

    from eagle.model import EagleLlamaForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out)
    torch.manual_seed(seed)
    model = EagleLlamaForCausalLM(tiny_config(towers, vocab_size=len(tok)))
    # Default inits leave some towers near-silent; make every weight clearly non-zero.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "vision_tower" in name or "mm_projector" in name:
                if p.dim() > 1:
                    p.normal_(0.0, 1.0 / max(1, p[0].numel()) ** 0.5)
                elif name.endswith("bias"):
                    p.normal_(0.0, 0.1)
    model.save_pretrained(str(out))
    return out
