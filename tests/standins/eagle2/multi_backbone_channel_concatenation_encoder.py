"""Stand-in for ``multi_backbone_channel_concatenation_encoder.py``.

``MultiBackboneChannelConcatenationVisionTower(vision_tower, args, grid_size, convnext_img_size, ...)``:

* ``vision_towers``: an ``nn.ModuleList`` built in the order of the ``;``-joined
  names (``palisiglip`` -> SigLIP at 448 in the real code, ``convnext-1024`` ->
  ConvNeXt at ``convnext_img_size``);
* ``forward(x)``: ``x`` (square tiles) is resized per tower (bilinear,
  ``align_corners=True``) when its side differs from the tower's
  ``input_image_size``, then

  - layout ``None`` / ``"all_tiling"``: a ``(b, n, c)`` output with
    ``n == grid_size ** 2`` is kept as is; any other is laid out as a square
    map and interpolated (bilinear) to ``grid_size`` x ``grid_size``; the
    towers' tokens are concatenated on channels -> one tensor;
  - layout ``"convnext_512_siglip_448"``: no interpolation, no concatenation:
    a dict ``{tower.name: output}``;

* ``hidden_size``: the channel sum, or in the second layout a dict name -> channels.
"""

from __future__ import annotations

from copy import deepcopy

import torch
import torch.nn.functional as F
from torch import nn

LAYOUTS = (None, "all_tiling", "seq_concat", "feat_concat", "convnext_512_siglip_448")


class MultiBackboneChannelConcatenationVisionTower(nn.Module):
    def __init__(self, vision_tower: str, args, grid_size: int = 32, convnext_img_size: int = 1024,
                 normalize_type=None, raw_config=None) -> None:
        super().__init__()
        if args.moe_version_type not in LAYOUTS:
            raise ValueError(f"Unknown moe_version_type: {args.moe_version_type}")
        self.grid_size = grid_size
        self.num_tokens = grid_size ** 2
        self.moe_version_type = args.moe_version_type
        self.convnext_img_size = convnext_img_size
        self.vision_towers = nn.ModuleList()
        for name in vision_tower.split(";"):
            if name == "convnext-1024":
                from .convnext_encoder import ConvNextVisionTower

                a = deepcopy(args)
                a.input_image_size = convnext_img_size
                self.vision_towers.append(ConvNextVisionTower(args.vision_tower_convnext_path, a,
                                                              normalize_type=normalize_type))
            elif name == "palisiglip":
                from .siglip_vision_tower import SiglipVisionTower

                a = deepcopy(args)
                a.input_image_size = args.siglip_img_size
                self.vision_towers.append(SiglipVisionTower(args.vision_tower_siglip_path, a, raw_config=raw_config))
            else:
                raise ValueError(f"stand-in knows the towers palisiglip and convnext-1024, not {name!r}")

    def _resized(self, x: torch.Tensor, size: int) -> torch.Tensor:
        if size == x.shape[2]:
            return x
        return F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=True).to(dtype=x.dtype)

    def forward(self, x: torch.Tensor):
        if x.shape[2] != x.shape[3]:
            raise ValueError(f"tiles must be square, got {tuple(x.shape[2:])}")
        if self.moe_version_type in (None, "all_tiling"):
            features = []
            for tower in self.vision_towers:
                f = tower(self._resized(x, tower.input_image_size))
                if f.dim() == 3:
                    b, n, c = f.shape
                    if n == self.num_tokens:
                        features.append(f)
                        continue
                    side = int(n ** 0.5)
                    f = f.transpose(1, 2).reshape(b, c, side, side)
                if f.shape[-1] != self.grid_size:
                    f = F.interpolate(f.float(), size=(self.grid_size, self.grid_size), mode="bilinear",
                                      align_corners=True).to(dtype=x.dtype)
                features.append(f.flatten(2, 3).transpose(1, 2))
            return torch.cat(features, dim=-1)
        if self.moe_version_type == "convnext_512_siglip_448":
            return {tower.name: tower(self._resized(x, tower.input_image_size)) for tower in self.vision_towers}
        raise NotImplementedError(f"stand-in: moe_version_type {self.moe_version_type!r}")

    @property
    def hidden_size(self):
        if self.moe_version_type == "convnext_512_siglip_448":
            return {t.name: t.hidden_size for t in self.vision_towers}
        return sum(t.hidden_size for t in self.vision_towers)
