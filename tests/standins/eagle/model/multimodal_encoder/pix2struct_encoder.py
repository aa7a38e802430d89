"""Stand-in of ``eagle/model/multimodal_encoder/pix2struct_encoder.py``: ``Pix2StructLargeVisionTower``.

Contract mirrored: with ``de_normalize`` the tower undoes the CLIP
normalisation of its input and applies its own per-image normalisation
(upstream: the Pix2Struct processor), runs the encoder, keeps the first
2025 tokens as a 45 x 45 grid and, with ``do_resize``, interpolates it to
32 x 32 itself, returning ``(B, C, 32, 32)``; ``hidden_size`` is hard-coded
(1536 upstream, 20 here).  The tiny encoder is one stride-22 patch conv
(46 x 46 patches at 1024 px, cropped to 45 x 45 as upstream crops).
Mean/std are kept as Python lists (upstream: plain tensors built in
``load_model``) so construction under a meta-device context is harmless.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import CLIPImageProcessor

from .convnext_encoder import CLIP_MEAN, CLIP_STD

HIDDEN = 20


class _TinyPix2StructEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(hidden_size=HIDDEN, num_patches=2025)
        self.patch_projection = nn.Conv2d(3, HIDDEN, kernel_size=22, stride=22)
        self.layernorm = nn.LayerNorm(HIDDEN)

    def forward(self, flattened_patches):
        x = self.patch_projection(flattened_patches).flatten(2).transpose(1, 2)
        return SimpleNamespace(last_hidden_state=self.layernorm(x))


class Pix2StructLargeVisionTower(nn.Module):
    def __init__(self, vision_tower, args, delay_load=False):
        super().__init__()
        self.is_loaded = False
        self.vision_tower_name = vision_tower
        self.do_resize = args.do_resize
        self.de_normalize = args.de_normalize
        self.select_layer = getattr(args, "mm_vision_select_layer", -2)
        self.input_image_size = args.input_image_size
        self.select_feature = getattr(args, "mm_vision_select_feature", "patch")
        self.freeze_vision = args.freeze_vision
        self.args = args
        if not self.is_loaded:
            self.load_model()

    def load_model(self):
        if self.is_loaded:
            return
        self.vision_tower = _TinyPix2StructEncoder()
        self.image_processor = CLIPImageProcessor(
            image_mean=CLIP_MEAN, image_std=CLIP_STD, size={"shortest_edge": self.input_image_size},
            crop_size={"height": self.input_image_size, "width": self.input_image_size})
        self.image_mean = list(CLIP_MEAN)
        self.image_std = list(CLIP_STD)
        if self.freeze_vision:
            self.vision_tower.requires_grad_(False)
        self.is_loaded = True

    def _pix2struct_normalise(self, images):
        """Undo CLIP normalisation, then standardise each image (what the processor does)."""
        mean = torch.tensor(self.image_mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
        x = (images.float() * std + mean) * 255.0
        mu = x.mean(dim=(1, 2, 3), keepdim=True)
        sd = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1.0 / (x[0].numel() ** 0.5))
        return (x - mu) / sd

    def forward(self, images):
        x = self._pix2struct_normalise(images) if self.de_normalize else images
        feats = self.vision_tower(x.to(device=self.device, dtype=self.dtype)).last_hidden_state
        b, n, c = feats.shape
        feats = feats[:, :2025, :]
        if not self.do_resize:
            return feats
        grid = feats.transpose(1, 2).reshape(b, c, 45, 45)
        return F.interpolate(grid.float(), size=(32, 32), mode="bilinear", align_corners=True).to(grid.dtype)

    @property
    def dtype(self):
        return next(self.vision_tower.parameters()).dtype

    @property
    def device(self):
        return next(self.vision_tower.parameters()).device

    @property
    def config(self):
        return self.vision_tower.config

    @property
    def hidden_size(self):
        return HIDDEN
