"""Mirrors ``deepseek_vl/models/projector.py`` (``MlpProjector``) for the hybrid split type.

Contract: called with a tuple ``(high, low)`` of ``(B, T, input_dim)`` tensors, it
applies ``high_up_proj`` / ``low_up_proj`` (Linear with bias, to ``n_embed // 2``),
concatenates ``[high, low]`` on channels and runs ``layers`` (GELU, Linear) * (depth-1).
"""

from __future__ import annotations

import torch
from torch import nn


class MlpProjector(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.cfg = cfg
        kind = cfg["projector_type"]
        depth = cfg.get("depth", 1)
        if kind == "low_high_hybrid_split_mlp_gelu":
            self.high_up_proj = nn.Linear(cfg["input_dim"], cfg["n_embed"] // 2)
            self.low_up_proj = nn.Linear(cfg["input_dim"], cfg["n_embed"] // 2)
            first = []
        elif kind == "mlp_gelu":
            first = [nn.Linear(cfg["input_dim"], cfg["n_embed"])]
        else:
            raise ValueError(f"stand-in MlpProjector: unsupported projector_type {kind!r}")
        rest: list[nn.Module] = []
        for _ in range(1, depth):
            rest += [nn.GELU(), nn.Linear(cfg["n_embed"], cfg["n_embed"])]
        self.layers = nn.Sequential(*first, *rest)

    def forward(self, x_or_tuple):
        if isinstance(x_or_tuple, tuple):
            high, low = x_or_tuple
            x = torch.cat([self.high_up_proj(high), self.low_up_proj(low)], dim=-1)
        else:
            x = x_or_tuple
        return self.layers(x)
