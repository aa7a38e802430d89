"""Stand-in of ``eagle/model/builder.py``: ``load_pretrained_model``.

Mirrored contract (the non-LoRA, no-``model_base`` Eagle branch that
VLMEvalKit uses): same signature; ``device_map`` goes to ``from_pretrained``
(``{"": device}`` when ``device != "cuda"``), weights in float16 unless 8/4-bit
is asked for; when ``'eagle'`` is in ``model_name``: add the image patch /
start-end tokens the config asks for, resize embeddings, ``load_model`` the
vision tower if needed, move it to ``device_map`` in float16 unless
``device_map == 'auto'``, and return ``(tokenizer, model, image_processor,
context_len)`` with the vision tower's (i.e. ConvNeXt's) processor.

Differences: the LoRA / ``model_base`` / quantised / non-Eagle branches raise
``NotImplementedError``; the dtype keyword is ``dtype`` (transformers 5
name for ``torch_dtype``; ``torch_dtype`` under transformers 4.x, so the stand-in also runs in
the ``eagle1`` environment).
"""

from __future__ import annotations

import torch
import transformers
from transformers import AutoTokenizer

from eagle.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_PATCH_TOKEN
from eagle.model import EagleLlamaForCausalLM


DTYPE_KEYWORD = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"


def load_pretrained_model(model_path, model_base, model_name, load_8bit=False, load_4bit=False,
                          device_map="auto", device="cuda", use_flash_attn=False, **kwargs):
    kwargs = {"device_map": device_map, **kwargs}
    if device != "cuda":
        kwargs["device_map"] = {"": device}
    if load_8bit or load_4bit or use_flash_attn:
        raise NotImplementedError("stand-in: quantised / flash-attention loading is not mirrored")
    kwargs[DTYPE_KEYWORD] = torch.float16
    if model_base is not None or "eagle" not in model_name.lower():
        raise NotImplementedError("stand-in: only the plain Eagle checkpoint branch is mirrored")

    tokenizer = AutoTokenizer.from_pretrained(model_path, use_fast=False)
    model = EagleLlamaForCausalLM.from_pretrained(model_path, low_cpu_mem_usage=True, **kwargs)

    if getattr(model.config, "mm_use_im_patch_token", True):
        tokenizer.add_tokens([DEFAULT_IMAGE_PATCH_TOKEN], special_tokens=True)
    if getattr(model.config, "mm_use_im_start_end", False):
        tokenizer.add_tokens([DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN], special_tokens=True)
    model.resize_token_embeddings(len(tokenizer))

    vision_tower = model.get_vision_tower()
    if not vision_tower.is_loaded:
        vision_tower.load_model(device_map=device_map)
    if device_map != "auto":
        vision_tower.to(device=device_map, dtype=torch.float16)
    image_processor = vision_tower.image_processor
    context_len = getattr(model.config, "max_sequence_length", 2048)
    return tokenizer, model, image_processor, context_len
