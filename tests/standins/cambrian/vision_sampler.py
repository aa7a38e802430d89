"""Tiny stand-in for ``cambrian/model/vision_sampler.py`` (cambrian-mllm/cambrian).

Mirrors the module structure the masking adapter relies on, written anew:
``MultiKVCrossAttention`` (one query projection, a ``k_proj_i``/``v_proj_i``
pair per tower, keys of all towers concatenated, one boolean attention mask
per tower concatenated the same way, ``o_proj`` without bias),
``VisionCrossAttentionLayer`` (global context through ``proj_context``,
concatenated to the queries, ``proj_in``, learned ``pos_embed_i`` added to
towers whose window is larger than one token, residual, ``norm``,
``proj_out``) and ``VisionTokenSampler`` (a stack of such layers).
The number of heads is a parameter here (16 upstream) so the model can be tiny.
"""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, d_in: int, d_hidden: int, d_out: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(d_in, d_hidden, bias=False)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(d_hidden, d_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class MultiKVCrossAttention(nn.Module):
    """Queries attend jointly to the keys of every tower."""

    def __init__(self, q_dim: int, kv_dim_list: list[int], hidden_dim: int, num_heads: int) -> None:
        super().__init__()
        self.hidden_dim, self.num_heads = hidden_dim, num_heads
        self.head_dim = hidden_dim // num_heads
        self.num_of_kvs = len(kv_dim_list)
        self.q_proj = nn.Sequential(nn.LayerNorm(q_dim), nn.Linear(q_dim, hidden_dim, bias=False))
        for i, kv_dim in enumerate(kv_dim_list):
            setattr(self, f"k_proj_{i}", nn.Sequential(nn.LayerNorm(kv_dim), nn.Linear(kv_dim, hidden_dim, bias=False)))
            setattr(self, f"v_proj_{i}", nn.Sequential(nn.LayerNorm(kv_dim), nn.Linear(kv_dim, hidden_dim, bias=False)))
        self.o_proj = nn.Linear(hidden_dim, q_dim, bias=False)

    def forward(self, queries: torch.Tensor, *latents_and_masks: torch.Tensor) -> torch.Tensor:
        latents = latents_and_masks[: self.num_of_kvs]
        masks = latents_and_masks[self.num_of_kvs:]
        b, q_len, _ = queries.shape
        q = self.q_proj(queries)
        k = torch.cat([getattr(self, f"k_proj_{i}")(x) for i, x in enumerate(latents)], dim=1)
        v = torch.cat([getattr(self, f"v_proj_{i}")(x) for i, x in enumerate(latents)], dim=1)
        kv_len = k.shape[1]

        def heads(t: torch.Tensor, n: int) -> torch.Tensor:
            return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

        mask = torch.cat(masks, dim=-1)
        if mask.shape != (b, 1, q_len, kv_len):
            raise ValueError(f"attention mask shape {tuple(mask.shape)} != {(b, 1, q_len, kv_len)}")
        out = torch.nn.functional.scaled_dot_product_attention(heads(q, q_len), heads(k, kv_len),
                                                               heads(v, kv_len), attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, q_len, self.hidden_dim))


class VisionCrossAttentionLayer(nn.Module):
    def __init__(self, q_dim: int, context_dim: int, kv_dim_list: list[int], kv_size_list: list[int],
                 hidden_dim: int, num_heads: int = 16) -> None:
        super().__init__()
        self.num_of_kvs = len(kv_dim_list)
        self.proj_context = nn.Linear(context_dim, hidden_dim, bias=False)
        self.proj_in = nn.Linear(q_dim + hidden_dim, hidden_dim, bias=False)
        self.proj_out = MLP(hidden_dim, hidden_dim, q_dim)
        self.norm = nn.LayerNorm(hidden_dim)
        self.cross_attn = MultiKVCrossAttention(hidden_dim, kv_dim_list, hidden_dim, num_heads)
        self.kv_size_list = kv_size_list
        for i, size in enumerate(kv_size_list):
            if size > 1:
                setattr(self, f"pos_embed_{i}", nn.Parameter(torch.randn(size * size, hidden_dim)))

    def forward(self, queries: torch.Tensor, context: torch.Tensor, *latents_and_masks: torch.Tensor) -> torch.Tensor:
        residual = queries
        x = self.proj_in(torch.cat([queries, self.proj_context(context)], -1))
        latents = latents_and_masks[: self.num_of_kvs]
        masks = [m.view(m.shape[0], 1, 1, -1).expand(-1, -1, x.shape[1], -1)
                 for m in latents_and_masks[self.num_of_kvs:]]
        with_pos = [lat + getattr(self, f"pos_embed_{i}")[None].to(lat.dtype) if lat.shape[1] > 1 else lat
                    for i, lat in enumerate(latents)]
        x = x + self.cross_attn(x, *with_pos, *masks)
        return self.proj_out(self.norm(x)) + residual


class VisionTokenSampler(nn.Module):
    def __init__(self, q_dim: int, context_dim: int, kv_dim_list: list[int], kv_size_list: list[int],
                 vision_hidden_size: int, num_of_layers: int = 1, num_heads: int = 16) -> None:
        super().__init__()
        self.layers = nn.ModuleList([
            VisionCrossAttentionLayer(q_dim, context_dim, kv_dim_list, kv_size_list, vision_hidden_size, num_heads)
            for _ in range(num_of_layers)])

    def forward(self, queries: torch.Tensor, context: torch.Tensor, *latents_and_masks: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            queries = layer(queries, context, *latents_and_masks)
        return queries
