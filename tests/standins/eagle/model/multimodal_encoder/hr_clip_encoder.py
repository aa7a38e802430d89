"""Stand-in of ``eagle/model/multimodal_encoder/hr_clip_encoder.py``: ``HRCLIPVisionTower``.

Contract mirrored: built with ``args.input_image_size`` (336 for
``clip-448``, so the fusion resizes its 1024 px input), ``forward(x)`` returns
``(B, N, C)`` patch tokens without the class token (24 x 24 = 576 tokens at
336 px / patch 14, which the fusion interpolates to its 32 x 32 grid),
``hidden_size`` is ``config.hidden_size``.  Upstream loads
openai/clip-vit-large-patch14-336 (C = 1024); the stand-in builds a one-block
ViT of width 24 from a ``CLIPVisionConfig`` (weights come from the Eagle
checkpoint), with the position embedding resampled to the input grid as
upstream's patched ``forward_embeddings`` does.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import CLIPImageProcessor, CLIPVisionConfig

TINY_CLIP = dict(hidden_size=24, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                 image_size=336, patch_size=14)


class _TinyViT(nn.Module):
    """Patch embedding + class token + position embedding + pre-LN + one MLP block."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.config = config
        c = config.hidden_size
        self.patch_embedding = nn.Conv2d(3, c, config.patch_size, config.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(c))
        side = config.image_size // config.patch_size
        self.position_embedding = nn.Parameter(torch.zeros(1, side * side + 1, c))
        self.pre_layrnorm = nn.LayerNorm(c)
        self.block = nn.Sequential(nn.LayerNorm(c), nn.Linear(c, config.intermediate_size), nn.GELU(),
                                   nn.Linear(config.intermediate_size, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(x.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], dim=1)
        pos = self.position_embedding
        if pos.shape[1] != x.shape[1]:  # resample the grid part, keep the class slot
            old, new = int(math.sqrt(pos.shape[1] - 1)), int(math.sqrt(x.shape[1] - 1))
            grid = pos[:, 1:].float().reshape(1, old, old, -1).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(new, new), mode="bicubic").permute(0, 2, 3, 1).flatten(1, 2)
            pos = torch.cat([pos[:, :1], grid.to(pos.dtype)], dim=1)
        x = self.pre_layrnorm((x + pos)[:, 1:])
        return x + self.block(x)


class HRCLIPVisionTower(nn.Module):
    def __init__(self, vision_tower, args, delay_load=False):
        super().__init__()
        self.is_loaded = False
        self.freeze_vision = args.freeze_vision
        self.input_image_size = args.input_image_size
        self.vision_tower_name = vision_tower
        self.select_layer = getattr(args, "mm_vision_select_layer", -2)
        self.select_feature = getattr(args, "mm_vision_select_feature", "patch")
        self.cfg_only = CLIPVisionConfig(**TINY_CLIP)
        if not delay_load:
            self.load_model()

    def load_model(self):
        self.image_processor = CLIPImageProcessor(
            size={"shortest_edge": self.input_image_size},
            crop_size={"height": self.input_image_size, "width": self.input_image_size})
        self.vision_tower = _TinyViT(self.cfg_only)
        if self.freeze_vision:
            self.vision_tower.requires_grad_(False)
        self.is_loaded = True

    def forward(self, x):
        return self.vision_tower(x.to(device=self.device, dtype=self.dtype))

    @property
    def dtype(self):
        return next(self.vision_tower.parameters()).dtype

    @property
    def device(self):
        return next(self.vision_tower.parameters()).device

    @property
    def config(self):
        return self.vision_tower.config if self.is_loaded else self.cfg_only

    @property
    def hidden_size(self):
        return self.config.hidden_size

    @property
    def num_patches(self):
        return (self.config.image_size // self.config.patch_size) ** 2
