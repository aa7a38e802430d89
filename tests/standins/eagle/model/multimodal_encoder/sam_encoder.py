"""Stand-in of ``eagle/model/multimodal_encoder/sam_encoder.py``: ``SAMVisionTower``.

Contract mirrored: the SAM image encoder's ``last_hidden_state`` is
``(B, H, W, C)`` channels-last after a short neck (1x1 conv + channels-first
LayerNorm, ``ShortSamVisionNeck``); ``forward`` flattens it to tokens and,
with ``add_pixel_shuffle`` (set by the multi-backbone tower), folds 2 x 2
neighbours into channels with ``pixel_unshuffle``: at 1024 px / patch 16 a
64 x 64 map becomes ``(B, 4C, 32, 32)``, a 4-D output the fusion flattens.
``hidden_size`` is ``4 * neck channels`` with pixel shuffle (upstream
hard-codes 256 * 4; here 4 * 4).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn as nn

TINY_SAM = dict(hidden_size=8, output_channels=4, patch_size=16, image_size=1024)


class SamLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a (B, C, H, W) tensor."""

    def __init__(self, normalized_shape: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = (x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, keepdim=True, unbiased=False) + self.eps)
        return self.weight[:, None, None] * x.to(dtype) + self.bias[:, None, None]


class ShortSamVisionNeck(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.conv1 = nn.Conv2d(config.hidden_size, config.output_channels, kernel_size=1, bias=False)
        self.layer_norm1 = SamLayerNorm(config.output_channels)

    def forward(self, hidden_states):  # (B, H, W, C) -> (B, H, W, C_out)
        x = self.layer_norm1(self.conv1(hidden_states.permute(0, 3, 1, 2)))
        return x.permute(0, 2, 3, 1)


class _TinySamVisionEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.patch_embed = nn.Conv2d(3, config.hidden_size, config.patch_size, config.patch_size)
        self.neck = ShortSamVisionNeck(config)

    def forward(self, pixel_values):
        x = self.patch_embed(pixel_values).permute(0, 2, 3, 1)
        return SimpleNamespace(last_hidden_state=self.neck(x))


class SAMVisionTower(nn.Module):
    def __init__(self, vision_tower, args):
        super().__init__()
        self.args = args
        self.is_loaded = False
        self.vision_tower_name = vision_tower
        self.input_image_size = args.input_image_size
        self.pixel_shuffle = getattr(args, "add_pixel_shuffle", False)
        self.freeze = args.freeze_vision
        self.load_model()

    def load_model(self):
        if self.is_loaded:
            return
        self.sam_model_config = SimpleNamespace(**TINY_SAM,
                                                num_patches=(TINY_SAM["image_size"] // TINY_SAM["patch_size"]) ** 2)
        self.vision_tower = _TinySamVisionEncoder(self.sam_model_config)
        if self.freeze:
            self.vision_tower.requires_grad_(False)
        self.is_loaded = True

    def forward(self, images):
        feats = self.vision_tower(images.to(device=self.device, dtype=self.dtype)).last_hidden_state
        feats = feats.flatten(start_dim=1, end_dim=2)
        if self.pixel_shuffle:
            b, n, c = feats.shape
            side = int(n ** 0.5)
            feats = nn.functional.pixel_unshuffle(feats.transpose(1, 2).reshape(b, c, side, side), 2)
        return feats

    @property
    def dtype(self):
        return next(self.vision_tower.parameters()).dtype

    @property
    def device(self):
        return next(self.vision_tower.parameters()).device

    @property
    def config(self):
        return self.sam_model_config

    @property
    def hidden_size(self):
        c = self.sam_model_config.output_channels
        return 4 * c if self.pixel_shuffle else c
