"""Tiny stand-in for the Eagle2-9B remote code (``modeling_eagle_chat.py`` and
``multi_backbone_channel_concatenation_encoder.py`` shipped with nvidia/Eagle2-9B),
written anew to mirror the structure the adapter touches:

* ``MultiBackboneChannelConcatenationVisionTower``: towers in the ModuleList
  ``vision_towers`` built from ``vision_tower`` names joined by ``;``
  (``palisiglip`` -> SigLIP, ``convnext-1024`` -> ConvNeXt); each tower has
  ``name``, ``input_image_size`` and ``hidden_size``; the input is resized to
  each tower's size, a (b, n, c) output with n == grid**2 is used as is,
  other outputs are brought to a grid x grid map by bilinear interpolation,
  then ``torch.cat(..., dim=-1)`` (default ``moe_version_type`` None);
* ``MultiBackboneChannelConcatenationVisionModel`` wrapping it as ``.vision_model``;
* ``Eagle2ChatModel``: ``vision_model``, ``pixel_shuffle`` (scale 0.5),
  ``mlp1`` = LayerNorm, Linear, GELU, Linear; ``extract_feature``; the image
  context tokens of the prompt are replaced by the features of *all* tiles
  (dynamic tiles plus thumbnail, stacked in ``pixel_values``).

Tiny sizes: 28 px tiles, grid 4 (16 tokens per tile, 4 after pixel shuffle).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn


class SiglipVisionTower(nn.Module):
    def __init__(self, hidden: int = 6, input_image_size: int = 28, patch: int = 7) -> None:
        super().__init__()
        self.name, self.input_image_size, self._hidden = "siglip", input_image_size, hidden
        self.vision_tower = nn.Conv2d(3, hidden, patch, patch)

    @property
    def hidden_size(self) -> int:
        return self._hidden

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (b, n, c), n == grid**2
        return self.vision_tower(images).flatten(2).transpose(1, 2)


class ConvNextVisionTower(nn.Module):
    def __init__(self, hidden: int = 10, input_image_size: int = 32) -> None:
        super().__init__()
        self.name, self.input_image_size, self._hidden = "convnext", input_image_size, hidden
        self.vision_tower = nn.Conv2d(3, hidden, 16, 16)

    @property
    def hidden_size(self) -> int:
        return self._hidden

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (b, c, 2, 2): interpolated upstream
        return self.vision_tower(images)


class MultiBackboneChannelConcatenationVisionTower(nn.Module):
    def __init__(self, vision_tower: str, grid_size: int = 4, moe_version_type=None) -> None:
        super().__init__()
        self.grid_size, self.num_tokens = grid_size, grid_size ** 2
        self.moe_version_type = moe_version_type
        self.vision_towers = nn.ModuleList()
        for name in vision_tower.split(";"):
            if name == "convnext-1024":
                self.vision_towers.append(ConvNextVisionTower())
            elif name == "palisiglip":
                self.vision_towers.append(SiglipVisionTower())
            else:
                raise ValueError(name)

    @property
    def hidden_size(self) -> int:
        return sum(t.hidden_size for t in self.vision_towers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = []
        for tower in self.vision_towers:
            if tower.input_image_size != x.shape[2]:
                xi = F.interpolate(x.float(), size=(tower.input_image_size,) * 2, mode="bilinear",
                                   align_corners=True).to(x.dtype)
            else:
                xi = x
            f = tower(xi)
            if f.dim() == 3:
                b, n, c = f.shape
                if n == self.num_tokens:
                    features.append(f)
                    continue
                f = f.transpose(1, 2).reshape(b, c, int(n ** 0.5), int(n ** 0.5))
            if f.shape[-1] != self.grid_size:
                f = F.interpolate(f.float(), size=(self.grid_size,) * 2, mode="bilinear",
                                  align_corners=True).to(x.dtype)
            features.append(f.flatten(2, 3).transpose(1, 2))
        return torch.cat(features, dim=-1)


class MultiBackboneChannelConcatenationVisionModel(nn.Module):
    def __init__(self, config: SimpleNamespace) -> None:
        super().__init__()
        self.vision_model = MultiBackboneChannelConcatenationVisionTower(
            config.vision_tower, config.grid_size, getattr(config, "moe_version_type", None))

    def forward(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(last_hidden_state=self.vision_model(pixel_values))


class Eagle2ChatModel(nn.Module):
    def __init__(self, llm_hidden: int = 16, vocab: int = 30, vision_tower: str = "palisiglip;convnext-1024") -> None:
        super().__init__()
        vc = SimpleNamespace(model_type="MOB", vision_tower=vision_tower, grid_size=4, hidden_size="lazy_calculation")
        self.config = SimpleNamespace(vision_config=vc, downsample_ratio=0.5, select_layer=-1)
        self.downsample_ratio = 0.5
        self.vision_model = MultiBackboneChannelConcatenationVisionModel(vc)
        c = self.vision_model.vision_model.hidden_size * 4
        self.mlp1 = nn.Sequential(nn.LayerNorm(c), nn.Linear(c, llm_hidden), nn.GELU(), nn.Linear(llm_hidden, llm_hidden))
        self.embed = nn.Embedding(vocab, llm_hidden)
        self.img_context_token_id = 1
        self.num_image_token = 4

    def pixel_shuffle(self, x: torch.Tensor, scale_factor: float = 0.5) -> torch.Tensor:
        n, w, h, c = x.shape
        x = x.view(n, w, int(h * scale_factor), int(c / scale_factor)).permute(0, 2, 1, 3).contiguous()
        x = x.view(n, int(h * scale_factor), int(w * scale_factor), int(c / scale_factor ** 2))
        return x.permute(0, 2, 1, 3).contiguous()

    def extract_feature(self, pixel_values: torch.Tensor) -> torch.Tensor:
        v = self.vision_model(pixel_values=pixel_values).last_hidden_state
        s = int(v.shape[1] ** 0.5)
        v = self.pixel_shuffle(v.reshape(v.shape[0], s, s, -1), self.downsample_ratio)
        return self.mlp1(v.reshape(v.shape[0], -1, v.shape[-1]))

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings with every image-context token replaced by the tiles' features, in order."""
        emb = self.embed(input_ids)
        vit = self.extract_feature(pixel_values)
        flat = emb.reshape(-1, emb.shape[-1]).clone()
        sel = input_ids.reshape(-1) == self.img_context_token_id
        flat[sel] = vit.reshape(-1, vit.shape[-1]).to(flat.dtype)
        return flat.view_as(emb)
