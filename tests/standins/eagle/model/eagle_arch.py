"""Stand-in of ``eagle/model/eagle_arch.py``: ``EagleMetaModel`` and ``EagleMetaForCausalLM``.

Mirrored contract:

* ``EagleMetaModel.__init__`` builds ``self.vision_tower``
  (``build_vision_tower(config, delay_load=True)``) and ``self.mm_projector``
  (``build_vision_projector(config)``) when the config has
  ``mm_vision_tower``; ``get_vision_tower()``.
* ``EagleMetaForCausalLM.encode_images(images)`` =
  ``mm_projector(vision_tower(images))``, and
  ``prepare_inputs_labels_for_multimodal`` splices each image's projected
  features in place of its ``IMAGE_TOKEN_INDEX`` token and right-pads the
  batch, returning ``(None, position_ids, attention_mask, past_key_values,
  inputs_embeds, labels)``; with no images or a one-token step it returns the
  inputs unchanged.

Not mirrored: ``initialize_vision_modules`` / ``initialize_vision_tokenizer``
(training) and the ``spatial``/``anyres`` patch-merge branches (Eagle-X4/X5
use ``flat``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from eagle.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

from .multimodal_encoder.builder import build_vision_tower
from .multimodal_projector.builder import build_vision_projector


class EagleMetaModel:
    def __init__(self, config):
        super().__init__(config)
        if hasattr(config, "mm_vision_tower"):
            self.vision_tower = build_vision_tower(config, delay_load=True)
            self.mm_projector = build_vision_projector(config)

    def get_vision_tower(self):
        vision_tower = getattr(self, "vision_tower", None)
        if type(vision_tower) is list:
            vision_tower = vision_tower[0]
        return vision_tower


class EagleMetaForCausalLM(ABC):
    @abstractmethod
    def get_model(self):
        pass

    def get_vision_tower(self):
        return self.get_model().get_vision_tower()

    def encode_images(self, images):
        return self.get_model().mm_projector(self.get_model().get_vision_tower()(images))

    def prepare_inputs_labels_for_multimodal(self, input_ids, position_ids, attention_mask, past_key_values,
                                             labels, images, image_sizes=None):
        if self.get_vision_tower() is None or images is None or input_ids.shape[1] == 1:
            return input_ids, position_ids, attention_mask, past_key_values, None, labels

        if type(images) is list or images.ndim == 5:
            images = [im.unsqueeze(0) if im.ndim == 3 else im for im in images]
            feats = self.encode_images(torch.cat(images, dim=0))
            image_features = [f for f in feats]  # flat merge: one (N, D) block per image
        else:
            image_features = list(self.encode_images(images))

        keep = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
        labels_in = labels if labels is not None else torch.full_like(input_ids, IGNORE_INDEX)
        embed = self.get_model().embed_tokens
        rows, row_labels, next_image = [], [], 0
        for ids, lab, m in zip(input_ids, labels_in, keep):
            ids, lab = ids[m], lab[m]
            where = [-1] + torch.where(ids == IMAGE_TOKEN_INDEX)[0].tolist() + [ids.shape[0]]
            parts, part_labels = [], []
            for k in range(len(where) - 1):
                text = ids[where[k] + 1:where[k + 1]]
                parts.append(embed(text))
                part_labels.append(lab[where[k] + 1:where[k + 1]])
                if k < len(where) - 2:
                    feat = image_features[next_image].to(parts[-1].dtype)
                    next_image += 1
                    parts.append(feat)
                    part_labels.append(torch.full((feat.shape[0],), IGNORE_INDEX, dtype=lab.dtype, device=lab.device))
            rows.append(torch.cat([p.to(self.device) for p in parts]))
            row_labels.append(torch.cat(part_labels))

        limit = getattr(self.config, "tokenizer_model_max_length", None)
        if limit is not None:
            rows, row_labels = [r[:limit] for r in rows], [r[:limit] for r in row_labels]
        width = max(r.shape[0] for r in rows)
        embeds = torch.zeros(len(rows), width, rows[0].shape[1], dtype=rows[0].dtype, device=rows[0].device)
        new_labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=row_labels[0].dtype,
                                device=row_labels[0].device)
        new_mask = torch.zeros(len(rows), width, dtype=torch.bool, device=rows[0].device)
        new_pos = torch.zeros(len(rows), width, dtype=torch.long, device=rows[0].device)
        for i, (r, lab) in enumerate(zip(rows, row_labels)):
            n = r.shape[0]
            embeds[i, :n], new_labels[i, :n], new_mask[i, :n] = r, lab, True
            new_pos[i, :n] = torch.arange(n, device=r.device)
        return (None, None if position_ids is None else new_pos,
                None if attention_mask is None else new_mask.to(attention_mask.dtype),
                past_key_values, embeds, None if labels is None else new_labels)
