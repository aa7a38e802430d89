"""Build a tiny random stand-in Eagle2 model and tokenizer, offline.

``tiny_config(layout)`` mirrors the shape of Eagle2-9B's ``config.json``
(``vision_config`` with ``model_type 'MOB'``, ``vision_tower 'palisiglip;convnext-1024'``,
``grid_size``, ``moe_version_type``, image sizes per tower, ``hidden_size
'lazy_calculation'``; ``llm_config`` a ``Qwen2Config``; ``downsample_ratio 0.5``,
``select_layer -1``, ``template 'qwen2-chat'``, ``force_image_size``) at toy sizes:

==============================  ==========================  ==============================
                                 Eagle2-9B                   stand-in
==============================  ==========================  ==============================
tile (force_image_size)          448                         28
SigLIP input / patch / grid      448 / 14 / 32 x 32, 1152 ch  28 / 7 / 4 x 4, 6 ch
ConvNeXt input (all_tiling)      1024 -> 32 x 32, 3072 ch    32 -> 2 x 2 (interpolated to 4 x 4), 10 ch
ConvNeXt input (convnext_512)    512 -> 16 x 16, 3072 ch     32 -> 2 x 2, 10 ch
tokens per tile after shuffle    256                         4
language model                   Qwen2.5-7B                  Qwen2ForCausalLM, 2 layers, hidden 32
==============================  ==========================  ==============================

(The real ConvNeXt-XXL has stride 32; the stand-in's 16 keeps the token
counts of the real layouts: a map smaller than the grid in ``all_tiling``,
exactly the shuffled grid in ``convnext_512_siglip_448``.)
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

LAYOUTS = ("all_tiling", "convnext_512_siglip_448")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>"]
TILE = 28

_CORPUS = [
    "You are a helpful assistant.", "user assistant system", "What is in the image? Answer the question "
    "using a single word or phrase.", "A B C D red green blue yellow cat dog chart table 0 1 2 3 4 5 6 7 8 9",
]


def tiny_tokenizer():
    """Byte-level BPE with ChatML and Eagle2's image special tokens (``<IMG_CONTEXT>`` ...)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   model_max_length=4096)


def tiny_config(layout: str = "all_tiling", vocab_size: int = 300, bos: int = 0, eos: int = 2,
                llm_layers: int = 2) -> SimpleNamespace:
    from transformers import Qwen2Config

    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: one of {LAYOUTS}")
    vision = SimpleNamespace(
        model_type="MOB", vision_tower="palisiglip;convnext-1024", grid_size=4, hidden_size="lazy_calculation",
        moe_version_type=None if layout == "all_tiling" else layout, normalize_type="siglip",
        convnext_img_size=32, siglip_img_size=TILE, image_size={"siglip": TILE, "convnext": 32},
        vision_tower_siglip_path="siglip-tiny", vision_tower_convnext_path="convnext_xxlarge.tiny",
        mm_vision_select_layer=-1, freeze_backbones=None, delay_load=True,
        siglip_hidden_size=6, siglip_patch_size=7, convnext_hidden_size=10)
    llm = Qwen2Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=llm_layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=False, architectures=["Qwen2ForCausalLM"],
                      bos_token_id=bos, eos_token_id=eos)
    return SimpleNamespace(vision_config=vision, llm_config=llm, downsample_ratio=0.5, select_layer=-1,
                           template="qwen2-chat", force_image_size=TILE)


def build(layout: str = "all_tiling", seed: int = 0):
    """(model, tokenizer): a float32, eval-mode stand-in Eagle2ChatModel with random weights."""
    from .modeling_eagle_chat import Eagle2ChatModel

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    model = Eagle2ChatModel(tiny_config(layout, vocab_size=len(tok), bos=tok.convert_tokens_to_ids("<|endoftext|>"),
                                        eos=tok.convert_tokens_to_ids("<|im_end|>"))).float().eval()
    return model, tok
