"""Stand-in of ``eagle/model/multimodal_encoder/vision_models/eva_vit.py``: ``EVAVITVisionTower``.

Contract mirrored: built by ``build_eva_vit(args, model_name, image_size)``
which returns the backbone and a config dict; ``hidden_size`` reads
``config['hidden_dim']``; ``forward`` returns the backbone's ``(B, C, H, W)``
feature map (64 x 64 at 1024 px / patch 16), which the fusion interpolates to
its 32 x 32 grid.  ``load_model`` loads ``args.vision_tower_pretrained_from``
only if that file exists; the multi-backbone tower points it at a path that
does not exist at inference, so weights come from the Eagle checkpoint (as
upstream, minus its warning).
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn
from transformers import CLIPImageProcessor


class _TinyEvaViT(nn.Module):
    def __init__(self, hidden_dim: int, patch: int):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, hidden_dim, patch, patch)
        self.mix = nn.Conv2d(hidden_dim, hidden_dim, kernel_size=1)

    def forward(self, x):
        x = self.patch_embed(x)
        return x + self.mix(torch.nn.functional.gelu(x))


def build_eva_vit(args, model_name=None, image_size=224, window_attn=True):
    cfg = {"hidden_dim": 12, "patch_size": 16, "image_size": image_size,
           "num_patches": (image_size // 16) ** 2}
    return _TinyEvaViT(cfg["hidden_dim"], cfg["patch_size"]), cfg


class EVAVITVisionTower(nn.Module):
    def __init__(self, vision_tower, args, delay_load=False):
        super().__init__()
        self.is_loaded = False
        self.vision_tower_name = vision_tower
        self.select_layer = getattr(args, "mm_vision_select_layer", -2)
        self.select_feature = getattr(args, "mm_vision_select_feature", "patch")
        self.args = args
        self.vision_tower, cfg = build_eva_vit(args=args, model_name=vision_tower, image_size=args.input_image_size)
        self.input_image_size = args.input_image_size
        self.vision_tower.config = cfg
        self.freeze_vision = args.freeze_vision
        if not self.is_loaded:
            self.load_model()

    def load_model(self):
        if self.is_loaded:
            return
        size = self.args.input_image_size
        self.image_processor = CLIPImageProcessor(crop_size={"height": size, "width": size},
                                                  size={"shortest_edge": size})
        path = getattr(self.args, "vision_tower_pretrained_from", None)
        if path is not None and os.path.exists(path):
            self.vision_tower.load_state_dict(torch.load(path, map_location="cpu"), strict=False)
        if self.freeze_vision:
            self.vision_tower.requires_grad_(False)
        self.is_loaded = True

    def forward(self, images):
        return self.vision_tower(images.to(device=self.device, dtype=self.dtype))

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
        return self.config["hidden_dim"]

    @property
    def num_patches(self):
        return self.config["num_patches"]
