"""Stand-in for ``multi_backbone_channel_concatentation_model.py`` (the real file name's spelling).

``MultiBackboneChannelConcatenationVisionModel(config, raw_config)`` holds the tower as
``.vision_model``; ``forward`` returns an object whose ``last_hidden_state`` is the
tower's output -- a tensor, or in the ``convnext_512_siglip_448`` layout the
tower's dict.  (The real file wraps it in transformers' ``BaseModelOutputWithPooling``,
which keeps a dict there under transformers 4.37-4.39 but not under 5.x; the
stand-in uses a plain namespace so that it runs under both.)
"""

from __future__ import annotations

from types import SimpleNamespace

from torch import nn

from .multi_backbone_channel_concatenation_encoder import MultiBackboneChannelConcatenationVisionTower


class MultiBackboneChannelConcatenationVisionModel(nn.Module):
    main_input_name = "pixel_values"

    def __init__(self, config, raw_config=None) -> None:
        super().__init__()
        self.vision_model = MultiBackboneChannelConcatenationVisionTower(
            vision_tower=config.vision_tower, args=config, grid_size=config.grid_size,
            convnext_img_size=config.convnext_img_size, normalize_type=config.normalize_type,
            raw_config=raw_config)

    def forward(self, pixel_values, return_dict: bool = True, output_hidden_states: bool = False):
        if return_dict is not True or output_hidden_states:
            raise ValueError("only return_dict=True, output_hidden_states=False are supported")
        return SimpleNamespace(pooler_output=None, last_hidden_state=self.vision_model(pixel_values))

    @property
    def hidden_size(self):
        return self.vision_model.hidden_size
