"""Stand-in of ``eagle/model/language_model/eagle_llama.py``: ``EagleConfig``,
``EagleLlamaModel``, ``EagleLlamaForCausalLM``.

Mirrored contract: ``EagleLlamaForCausalLM(LlamaForCausalLM,
EagleMetaForCausalLM)`` whose inner ``model`` is an ``EagleLlamaModel``
(``EagleMetaModel`` + ``LlamaModel``, so ``model.model.vision_tower`` and
``model.model.mm_projector`` exist); ``forward(..., images, image_sizes)``
splices image features when no ``inputs_embeds`` are given;
``generate(inputs, images, image_sizes, **kwargs)`` builds ``inputs_embeds``
with the images spliced in and calls the LLM's ``generate`` on them (so the
output holds only the new tokens); ``prepare_inputs_for_generation`` passes
``images``/``image_sizes`` through.

Differences, for the installed transformers (5.x) rather than upstream's
pinned 4.x: the config is not registered with ``AutoConfig`` (loading
goes through ``EagleLlamaForCausalLM.from_pretrained``; skipping the global
registration also lets the real ``eagle`` package register its own in the
same process), and ``forward`` passes extra keyword arguments
(``cache_position``, ``logits_to_keep``) on to Llama.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

from ..eagle_arch import EagleMetaForCausalLM, EagleMetaModel


class EagleConfig(LlamaConfig):
    model_type = "eagle_llama"


class EagleLlamaModel(EagleMetaModel, LlamaModel):
    config_class = EagleConfig

    def __init__(self, config: LlamaConfig):
        super().__init__(config)


class EagleLlamaForCausalLM(LlamaForCausalLM, EagleMetaForCausalLM):
    config_class = EagleConfig

    def __init__(self, config):
        super(LlamaForCausalLM, self).__init__(config)
        self.model = EagleLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_model(self):
        return self.model

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, images=None, image_sizes=None,
                return_dict=None, **kwargs):
        if inputs_embeds is None:
            (input_ids, position_ids, attention_mask, past_key_values, inputs_embeds,
             labels) = self.prepare_inputs_labels_for_multimodal(
                input_ids, position_ids, attention_mask, past_key_values, labels, images, image_sizes)
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               past_key_values=past_key_values, inputs_embeds=inputs_embeds, labels=labels,
                               use_cache=use_cache, return_dict=return_dict, **kwargs)

    @torch.no_grad()
    def generate(self, inputs=None, images=None, image_sizes=None, **kwargs):
        position_ids = kwargs.pop("position_ids", None)
        attention_mask = kwargs.pop("attention_mask", None)
        if "inputs_embeds" in kwargs:
            raise NotImplementedError("`inputs_embeds` is not supported")
        if images is not None:
            (inputs, position_ids, attention_mask, _, inputs_embeds,
             _) = self.prepare_inputs_labels_for_multimodal(inputs, position_ids, attention_mask, None, None,
                                                            images, image_sizes=image_sizes)
        else:
            inputs_embeds = self.get_model().embed_tokens(inputs)
        return super().generate(position_ids=position_ids, attention_mask=attention_mask,
                                inputs_embeds=inputs_embeds, **kwargs)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, inputs_embeds=None, **kwargs):
        images = kwargs.pop("images", None)
        image_sizes = kwargs.pop("image_sizes", None)
        out = super().prepare_inputs_for_generation(input_ids, past_key_values=past_key_values,
                                                    inputs_embeds=inputs_embeds, **kwargs)
        if images is not None:
            out["images"] = images
        if image_sizes is not None:
            out["image_sizes"] = image_sizes
        return out
