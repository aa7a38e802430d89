"""Mirrors ``deepseek_vl/models/clip_encoder.py``: ``CLIPVisionTower`` and ``HybridVisionTower``.

Kept from upstream (what vlmeval-encred relies on):

* ``HybridVisionTower(high_res_cfg, low_res_cfg, freeze_high, freeze_low, concat_type)``
  with attributes ``vision_tower_high``, ``vision_tower_low`` (``CLIPVisionTower``),
  ``low_res_size``, ``concat_type``, ``high_layer_norm``, ``low_layer_norm``, ``resize``.
* ``forward(images)``: the high tower sees the full image and returns
  ``(B, C, h, w)``, flattened to ``(B, h*w, C)``; the low tower sees
  ``resize(images)`` and returns ``(B, T, C)``; the result is combined by
  ``concat_type`` (the 7B chat model uses ``"tuple"``: ``(high, low)``).
* ``CLIPVisionTower`` keeps ``model_name`` (``sam_*`` / ``siglip_*``),
  ``vision_tower``, ``image_norm`` and ``select_layer``.

Replaced: the SAM-B and SigLIP-L backbones are tiny convolutional stand-ins
with the same output layouts (upstream builds them in ``sam.py`` and
``siglip_vit.py``).  Like upstream SAM, the stand-in resamples its feature
map to a fixed grid before downsampling, so its token count does not follow
from the image size alone.
"""

from __future__ import annotations

from typing import Any

import torch
import torchvision.transforms
from torch import nn
from torch.nn import functional as F


class _TinySam(nn.Module):
    """(B, 3, H, W) -> (B, output_dim, g, g): patchify, one conv block, resample, 2 stride-2 convs."""

    def __init__(self, image_size: int, output_dim: int, width: int = 16, patch: int = 8, grid: int = 4) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, width, kernel_size=patch, stride=patch)
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.GELU())
        self.neck = nn.Conv2d(width, width, 1, bias=False)
        self.resample = 4 * grid
        self.downsamples = nn.Sequential(nn.Conv2d(width, output_dim // 2, 3, stride=2, padding=1, bias=False),
                                         nn.Conv2d(output_dim // 2, output_dim, 3, stride=2, padding=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.neck(self.block(self.patch_embed(x)))
        x = F.interpolate(x, size=(self.resample, self.resample), mode="bilinear", align_corners=False)
        return self.downsamples(x)


class _TinySiglip(nn.Module):
    """(B, 3, H, W) -> (B, (H/patch)^2, output_dim): patch embedding, one MLP block, LayerNorm."""

    def __init__(self, image_size: int, output_dim: int, patch: int = 8) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, output_dim, kernel_size=patch, stride=patch)
        self.pos_embed = nn.Parameter(torch.randn(1, (image_size // patch) ** 2, output_dim) * 0.02)
        self.mlp = nn.Sequential(nn.Linear(output_dim, 2 * output_dim), nn.GELU(), nn.Linear(2 * output_dim, output_dim))
        self.norm = nn.LayerNorm(output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        return self.norm(x + self.mlp(x))


class CLIPVisionTower(nn.Module):
    def __init__(self, model_name: str = "siglip_large_patch16_384", image_size: int = 336,
                 select_feature: str = "patch", select_layer: int = -2, select_layers: list | None = None,
                 ckpt_path: str = "", pixel_mean: list[float] | None = None, pixel_std: list[float] | None = None,
                 **kwargs: Any) -> None:
        super().__init__()
        self.model_name = model_name
        self.select_feature = select_feature
        self.select_layer = select_layer
        self.select_layers = select_layers
        output_dim = kwargs.get("output_dim", 1024)
        if model_name.startswith("sam"):
            self.vision_tower = _TinySam(image_size, output_dim)
        elif model_name.startswith("siglip"):
            self.select_feature = "same"
            self.vision_tower = _TinySiglip(image_size, output_dim)
        else:
            raise ValueError(f"stand-in CLIPVisionTower: unsupported model_name {model_name!r}")
        self.forward_kwargs: dict[str, Any] = {}
        self.image_norm = (torchvision.transforms.Normalize(mean=pixel_mean, std=pixel_std)
                           if pixel_mean is not None and pixel_std is not None else None)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.image_norm is not None:
            images = self.image_norm(images)
        return self.vision_tower(images, **self.forward_kwargs)


class HybridVisionTower(nn.Module):
    def __init__(self, high_res_cfg: dict, low_res_cfg: dict, freeze_high: bool = False, freeze_low: bool = False,
                 concat_type: str = "tuple", **ignore_kwargs: Any) -> None:
        super().__init__()
        self.vision_tower_high = CLIPVisionTower(**high_res_cfg)
        self.vision_tower_low = CLIPVisionTower(**low_res_cfg)
        self.low_res_size = low_res_cfg["image_size"]
        self.concat_type = concat_type
        self.high_layer_norm = nn.LayerNorm(high_res_cfg.get("output_dim", 1024))
        self.low_layer_norm = nn.LayerNorm(low_res_cfg.get("output_dim", 1024))
        self.resize = torchvision.transforms.Resize(self.low_res_size, antialias=True)

    def forward(self, images: torch.Tensor):
        high_images = images
        low_images = self.resize(images)
        high_res = self.vision_tower_high(high_images)
        high_res = high_res.flatten(2).transpose(1, 2)  # b c h w -> b (h w) c
        low_res = self.vision_tower_low(low_images)
        if self.concat_type == "feature":
            return torch.cat([high_res, low_res], dim=-1)
        if self.concat_type == "sequence":
            return torch.cat([high_res, low_res], dim=1)
        if self.concat_type == "add":
            return high_res + low_res
        if self.concat_type == "tuple":
            return (high_res, low_res)
        raise ValueError("Currently only support `feature`, `sequence`, `add` and `tuple` concat type.")
