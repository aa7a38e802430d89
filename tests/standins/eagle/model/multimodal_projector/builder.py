"""Stand-in of ``eagle/model/multimodal_projector/builder.py``: ``build_vision_projector``.

Same contract: ``mm_projector_type`` ``linear`` -> ``nn.Linear(mm_hidden_size,
hidden_size)``; ``mlp<N>x_gelu`` -> ``nn.Sequential(Linear(mm_hidden_size,
hidden_size), [GELU, Linear(hidden_size, hidden_size)] * (N - 1))``;
``identity`` -> ``IdentityMap``.  Eagle-X4/X5 use ``mlp2x_gelu``, whose
first Linear reads the channel concatenation of all towers.
"""

from __future__ import annotations

import re

import torch.nn as nn


class IdentityMap(nn.Module):
    def forward(self, x, *args, **kwargs):
        return x

    @property
    def config(self):
        return {"mm_projector_type": "identity"}


def build_vision_projector(config, delay_load=False, fpn_input_dim=(), **kwargs):
    kind = getattr(config, "mm_projector_type", "linear")
    if kind == "linear":
        return nn.Linear(config.mm_hidden_size, config.hidden_size)
    match = re.match(r"^mlp(\d+)x_gelu$", kind)
    if match:
        layers: list[nn.Module] = [nn.Linear(config.mm_hidden_size, config.hidden_size)]
        for _ in range(int(match.group(1)) - 1):
            layers += [nn.GELU(), nn.Linear(config.hidden_size, config.hidden_size)]
        return nn.Sequential(*layers)
    if kind == "identity":
        return IdentityMap()
    raise ValueError(f"Unknown projector type: {kind}")
