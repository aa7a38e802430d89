"""Stand-in of ``eagle/model/multimodal_encoder/builder.py``: ``build_vision_tower``.

As upstream: a ``;``-separated ``mm_vision_tower`` builds a
``MultiBackboneChannelConcatenationVisionTower``.  The single-CLIP branch
(``openai/...``) is not mirrored.
"""

from __future__ import annotations

from .multi_backbone_channel_concatenation_encoder import MultiBackboneChannelConcatenationVisionTower


def build_vision_tower(vision_tower_cfg, **kwargs):
    vision_tower = getattr(vision_tower_cfg, "mm_vision_tower", getattr(vision_tower_cfg, "vision_tower", None))
    if vision_tower and ";" in vision_tower:
        return MultiBackboneChannelConcatenationVisionTower(vision_tower, args=vision_tower_cfg)
    raise ValueError(f"Unknown vision tower: {vision_tower}")
