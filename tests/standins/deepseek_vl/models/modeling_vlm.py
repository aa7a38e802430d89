"""Mirrors ``deepseek_vl/models/modeling_vlm.py``: ``MultiModalityConfig`` / ``MultiModalityCausalLM``.

Contract kept: ``vision_model`` (built from ``vision_config.cls`` / ``.params``:
``HybridVisionTower``), ``aligner`` (``MlpProjector``), ``language_model``
(``LlamaForCausalLM``) and ``prepare_inputs_embeds(input_ids, pixel_values,
images_seq_mask, images_emb_mask)`` which runs ``aligner(vision_model(images))``
and scatters the result into the token embeddings.  Registered with
``AutoConfig`` / ``AutoModelForCausalLM`` under ``multi_modality`` on import, as
upstream does, so ``AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)``
loads a saved stand-in checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel
try:
    from transformers.configuration_utils import PreTrainedConfig
except ImportError:  # transformers 4.x spells it PretrainedConfig (the deepseek_vl environment)
    from transformers.configuration_utils import PretrainedConfig as PreTrainedConfig

from .clip_encoder import CLIPVisionTower, HybridVisionTower
from .projector import MlpProjector

_CLASSES = {"MlpProjector": MlpProjector, "CLIPVisionTower": CLIPVisionTower, "HybridVisionTower": HybridVisionTower}


def model_name_to_cls(cls_name: str) -> type:
    for key, cls in _CLASSES.items():
        if key in cls_name:
            return cls
    raise ValueError(f"class_name {cls_name} is invalid.")


class MultiModalityConfig(PreTrainedConfig):
    model_type = "multi_modality"

    def __init__(self, vision_config: dict | None = None, aligner_config: dict | None = None,
                 language_config: dict | LlamaConfig | None = None, **kwargs: Any) -> None:
        self.vision_config = dict(vision_config or {})
        self.aligner_config = dict(aligner_config or {})
        lc = language_config or {}
        self.language_config = lc if isinstance(lc, LlamaConfig) else LlamaConfig(**lc)
        super().__init__(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["language_config"] = self.language_config.to_dict()
        return out


class MultiModalityCausalLM(PreTrainedModel):
    config_class = MultiModalityConfig
    base_model_prefix = "multi_modality"
    _no_split_modules: list[str] = []

    def __init__(self, config: MultiModalityConfig) -> None:
        super().__init__(config)
        vc, ac = config.vision_config, config.aligner_config
        self.vision_model = model_name_to_cls(vc["cls"])(**vc["params"])
        self.aligner = model_name_to_cls(ac["cls"])(ac["params"])
        self.language_model = LlamaForCausalLM(config.language_config)
        self.post_init()

    def prepare_inputs_embeds(self, input_ids: torch.LongTensor, pixel_values: torch.FloatTensor,
                              images_seq_mask: torch.BoolTensor, images_emb_mask: torch.BoolTensor,
                              **kwargs: Any) -> torch.Tensor:
        bs, n = pixel_values.shape[:2]
        images = pixel_values.flatten(0, 1)
        images_embeds = self.aligner(self.vision_model(images))
        images_embeds = images_embeds.reshape(bs, n * images_embeds.shape[1], images_embeds.shape[2])
        images_emb_mask = images_emb_mask.flatten(1)
        input_ids = input_ids.clone()
        input_ids[input_ids < 0] = 0
        inputs_embeds = self.language_model.get_input_embeddings()(input_ids)
        inputs_embeds[images_seq_mask] = images_embeds[images_emb_mask].to(inputs_embeds.dtype)
        return inputs_embeds


AutoConfig.register("multi_modality", MultiModalityConfig, exist_ok=True)
AutoModelForCausalLM.register(MultiModalityConfig, MultiModalityCausalLM, exist_ok=True)
