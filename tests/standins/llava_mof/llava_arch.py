"""Tiny stand-in for ``LLaVA/llava/model/llava_arch.py`` and ``multimodal_encoder/dino_encoder.py``
of the MMVP repository (I-MoF), written anew to mirror the structure the adapter touches:

* ``TinyLlavaModel`` ~ ``LlavaMetaModel``: ``vision_tower`` (CLIP) and
  ``dino_tower`` (DINOv2), each with its own projector ``mm_projector`` /
  ``dino_mm_projector`` (``mlp2x_gelu``: Linear, GELU, Linear);
* ``TinyDINOTower`` loads its network with ``torch.hub.load('facebookresearch/dinov2',
  'dinov2_vitl14')`` in ``load_model`` and keeps a CLIP model only for its
  ``dtype``/``device``, as upstream;
* ``TinyLlavaForCausalLM`` ~ ``LlavaMetaForCausalLM``: ``encode_images``
  (CLIP path), ``encode_images_withclip``, ``encode_images_withdino``,
  ``prepare_inputs_labels_for_multimodal`` (one tower) and
  ``prepare_inputs_labels_for_multimodal_withdino`` (CLIP and DINO tokens
  interleaved: even positions CLIP, odd DINO), which ``forward`` uses.

Simplified: one image per sample, no labels, a linear LM head over the embeddings.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

IMAGE_TOKEN_INDEX = -200


class TinyCLIPTower(nn.Module):
    def __init__(self, hidden: int = 12, image_size: int = 28, patch: int = 7) -> None:
        super().__init__()
        self.config = SimpleNamespace(image_size=image_size, patch_size=patch, hidden_size=hidden)
        self.vision_tower = nn.Conv2d(3, hidden, patch, patch)
        self.image_processor = SimpleNamespace(image_mean=[0.5, 0.5, 0.5])
        self.is_loaded = True

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.vision_tower(images.to(self.dtype)).flatten(2).transpose(1, 2).to(images.dtype)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_tower.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.vision_tower.weight.device

    @property
    def dummy_feature(self) -> torch.Tensor:
        return torch.zeros(1, self.hidden_size, device=self.device, dtype=self.dtype)


class HubDinoNet(nn.Module):
    """What ``hubconf.dinov2_vitl14`` would return: ``forward_features`` -> dict with ``x_prenorm``."""

    def __init__(self, hidden: int = 12, patch: int = 7) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, hidden, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden))

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        return {"x_prenorm": torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], 1)}


class TinyDINOTower(nn.Module):
    def __init__(self, hidden: int = 12) -> None:
        super().__init__()
        self.hidden = hidden
        self.is_loaded = False

    def load_model(self) -> None:
        self.clip_vision_tower = TinyCLIPTower(self.hidden)
        self.vision_tower = torch.hub.load("facebookresearch/dinov2", "dinov2_vitl14")
        self.vision_tower.requires_grad_(False)
        self.is_loaded = True

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.vision_tower.forward_features(images.to(device=self.device, dtype=self.dtype))
        return out["x_prenorm"][:, 1:].to(images.dtype)

    @property
    def hidden_size(self) -> int:
        return self.hidden

    @property
    def dtype(self) -> torch.dtype:
        return self.clip_vision_tower.dtype

    @property
    def device(self) -> torch.device:
        return self.clip_vision_tower.device


def mlp2x_gelu(d_in: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_out), nn.GELU(), nn.Linear(d_out, d_out))


class TinyLlavaModel(nn.Module):
    def __init__(self, hidden: int = 12, llm: int = 16, vocab: int = 40) -> None:
        super().__init__()
        self.config = SimpleNamespace(mm_vision_tower="openai/clip-vit-large-patch14-336",
                                      mm_projector_type="mlp2x_gelu", mm_hidden_size=hidden, hidden_size=llm)
        self.vision_tower = TinyCLIPTower(hidden)
        self.dino_tower = TinyDINOTower(hidden)
        self.mm_projector = mlp2x_gelu(hidden, llm)
        self.dino_mm_projector = mlp2x_gelu(hidden, llm)
        self.embed_tokens = nn.Embedding(vocab, llm)

    def get_vision_tower(self, load_model: str = "clip") -> nn.Module:
        return self.vision_tower if load_model == "clip" else self.dino_tower


class TinyLlavaForCausalLM(nn.Module):
    def __init__(self, **kw) -> None:
        super().__init__()
        self.model = TinyLlavaModel(**kw)
        self.config = self.model.config
        self.lm_head = nn.Linear(self.model.config.hidden_size, 40, bias=False)

    def get_model(self) -> TinyLlavaModel:
        return self.model

    def get_vision_tower(self) -> nn.Module:
        return self.model.get_vision_tower()

    def get_dino_vision_tower(self) -> nn.Module:
        return self.model.get_vision_tower(load_model="dino")

    def encode_images(self, images):
        return self.model.mm_projector(self.model.get_vision_tower()(images))

    def encode_images_withclip(self, images):
        return self.model.mm_projector(self.model.get_vision_tower(load_model="clip")(images))

    def encode_images_withdino(self, images):
        return self.model.dino_mm_projector(self.model.get_vision_tower(load_model="dino")(images))

    def _splice(self, input_ids, per_sample_image):
        rows = []
        for b, ids in enumerate(input_ids):
            at = int(torch.where(ids == IMAGE_TOKEN_INDEX)[0][0])
            rows.append(torch.cat([self.model.embed_tokens(ids[:at]), per_sample_image(b),
                                   self.model.embed_tokens(ids[at + 1:])], 0))
        return torch.stack(rows, 0)

    def prepare_inputs_labels_for_multimodal(self, input_ids, attention_mask, past_key_values, labels, images):
        if self.get_vision_tower() is None or images is None or input_ids.shape[1] == 1:
            return input_ids, attention_mask, past_key_values, None, labels
        feats = self.encode_images(images)
        return None, attention_mask, past_key_values, self._splice(input_ids, lambda b: feats[b]), labels

    def prepare_inputs_labels_for_multimodal_withdino(self, input_ids, attention_mask, past_key_values, labels, images):
        if self.get_vision_tower() is None or images is None or input_ids.shape[1] == 1:
            return input_ids, attention_mask, past_key_values, None, labels
        clip = self.encode_images_withclip(images)
        dino = self.encode_images_withdino(images)

        def interleave(b):
            n, d = clip[b].shape
            merged = torch.empty(2 * n, d, dtype=clip.dtype)
            merged[0::2] = clip[b]
            merged[1::2] = dino[b]
            return merged

        return None, attention_mask, past_key_values, self._splice(input_ids, interleave), labels

    def forward(self, input_ids, images):
        ids, _, _, embeds, _ = self.prepare_inputs_labels_for_multimodal_withdino(input_ids, None, None, None, images)
        if embeds is None:  # the text-only path: the LLM embeds the ids itself (LlamaModel does)
            embeds = self.model.embed_tokens(ids)
        return embeds, self.lm_head(embeds)

