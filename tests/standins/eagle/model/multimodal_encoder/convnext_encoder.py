"""Stand-in of ``eagle/model/multimodal_encoder/convnext_encoder.py``: ``ConvNextVisionTower``.

Contract mirrored: ``load_model`` builds ``self.image_processor`` (a
``CLIPImageProcessor`` resized to ``input_image_size``; the multi-backbone
tower takes *its* processor for the whole model), sets ``hidden_size`` on the
backbone with ``setattr`` as upstream does for convnext_xxlarge (3072 there,
40 here), ``forward_features`` returns one ``(B, N, C)`` tensor per stage and
``forward`` the last: at 1024 px that is 32 x 32 = 1024 tokens, which the
fusion appends without interpolation.  The tiny backbone is a stride-8 stem
and two stride-2 stages.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from transformers import CLIPImageProcessor

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


class _TinyConvNeXt(nn.Module):
    def __init__(self, widths=(16, 32, 40)):
        super().__init__()
        self.stem = nn.Conv2d(3, widths[0], kernel_size=8, stride=8)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.GroupNorm(1, a), nn.Conv2d(a, b, kernel_size=2, stride=2), nn.GELU())
            for a, b in zip(widths[:-1], widths[1:]))


def convnext_xxlarge(name: str) -> _TinyConvNeXt:
    """Upstream builds timm's convnext_xxlarge; the stand-in a tiny three-stage net."""
    return _TinyConvNeXt()


class ConvNextVisionTower(nn.Module):
    def __init__(self, vision_tower, args, delay_load=False):
        super().__init__()
        self.is_loaded = False
        self.freeze_vision = args.freeze_vision
        self.input_image_size = args.input_image_size
        self.vision_tower_name = vision_tower
        self.select_layer = -1
        self.select_feature = getattr(args, "mm_vision_select_feature", "patch")
        self.load_model()

    def load_model(self):
        self.image_processor = CLIPImageProcessor(
            do_resize=True, do_center_crop=True, do_normalize=True, resample=3,
            image_mean=CLIP_MEAN, image_std=CLIP_STD,
            size={"shortest_edge": self.input_image_size},
            crop_size={"height": self.input_image_size, "width": self.input_image_size})
        if "xxlarge" not in self.vision_tower_name:
            raise NotImplementedError(self.vision_tower_name)
        self.vision_tower = convnext_xxlarge(self.vision_tower_name)
        setattr(self.vision_tower, "hidden_size", self.vision_tower.stages[-1][1].out_channels)
        if self.freeze_vision:
            self.vision_tower.requires_grad_(False)
        self.is_loaded = True

    def forward_features(self, x):
        x = self.vision_tower.stem(x)
        outs = []
        for stage in self.vision_tower.stages:
            x = stage(x)
            b, c = x.shape[:2]
            outs.append(x.reshape(b, c, -1).transpose(1, 2))
        return outs

    def feature_select(self, image_forward_outs):
        return image_forward_outs[self.select_layer]

    def forward(self, images):
        with torch.set_grad_enabled(not self.freeze_vision and torch.is_grad_enabled()):
            return self.feature_select(self.forward_features(images.to(device=self.device, dtype=self.dtype)))

    @property
    def dtype(self):
        return next(self.vision_tower.parameters()).dtype

    @property
    def device(self):
        return next(self.vision_tower.parameters()).device

    @property
    def hidden_size(self):
        return self.vision_tower.hidden_size
