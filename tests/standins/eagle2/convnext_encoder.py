"""Stand-in for ``convnext_encoder.py``: ``ConvNextVisionTower`` (``name == 'convnext'``).

Contract: ``name``, ``input_image_size`` (512 in the ``convnext_512_siglip_448``
layout, 1024 otherwise), ``hidden_size`` (the last stage's channels), and
``forward(images)`` returning the last stage flattened to tokens,
``(batch, (input_image_size / 32) ** 2, hidden_size)`` -- a total stride of 32
like ConvNeXt-XXL (stem 4, then three downsampling stages).  Here the total
stride is 16 (stem 4, one stage of stride 4) so that tiny inputs stay tiny.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvNextVisionTower(nn.Module):
    STRIDE = 16

    def __init__(self, vision_tower: str, args, delay_load: bool = False, normalize_type=None) -> None:
        super().__init__()
        self.name = "convnext"
        self.vision_tower_name = vision_tower
        self.input_image_size = args.input_image_size
        hidden = args.convnext_hidden_size
        self.vision_tower = nn.Module()
        self.vision_tower.stem = nn.Conv2d(3, hidden // 2, 4, 4)
        self.vision_tower.stages = nn.ModuleList([nn.Sequential(nn.GELU(), nn.Conv2d(hidden // 2, hidden, 4, 4))])
        self.vision_tower.hidden_size = hidden

    @property
    def hidden_size(self) -> int:
        return self.vision_tower.hidden_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.vision_tower.stem(images)
        for stage in self.vision_tower.stages:
            x = stage(x)
        b, c = x.shape[:2]
        return x.view(b, c, -1).transpose(1, 2)
