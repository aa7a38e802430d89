"""Stand-in of ``eagle/model/multimodal_encoder/multi_backbone_channel_concatenation_encoder.py``.

``MultiBackboneChannelConcatenationVisionTower`` mirrors upstream's contract
exactly, because it is the fusion point the masking adapter hooks:

* ``__init__(vision_tower, args, grid_size=32)``: ``grid_size``,
  ``num_tokens = grid_size ** 2``, ``input_image_size = 1024`` (hard-coded
  upstream), and ``load_vision_towers`` builds ``self.vision_towers``, an
  ``nn.ModuleList`` in the order of the ``;``-separated names
  (``det-1024``, ``convnext-1024``, ``sam-1024``, ``pix2struct-1024``,
  ``clip-448``; unknown names are silently skipped, as upstream), each with
  its own ``deepcopy`` of ``args``; ``image_processor`` is taken from the
  ConvNeXt tower unconditionally (so, as upstream, a list without
  ``convnext-1024`` fails).
* ``forward(x)``: each tower gets ``x`` resized to its ``input_image_size``;
  a ``(B, num_tokens, C)`` output is used as is, any other ``(B, N, C)`` or
  ``(B, C, H, W)`` output is brought to ``grid_size x grid_size`` by bilinear
  interpolation and flattened; the results are concatenated along channels:
  ``(B, num_tokens, sum C_i)``.
* ``hidden_size`` is the sum of the towers' ``hidden_size``; ``num_patches``
  is ``num_tokens``.
"""

from __future__ import annotations

from copy import deepcopy

import torch
import torch.nn as nn
import torch.nn.functional as F

from .convnext_encoder import ConvNextVisionTower
from .hr_clip_encoder import HRCLIPVisionTower
from .pix2struct_encoder import Pix2StructLargeVisionTower
from .sam_encoder import SAMVisionTower
from .vision_models.eva_vit import EVAVITVisionTower


class MultiBackboneChannelConcatenationVisionTower(nn.Module):
    def __init__(self, vision_tower, args, grid_size=32):
        super().__init__()
        self.is_loaded = False
        self.grid_size = grid_size
        self.num_tokens = self.grid_size ** 2
        self.input_image_size = 1024
        self.load_vision_towers(vision_tower.split(";"), args)

    def load_vision_towers(self, vision_tower_name_list, args):
        self.vision_towers = nn.ModuleList()
        for name in vision_tower_name_list:
            tower_args = deepcopy(args)
            tower_args.freeze_vision = False
            if name == "det-1024":
                tower_args.input_image_size = 1024
                tower_args.vision_tower_pretrained_from = "checkpoints/pretrained_models/eva02_L_coco_det_sys_o365.pth"
                self.vision_towers.append(EVAVITVisionTower("eva02-l-16", tower_args))
            elif name == "convnext-1024":
                tower_args.input_image_size = 1024
                convnext_vision_tower = ConvNextVisionTower("convnext_xxlarge.clip_laion2b_soup", tower_args)
                self.vision_towers.append(convnext_vision_tower)
            elif name == "sam-1024":
                tower_args.input_image_size = 1024
                tower_args.add_pixel_shuffle = True
                self.vision_towers.append(SAMVisionTower("SAM-L", tower_args))
            elif name == "pix2struct-1024":
                tower_args.input_image_size = 1024
                tower_args.do_resize = True
                tower_args.de_normalize = True
                self.vision_towers.append(Pix2StructLargeVisionTower("pix2struct-large", tower_args))
            elif name == "clip-448":
                tower_args.input_image_size = 336
                self.vision_towers.append(HRCLIPVisionTower("openai/clip-vit-large-patch14-336", tower_args))
        # As upstream: the ConvNeXt tower's processor serves the whole mixture.
        self.image_processor = convnext_vision_tower.image_processor
        self.is_loaded = True

    def load_model(self):
        assert self.is_loaded, "All the vision encoders should be loaded during initialization!"

    def forward(self, x):
        features = []
        for tower in self.vision_towers:
            if tower.input_image_size != self.input_image_size:
                side = tower.input_image_size
                tower_in = F.interpolate(x.float(), size=(side, side), mode="bilinear",
                                         align_corners=True).to(dtype=x.dtype)
            else:
                tower_in = x
            feature = tower(tower_in)
            if feature.dim() == 3:
                b, n, c = feature.shape
                if n == self.num_tokens:
                    features.append(feature)
                    continue
                h = w = int(n ** 0.5)
                feature = feature.transpose(1, 2).reshape(b, c, h, w)
            else:
                b, c, h, w = feature.shape
            if w != self.grid_size:
                feature = F.interpolate(feature.float(), size=(self.grid_size, self.grid_size),
                                        mode="bilinear", align_corners=True).to(dtype=x.dtype)
            features.append(feature.flatten(2, 3).transpose(1, 2))
        return torch.cat(features, dim=-1)

    @property
    def hidden_size(self):
        return sum(t.hidden_size for t in self.vision_towers)

    @property
    def num_patches(self):
        return self.num_tokens
