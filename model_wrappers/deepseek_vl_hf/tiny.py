"""The tiny random DeepseekVLHybrid behind ``encred-tiny:deepseek-vl-hybrid`` (CPU smoke model).

Built offline by :func:`vlmeval_encred.tiny_models.ensure_tiny` from :data:`RECIPE`
(declared in catalog.py with ``provide("tiny", ...)``).  The tokenizer is also used by
other families' tests and self-tests that need a small DeepSeek-style chat tokenizer.
The weights are random (seeded, so every build is identical): answers are noise, but
shapes, dtypes, special tokens and every code path are real.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from vlmeval_encred.tiny_models import TinyRecipe

# --------------------------------------------------------------------------- tokenizer

_SPECIALS = {
    "bos_token": "<｜begin▁of▁sentence｜>",
    "eos_token": "<｜end▁of▁sentence｜>",
    "pad_token": "<｜pad｜>",
    "image_token": "<image_placeholder>",
}
# A few sentences in the shape of the prompts the smoke datasets and tests send, so the
# BPE merges cover them with short token sequences (any text still encodes: byte-level).
_CORPUS = [
    "You are a helpful language and vision assistant.",
    "User: What colour is the image? Assistant: red green blue yellow",
    "Question: Which option is correct? Options: A. B. C. D. Answer with the option's letter.",
    "Please select the correct answer from the options above.",
    "Describe the chart. The value is 0 1 2 3 4 5 6 7 8 9 percent.",
]

# DeepSeek-VL's conversation format (system text, "User: ...", "Assistant:"), with each
# image item rendered as the processor's image token, which the processor expands to
# ``num_image_tokens`` copies.  Written for this package; the real checkpoint ships its own.
CHAT_TEMPLATE = (
    "{%- set sep = '\\n\\n' -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] }}{{ sep }}"
    "{%- else -%}"
    "{{ 'User: ' if message['role'] == 'user' else 'Assistant: ' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}<image_placeholder>"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ sep if message['role'] == 'user' else eos_token }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}Assistant:{%- endif -%}"
)


def build_tokenizer(vocab_size: int = 320):
    """A byte-level BPE tokenizer trained on a tiny in-code corpus (no download).

    Wrapped as ``PreTrainedTokenizerFast`` with the special tokens DeepSeek-VL's
    processors look up (``tokenizer.image_token`` in particular).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(_SPECIALS.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=_SPECIALS["bos_token"], eos_token=_SPECIALS["eos_token"],
        pad_token=_SPECIALS["pad_token"], extra_special_tokens={"image_token": _SPECIALS["image_token"]},
        model_max_length=4096)


# --------------------------------------------------------------------------- DeepseekVLHybrid


@dataclass(frozen=True)
class HybridSizes:
    """Geometry of a small DeepseekVLHybrid.  Defaults: the test model (~0.2 M parameters).

    ``siglip_image // siglip_patch`` sets the number of image tokens of *both*
    branches (the SAM branch is resampled to the SigLIP grid before the aligner).
    """

    llm_hidden: int = 64
    llm_layers: int = 2
    llm_heads: int = 4
    siglip_hidden: int = 32
    siglip_layers: int = 2
    siglip_heads: int = 4
    siglip_image: int = 32
    siglip_patch: int = 8
    sam_hidden: int = 32
    sam_layers: int = 2
    sam_heads: int = 4
    sam_image: int = 64
    sam_patch: int = 8
    sam_window: int = 4
    sam_global_attn: tuple[int, ...] = (1,)
    sam_output_channels: int = 16
    high_res_alpha: float = 0.5
    """The learned weight of SAM's global-attention branch; random init leaves it at 0,
    which would hide the neck from every test, so the recipe sets it."""
    seed: int = 0


def deepseek_vl_hybrid_config(sizes: HybridSizes, tokenizer):
    """A ``DeepseekVLHybridConfig`` for ``sizes``, with token ids from ``tokenizer``."""
    from transformers import DeepseekVLHybridConfig

    s = sizes
    return DeepseekVLHybridConfig(
        text_config=dict(
            model_type="llama", hidden_size=s.llm_hidden, intermediate_size=2 * s.llm_hidden,
            num_hidden_layers=s.llm_layers, num_attention_heads=s.llm_heads, num_key_value_heads=s.llm_heads,
            vocab_size=len(tokenizer), max_position_embeddings=4096,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(
            model_type="siglip_vision_model", hidden_size=s.siglip_hidden, intermediate_size=2 * s.siglip_hidden,
            num_hidden_layers=s.siglip_layers, num_attention_heads=s.siglip_heads,
            image_size=s.siglip_image, patch_size=s.siglip_patch),
        high_res_vision_config=dict(
            model_type="sam_vision_model", hidden_size=s.sam_hidden, output_channels=s.sam_output_channels,
            num_hidden_layers=s.sam_layers, num_attention_heads=s.sam_heads, image_size=s.sam_image,
            patch_size=s.sam_patch, window_size=s.sam_window, global_attn_indexes=list(s.sam_global_attn),
            mlp_dim=2 * s.sam_hidden, num_pos_feats=max(8, s.sam_hidden // 2),
            # SamVisionConfig's default (1e-10) makes a random SAM's output vanish.
            initializer_range=0.02),
        image_token_id=tokenizer.convert_tokens_to_ids(_SPECIALS["image_token"]),
        tie_word_embeddings=True)


def build_deepseek_vl_hybrid(dest: Path, sizes: HybridSizes = HybridSizes()) -> None:
    """Write a random DeepseekVLHybrid checkpoint + processor + chat template into ``dest``."""
    import torch
    from transformers import (DeepseekVLHybridForConditionalGeneration, DeepseekVLHybridImageProcessor,
                              DeepseekVLHybridProcessor)

    tokenizer = build_tokenizer()
    config = deepseek_vl_hybrid_config(sizes, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(sizes.seed)
        model = DeepseekVLHybridForConditionalGeneration(config).eval()
        with torch.no_grad():
            model.model.high_res_vision_alpha.fill_(sizes.high_res_alpha)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(dest)
    image_processor = DeepseekVLHybridImageProcessor(
        size={"height": sizes.siglip_image, "width": sizes.siglip_image},
        high_res_size={"height": sizes.sam_image, "width": sizes.sam_image},
        min_size=min(14, sizes.siglip_image))
    processor = DeepseekVLHybridProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
        num_image_tokens=(sizes.siglip_image // sizes.siglip_patch) ** 2)
    processor.save_pretrained(dest)


RECIPE = TinyRecipe(
    "deepseek-vl-hybrid", 1, lambda d: build_deepseek_vl_hybrid(d, HybridSizes()),
    "DeepseekVLHybridForConditionalGeneration: SigLIP 32, SAM 32, Llama 64", asdict(HybridSizes()))
