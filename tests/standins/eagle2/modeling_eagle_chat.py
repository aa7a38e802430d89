"""Stand-in for ``modeling_eagle_chat.py``: ``Eagle2ChatModel``.

What it shares with the real class (and what our code relies on):

* attributes ``vision_model`` (``MultiBackboneChannelConcatenationVisionModel``),
  ``language_model`` (a real ``Qwen2ForCausalLM``), ``mlp1`` (LayerNorm, Linear,
  GELU, Linear), ``downsample_ratio``, ``num_image_token`` =
  ``(grid_size * downsample_ratio) ** 2``, ``template``, ``system_message``,
  ``moe_version_type`` (read from ``config.vision_config``), ``img_context_token_id``;
* ``mlp1``'s input width: ``vit_hidden * 4`` (layout None / ``all_tiling``) or
  ``hidden['convnext'] + hidden['siglip'] * 4`` (``convnext_512_siglip_448``);
* ``pixel_shuffle(x, scale_factor)`` on ``(n, w, h, c)``;
* ``extract_feature(pixel_values)``: one tensor -> square map -> pixel shuffle ->
  ``mlp1``; or, in the second layout, SigLIP alone shuffled, then
  ``torch.cat([siglip, convnext], -1)`` -> ``mlp1``;
* ``chat(tokenizer, pixel_values, question, generation_config, ...)``: ChatML
  prompt from ``get_conv_template(self.template)``, ``<image>`` replaced by
  ``<img>`` + ``<IMG_CONTEXT>`` x ``num_image_token`` x tiles + ``</img>``, the
  separator's token id as ``eos_token_id``, ``self.generate``, first reply
  split at the separator and stripped;
* ``generate(pixel_values, input_ids, attention_mask, visual_features=None, ...)``:
  image-context embeddings replaced by ``extract_feature`` (or the given
  ``visual_features``) in row-major order, then ``language_model.generate``.

Differences: an ``nn.Module`` (the real one is a ``PreTrainedModel`` loaded with
``trust_remote_code``), no LoRA/peft, no ``select_layer`` other than -1, no
version assertion on ``transformers`` (so the stand-in also runs under 5.x),
``generate`` passes no ``None``-valued keywords to ``language_model.generate``
and ``chat`` tokenizes on the model's device instead of calling ``.cuda()``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Qwen2ForCausalLM

from .conversation import get_conv_template
from .multi_backbone_channel_concatentation_model import MultiBackboneChannelConcatenationVisionModel


class Eagle2ChatModel(nn.Module):
    main_input_name = "pixel_values"

    def __init__(self, config, vision_model=None, language_model=None) -> None:
        super().__init__()
        self.config = config
        grid = config.vision_config.grid_size
        self.patch_size = 14
        self.num_image_token = int((grid * config.downsample_ratio) ** 2)
        self.select_layer = config.select_layer
        self.template = config.template
        self.downsample_ratio = config.downsample_ratio
        self.vision_model = vision_model or MultiBackboneChannelConcatenationVisionModel(config.vision_config, config)
        self.language_model = language_model or Qwen2ForCausalLM(config.llm_config)
        vit_hidden = config.vision_config.hidden_size
        if vit_hidden == "lazy_calculation":
            vit_hidden = self.vision_model.hidden_size
        llm_hidden = config.llm_config.hidden_size
        self.moe_version_type = getattr(config.vision_config, "moe_version_type", None)
        factor = int(1 / self.downsample_ratio) ** 2
        if self.moe_version_type == "convnext_512_siglip_448":
            width = vit_hidden["convnext"] + vit_hidden["siglip"] * factor
        else:
            width = vit_hidden * factor
        self.mlp1 = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, llm_hidden), nn.GELU(),
                                  nn.Linear(llm_hidden, llm_hidden))
        self.img_context_token_id = None
        self.conv_template = get_conv_template(self.template)
        self.system_message = self.conv_template.system_message

    def pixel_shuffle(self, x: torch.Tensor, scale_factor: float = 0.5) -> torch.Tensor:
        n, w, h, c = x.size()
        x = x.view(n, w, int(h * scale_factor), int(c / scale_factor)).permute(0, 2, 1, 3).contiguous()
        x = x.view(n, int(h * scale_factor), int(w * scale_factor), int(c / (scale_factor * scale_factor)))
        return x.permute(0, 2, 1, 3).contiguous()

    def _shuffled_tokens(self, v: torch.Tensor) -> torch.Tensor:
        side = int(v.shape[1] ** 0.5)
        v = self.pixel_shuffle(v.reshape(v.shape[0], side, side, -1), scale_factor=self.downsample_ratio)
        return v.reshape(v.shape[0], -1, v.shape[-1])

    def extract_feature(self, pixel_values: torch.Tensor) -> torch.Tensor:
        vit = self.vision_model(pixel_values=pixel_values, output_hidden_states=False,
                                return_dict=True).last_hidden_state
        if self.moe_version_type == "convnext_512_siglip_448":
            siglip = self._shuffled_tokens(vit["siglip"])
            return self.mlp1(torch.cat([siglip, vit["convnext"]], dim=-1))
        return self.mlp1(self._shuffled_tokens(vit))

    def chat(self, tokenizer, pixel_values, question, generation_config, history=None, return_history=False,
             num_patches_list=None, IMG_START_TOKEN="<img>", IMG_END_TOKEN="</img>",
             IMG_CONTEXT_TOKEN="<IMG_CONTEXT>", verbose=False, llm_only=False):
        if history is None and pixel_values is not None and "<image>" not in question:
            question = "<image>\n" + question
        if num_patches_list is None:
            num_patches_list = [pixel_values.shape[0]] if pixel_values is not None else []
        self.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
        template = get_conv_template(self.template)
        template.system_message = self.system_message
        eos_token_id = tokenizer.convert_tokens_to_ids(template.sep)
        history = [] if history is None else history
        for old_q, old_a in history:
            template.append_message(template.roles[0], old_q)
            template.append_message(template.roles[1], old_a)
        template.append_message(template.roles[0], question)
        template.append_message(template.roles[1], None)
        query = template.get_prompt()
        for n in num_patches_list:
            tokens = IMG_START_TOKEN + IMG_CONTEXT_TOKEN * self.num_image_token * n + IMG_END_TOKEN
            query = query.replace("<image>", "" if llm_only else tokens, 1)
        device = self.mlp1[1].weight.device
        inputs = tokenizer(query, return_tensors="pt")
        generation_config["eos_token_id"] = eos_token_id
        out = self.generate(pixel_values=pixel_values, input_ids=inputs["input_ids"].to(device),
                            attention_mask=inputs["attention_mask"].to(device), **generation_config)
        response = tokenizer.batch_decode(out, skip_special_tokens=True)[0].split(template.sep)[0].strip()
        history.append((question, response))
        return (response, history) if return_history else response

    @torch.no_grad()
    def generate(self, pixel_values=None, input_ids=None, attention_mask=None, visual_features=None,
                 generation_config=None, output_hidden_states=None, return_dict=None, **generate_kwargs):
        assert self.img_context_token_id is not None
        embeds = self.language_model.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            vit = visual_features if visual_features is not None else self.extract_feature(pixel_values)
            b, n, c = embeds.shape
            embeds = embeds.reshape(b * n, c)
            selected = input_ids.reshape(b * n) == self.img_context_token_id
            assert selected.sum() != 0
            embeds[selected] = vit.reshape(-1, c).to(embeds.device, embeds.dtype)
            embeds = embeds.reshape(b, n, c)
        extra = {k: v for k, v in dict(generation_config=generation_config, output_hidden_states=output_hidden_states,
                                       return_dict_in_generate=return_dict).items() if v is not None}
        return self.language_model.generate(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=True,
                                            **extra, **generate_kwargs)

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()
