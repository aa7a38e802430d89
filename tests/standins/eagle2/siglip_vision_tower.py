"""Stand-in for ``siglip_vision_tower.py``: ``SiglipVisionTower`` (``name == 'siglip'``).

Contract used by the channel-concatenation tower: attributes ``name``,
``input_image_size``, property ``hidden_size``; ``forward(images)`` returns
patch tokens ``(batch, (input_image_size / patch) ** 2, hidden_size)``.  The real
tower wraps a SigLIP ViT; here one strided convolution and a linear layer.
"""

from __future__ import annotations

import torch
from torch import nn


class SiglipVisionTower(nn.Module):
    def __init__(self, vision_tower: str, args, delay_load: bool = False, raw_config=None) -> None:
        super().__init__()
        self.name = "siglip"
        self.vision_tower_name = vision_tower
        self.input_image_size = args.input_image_size
        self._hidden = args.siglip_hidden_size
        self.patch = args.siglip_patch_size
        self.vision_tower = nn.Sequential(nn.Conv2d(3, self._hidden, self.patch, self.patch))
        self.head = nn.Linear(self._hidden, self._hidden)

    @property
    def hidden_size(self) -> int:
        return self._hidden

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.vision_tower(images).flatten(2).transpose(1, 2)
        return self.head(tokens)
