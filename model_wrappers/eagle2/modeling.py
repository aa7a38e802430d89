"""Eagle2-9B: encoder masking, NVIDIA's tiling and sweep support for the SigLIP + ConvNeXt model.

Upstream (nvidia/Eagle2-9B remote code, ``trust_remote_code``): ``model.vision_model``
(``MultiBackboneChannelConcatenationVisionModel``) holds ``.vision_model``, a
``MultiBackboneChannelConcatenationVisionTower`` whose ``vision_towers`` ModuleList
follows ``config.vision_config.vision_tower`` (names joined by ``;``).  Each tile is
resized to every tower's ``input_image_size``.  What happens next depends on
``vision_config.moe_version_type`` -- NVIDIA's code knows two fusion layouts and
this adapter accepts both:

``None`` / ``"all_tiling"``
    every tower's tokens are brought to one ``grid_size`` x ``grid_size`` map
    (a ``(b, grid**2, c)`` output as is, others by bilinear interpolation) and
    concatenated on channels; ``extract_feature`` pixel-shuffles the result
    (0.5: 4 neighbouring tokens -> one token of 4x the channels) and applies
    ``mlp1`` = LayerNorm, Linear, GELU, Linear.
``"convnext_512_siglip_448"`` (the default of NVIDIA's Eagle2 vision config, named
after Eagle2-9B's towers)
    the tower returns ``{tower.name: tokens}``; only SigLIP (448 px, 32x32 tokens)
    is pixel-shuffled, then ``torch.cat([siglip, convnext], -1)`` with ConvNeXt's
    16x16 tokens at 512 px, and ``mlp1`` whose LayerNorm spans
    ``convnext + 4 * siglip`` channels.

Masking (mode ``zero``, both layouts): a masked tower's slot in ``vision_towers``
holds a :class:`ZeroTower` -- no weights, never runs the tower -- that returns
zeros of the tower's own output shape at the fusion point (``(tiles, grid**2, c)``
in ``all_tiling``; ``(tiles, grid**2, c_siglip)`` for SigLIP and
``(tiles, (grid/2)**2, c_convnext)`` for ConvNeXt in ``convnext_512_siglip_448``).
Upstream interpolation and pixel shuffle only move or average values, so the
zeros reach the concatenation as zeros: the result equals running the tower and
zeroing its output (the paper's zero-fill; checked in tests/test_eagle2.py).
Every tile and the thumbnail go through ``vision_towers`` in one batch, so the
mask applies to all of them.

What "zero" means after the LayerNorm-first ``mlp1`` (both layouts): the masked
tower's channels are zero at the LayerNorm's *input*.  The LayerNorm's mean and
variance are then taken over all channels, zeros included, so (i) the kept
tower's normalised values change (they are divided by a different standard
deviation and shifted by a different mean), and (ii) the masked tower's
channels leave the LayerNorm as ``-mean/std * gamma + beta``, not zero.  In
``convnext_512_siglip_448`` a masked SigLIP is 4 x 1152 = 4608 zero channels per
token (all four shuffled neighbours), a masked ConvNeXt 3072; in ``all_tiling``
each is 4 x its channels.  This is zero-fill *at the fusion point*, not
removal: ``drop`` is not offered because no reweighting of the following
Linear removes a tower exactly, and normalising over the kept channels only
would feed ``mlp1`` statistics it was never trained on.

Importing this module imports neither the remote code nor ``vlmeval``.
"""

from __future__ import annotations

import gc
import math
import sys
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from vlmeval_encred.masking import EncoderAdapter, EncoderInfo, MaskError, MaskSpec, count_params
from vlmeval_encred.wrapper import lazy_wrapper_getattr

FAMILY = "eagle2"
ALL_TILING = "all_tiling"
CONVNEXT_512_SIGLIP_448 = "convnext_512_siglip_448"
LAYOUTS = (ALL_TILING, CONVNEXT_512_SIGLIP_448)


def short_name(raw: str) -> str:
    low = raw.lower()
    if "siglip" in low:
        return "siglip"
    if "convnext" in low:
        return "convnext"
    return "".join(ch for ch in low if ch.isalnum()) or "tower"


class ZeroTower(nn.Module):
    """A masked tower's slot: zeros of its output shape, no weights, nothing run.

    Keeps the attributes the channel-concatenation tower reads (``name`` -- the key
    of the ``convnext_512_siglip_448`` dict --, ``input_image_size``, ``hidden_size``)."""

    def __init__(self, name: str, hidden_size: int, input_image_size: int, num_tokens: int,
                 dtype: torch.dtype) -> None:
        super().__init__()
        self.name, self._hidden, self.input_image_size = name, hidden_size, input_image_size
        self.num_tokens, self.dtype = num_tokens, dtype

    @property
    def hidden_size(self) -> int:
        return self._hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], self.num_tokens, self._hidden, dtype=self.dtype, device=x.device)


@dataclass
class _State:
    masked: tuple[str, ...]
    layout: str
    freed: int = 0


def _concat_tower(model: Any) -> Any:
    vm = getattr(model, "vision_model", None)
    inner = getattr(vm, "vision_model", None)
    if inner is None or not hasattr(inner, "vision_towers"):
        raise MaskError(f"Eagle2 model with vision model {type(vm).__name__}: only the multi-backbone "
                        "channel-concatenation vision model (Eagle2-9B) has several encoders to mask")
    return inner


def layout_of(model: Any) -> str:
    """The fusion layout of a loaded Eagle2 model: ``all_tiling`` or ``convnext_512_siglip_448``."""
    tower = _concat_tower(model)
    cfg = getattr(getattr(model, "config", None), "vision_config", None)
    kind = getattr(tower, "moe_version_type", getattr(cfg, "moe_version_type", None))
    if kind in (None, ALL_TILING):
        return ALL_TILING
    if kind == CONVNEXT_512_SIGLIP_448:
        return kind
    raise MaskError(f"Eagle2 vision_config.moe_version_type={kind!r}: supported fusion layouts are None / "
                    f"'{ALL_TILING}' and '{CONVNEXT_512_SIGLIP_448}' (NVIDIA's code raises NotImplementedError "
                    "for 'seq_concat' and 'feat_concat' at inference)")


def _downsample(model: Any) -> float:
    r = getattr(model, "downsample_ratio", None)
    if r is None:
        r = getattr(getattr(model, "config", None), "downsample_ratio", 0.5)
    return float(r)


class Eagle2Adapter(EncoderAdapter):
    family = FAMILY
    modes = ("zero",)
    drop_equals_zero = None

    def encoders(self, model: Any) -> list[EncoderInfo]:
        tower = _concat_tower(model)
        layout = layout_of(model)
        raw = getattr(getattr(getattr(model, "config", None), "vision_config", None), "vision_tower", None)
        names_raw = raw.split(";") if isinstance(raw, str) else [getattr(t, "name", "") for t in tower.vision_towers]
        if len(names_raw) != len(tower.vision_towers):
            raise MaskError(f"Eagle2 config vision_tower={raw!r} names {len(names_raw)} towers but the model has "
                            f"{len(tower.vision_towers)}")
        grid = int(tower.grid_size)
        infos = []
        if layout == ALL_TILING:
            for i, (r, t) in enumerate(zip(names_raw, tower.vision_towers)):
                infos.append(EncoderInfo(short_name(r), i, (grid * grid, int(t.hidden_size)), t, count_params(t)))
            return infos
        # convnext_512_siglip_448: extract_feature reads the dict by the towers' own names.
        keys = [getattr(t, "name", None) for t in tower.vision_towers]
        if sorted(keys) != ["convnext", "siglip"]:
            raise MaskError(f"Eagle2 layout {CONVNEXT_512_SIGLIP_448!r} needs exactly the towers named 'siglip' and "
                            f"'convnext' (extract_feature reads them by name); this model has {keys}")
        r = _downsample(model)
        shuffled = int(round(grid * r)) ** 2
        widths = {k: int(t.hidden_size) for k, t in zip(keys, tower.vision_towers)}
        expect = widths["convnext"] + widths["siglip"] * int(round(1 / r)) ** 2
        mlp1 = getattr(model, "mlp1", None)
        width = getattr(mlp1[0], "normalized_shape", None) if isinstance(mlp1, nn.Sequential) and len(mlp1) else None
        if width and width[-1] != expect:
            raise MaskError(f"Eagle2 {CONVNEXT_512_SIGLIP_448}: mlp1's LayerNorm spans {width[-1]} channels, "
                            f"the towers give convnext {widths['convnext']} + 4 x siglip {widths['siglip']} = {expect}")
        for i, (k, t) in enumerate(zip(keys, tower.vision_towers)):
            tokens = grid * grid if k == "siglip" else shuffled
            infos.append(EncoderInfo(k, i, (tokens, widths[k]), t, count_params(t)))
        return infos

    def install(self, model: Any, spec: MaskSpec, infos: list[EncoderInfo]) -> None:
        if getattr(model, "_encred_eagle2", None) is not None:
            raise MaskError("a mask is already installed on this Eagle2 model")
        tower = _concat_tower(model)
        st = _State(spec.masked, layout_of(model))
        for e in infos:
            if not spec.is_masked(e.name):
                continue
            old = tower.vision_towers[e.index]
            st.freed += count_params(old)
            tower.vision_towers[e.index] = zero_tower_for(old, e)
            e.module = None
            del old
        model._encred_eagle2 = st

    def release(self, model: Any, spec: MaskSpec, infos: list[EncoderInfo]) -> int:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return model._encred_eagle2.freed


def zero_tower_for(tower: nn.Module, info: EncoderInfo) -> ZeroTower:
    """The :class:`ZeroTower` that stands in for ``tower`` (same name, input size, output shape, dtype)."""
    p = next(iter(tower.parameters()), None)
    dtype = p.dtype if p is not None else getattr(tower, "dtype", torch.float32)
    return ZeroTower(getattr(tower, "name", info.name), info.output_shape[1], int(tower.input_image_size),
                     info.output_shape[0], dtype)


ADAPTER = Eagle2Adapter()


# --- tiling: NVIDIA's evaluation rule (default) and the InternVL rule ----------------------------------

TILING_RULES = ("nvidia", "internvl")


def _grids(min_num: int, max_num: int) -> list[tuple[int, int]]:
    """(columns, rows) with min_num <= columns * rows <= max_num, fewest tiles first."""
    found = {(c, r) for n in range(min_num, max_num + 1) for c in range(1, n + 1) for r in range(1, n + 1)
             if min_num <= c * r <= max_num}
    return sorted(found, key=lambda g: g[0] * g[1])


def choose_grid(width: int, height: int, tile: int = 448, min_num: int = 1, max_num: int = 6,
                rule: str = "nvidia") -> tuple[int, int]:
    """The (columns, rows) tile grid for an image of ``width`` x ``height`` pixels.

    ``nvidia`` (Eagle2's evaluation code): score each grid by
    ``min(grid area / image area, 0.6) * min(r_grid / r_image, r_image / r_grid)`` --
    covering 60 % of the image's pixels counts as enough, beyond that only the aspect
    ratio matters -- and keep the first best (grids in order of tile count).
    ``internvl``: the grid whose aspect ratio is closest; on a tie the larger grid if
    the image has more than half its pixels.
    """
    ratio = width / height
    area = width * height
    best = (1, 1)
    if rule == "nvidia":
        best_score = float("-inf")
        for c, r in _grids(min_num, max_num):
            score = min(c * r * tile * tile / area, 0.6) * min((c / r) / ratio, ratio / (c / r))
            if score > best_score:
                best, best_score = (c, r), score
        return best
    if rule == "internvl":
        best_diff = float("inf")
        for c, r in _grids(min_num, max_num):
            diff = abs(ratio - c / r)
            if diff < best_diff or (diff == best_diff and area > 0.5 * tile * tile * c * r):
                best, best_diff = (c, r), diff
        return best
    raise ValueError(f"tiling rule {rule!r}: expected one of {', '.join(TILING_RULES)}")


def dynamic_tiles(image: Any, tile: int = 448, min_num: int = 1, max_num: int = 6, thumbnail: bool = True,
                  rule: str = "nvidia", upscale: bool = False) -> list:
    """Split a PIL image into ``tile`` squares on the grid :func:`choose_grid` picks, plus a
    thumbnail of the whole image when there is more than one tile.

    Resizing is bicubic (what NVIDIA's evaluation and InternVL use); ``upscale`` first
    doubles the image (bilinear), as NVIDIA's Eagle2 evaluation does for most datasets."""
    from PIL import Image

    if upscale:
        image = image.resize((image.width * 2, image.height * 2), Image.BILINEAR)
    cols, rows = choose_grid(image.width, image.height, tile, min_num, max_num, rule)
    resized = image.resize((tile * cols, tile * rows), Image.BICUBIC)
    tiles = [resized.crop((c * tile, r * tile, (c + 1) * tile, (r + 1) * tile))
             for r in range(rows) for c in range(cols)]
    if thumbnail and len(tiles) > 1:
        tiles.append(image.resize((tile, tile), Image.BICUBIC))
    return tiles


@dataclass(frozen=True)
class TilePolicy:
    """How one dataset's images are tiled (see :func:`tile_policy`)."""

    rule: str = "nvidia"
    max_num: int = 6
    upscale: bool = False


def _matches(dataset: str | None, names: Iterable[str]) -> bool:
    return dataset is not None and any(n in dataset for n in names)  # substring match, as VLMEvalKit's listinstr


def tile_policy(dataset: str | None, *, tiling: str = "nvidia", max_num: int | None = None,
                max_num_by_dataset: Sequence[Sequence[Any]] = (), upscale: bool | None = None,
                no_upscale_datasets: Iterable[str] = ()) -> TilePolicy:
    """The tiling of ``dataset``'s images.

    ``tiling="nvidia"``: the area-aware rule; ``max_num`` from the first row of
    ``max_num_by_dataset`` (``[[max_num, [dataset name parts...]], ...]``) whose names
    occur in the dataset name, else ``max_num`` (default 6); images doubled first
    unless the dataset is in ``no_upscale_datasets`` (``upscale`` forces either way).
    ``tiling="internvl"``: the InternVL aspect-ratio rule with ``max_num`` (default 12),
    no table, no upscaling -- this package's tiling before NVIDIA's became the default.
    """
    if tiling == "internvl":
        return TilePolicy("internvl", int(max_num or 12), bool(upscale))
    if tiling != "nvidia":
        raise ValueError(f"Eagle2 tiling={tiling!r}: expected one of {', '.join(TILING_RULES)}")
    n = None
    for row in max_num_by_dataset:
        if len(row) != 2 or not isinstance(row[1], (list, tuple)):
            raise ValueError(f"Eagle2 max_num_by_dataset row {row!r}: expected [max_num, [dataset names]]")
        if _matches(dataset, row[1]):
            n = int(row[0])
            break
    if n is None:
        n = int(max_num or 6)
    up = (not _matches(dataset, no_upscale_datasets)) if upscale is None else bool(upscale)
    return TilePolicy("nvidia", n, up)


def pixel_values(tiles: list, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(tiles, 3, H, W) float32: pixels / 255, then (x - mean) / std per channel (torchvision's ToTensor+Normalize)."""
    import numpy as np

    m = torch.tensor(list(mean), dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(list(std), dtype=torch.float32).view(3, 1, 1)
    return torch.stack([(torch.from_numpy(np.asarray(t.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
                         - m) / s for t in tiles])


def _build_wrapper() -> type:
    from PIL import Image
    from vlmeval.vlm.base import BaseModel

    from vlmeval_encred.wrapper import EncredMixin, resolve_dtype

    class EncredEagle2(EncredMixin, BaseModel):
        """Eagle2-9B through its remote code's ``chat``; greedy by default.

        Preprocessing keywords (defaults follow NVIDIA's Eagle2 VLMEvalKit wrapper):
        ``tiling`` (``"nvidia"``: area-aware tile choice; ``"internvl"``: the older
        aspect-ratio rule with ``max_num`` 12), ``max_num`` (default when no table row
        matches), ``max_num_by_dataset`` (``[[n, [names]], ...]``, first match wins),
        ``upscale`` / ``no_upscale_datasets``, ``image_size`` (tile side; else the
        config's ``force_image_size``, else 448), ``image_mean``/``image_std`` (0.5:
        SigLIP normalisation, what NVIDIA uses for the MOB vision model).
        Loading: ``torch_dtype`` (bfloat16), ``device`` (cuda when available).
        """

        INSTALL_REQ = False
        INTERLEAVE = False
        adapter = ADAPTER

        def __init__(self, model_path: str = "nvidia/Eagle2-9B", torch_dtype: Any = "bfloat16",
                     device: str | None = None, tiling: str = "nvidia", max_num: int | None = None,
                     max_num_by_dataset: Sequence[Sequence[Any]] = (), upscale: bool | None = None,
                     no_upscale_datasets: Sequence[str] = (), image_size: int | None = None,
                     image_mean: Sequence[float] = (0.5, 0.5, 0.5), image_std: Sequence[float] = (0.5, 0.5, 0.5),
                     **kwargs: Any) -> None:
            self.tokens = self.pop_token_kwargs(kwargs)
            spec, base = self.pop_encred_kwargs(kwargs)
            super().__init__()
            self.tiling = dict(tiling=tiling, max_num=max_num, max_num_by_dataset=[list(r) for r in max_num_by_dataset],
                               upscale=upscale, no_upscale_datasets=list(no_upscale_datasets))
            tile_policy(None, **self.tiling)  # a bad table fails now, not at the first sample
            if device is None:
                device = "cuda" if torch.cuda.is_available() else "cpu"
            self.model, self.tokenizer = self.load_checkpoint(model_path, resolve_dtype(torch_dtype), device)
            self.tile = int(image_size or getattr(getattr(self.model, "config", None), "force_image_size", None) or 448)
            self.mean, self.std = tuple(image_mean), tuple(image_std)
            self.gen_kwargs = self.generation_kwargs({"max_new_tokens": 1024}, kwargs)
            if base:
                from vlmeval_encred.registry import get_base

                if tuple(get_base(base).encoders) != tuple(ADAPTER.names(self.model)):
                    raise MaskError(f"registry entry {base!r} encoders {get_base(base).encoders} != loaded "
                                    f"model's {ADAPTER.names(self.model)} (config.vision_config.vision_tower)")
            self.apply_mask(self.model, spec, base or model_path)
            self.token_report: dict[str, Any] | None = None
            self.token_hooks = install_tokens(self, self.tokens, base or model_path) if self.tokens else None

        @staticmethod
        def load_checkpoint(model_path: str, dtype: torch.dtype, device: str) -> tuple[Any, Any]:
            """(model, tokenizer) from the checkpoint and its remote code."""
            from transformers import AutoModel, AutoTokenizer

            model = AutoModel.from_pretrained(model_path, torch_dtype=dtype, trust_remote_code=True,
                                              low_cpu_mem_usage=True).eval().to(device)
            tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=True, use_fast=False)
            return model, tokenizer

        def tile_policy(self, dataset: str | None) -> TilePolicy:
            return tile_policy(dataset, **self.tiling)

        def build_inputs(self, message: list[dict[str, Any]], dataset: str | None = None) -> tuple[torch.Tensor, str]:
            """(pixel values of every tile and the thumbnail, prompt) -- what ``chat`` receives."""
            prompt, image_path = self.message_to_promptimg(message, dataset=dataset)
            pol = self.tile_policy(dataset)
            with Image.open(image_path) as im:
                tiles = dynamic_tiles(im.convert("RGB"), tile=self.tile, max_num=pol.max_num, rule=pol.rule,
                                      upscale=pol.upscale)
            p = self.model.mlp1[1].weight
            return pixel_values(tiles, self.mean, self.std).to(device=p.device, dtype=p.dtype), prompt

        def generate_inner(self, message, dataset=None):
            px, prompt = self.build_inputs(message, dataset)
            if self.tokens is not None:
                return generate_with_tokens(self, px, prompt).strip()
            return self.model.chat(self.tokenizer, px, prompt, dict(self.gen_kwargs)).strip()

    EncredEagle2.__module__ = __name__
    EncredEagle2.sweep_support = Eagle2Sweep()
    return EncredEagle2


# --- token budgets (docs/tokens.md, Eagle2 row) -----------------------------------------------------
# Visual tokens come per tile: each tile (and the thumbnail) gives ``num_image_token`` tokens after
# the pixel shuffle and ``mlp1`` (256 in the 9B), in row-major order of the ``<IMG_CONTEXT>``
# placeholders; the budget applies per tile, ``k = ceil(num_image_token * keep / 100)``.
#
# fusion: the fusion point is ``mlp1``'s input, where every token is ``[encoders' channels]``.
#   Each unmasked encoder's features of a token are its own columns there: in
#   ``convnext_512_siglip_448`` SigLIP's pixel-shuffled 2x2 neighbourhood (4 x its channels) and
#   ConvNeXt's token; in ``all_tiling`` the encoder's channels in each of the four shuffled
#   blocks.  Both are scored by the L2 norm (Eagle2's SigLIP tower has no [CLS]; ConvNeXt is a
#   conv net), with effective-rank weights computed per tile (``tokens.fusion_select`` on each
#   tile).  ``extract_feature`` runs once on all tiles; the kept rows are handed to the remote
#   code's own ``generate`` as ``visual_features`` with the pruned placeholders removed from
#   ``input_ids``, and a pre-hook on the decoder stack gives the remaining tokens their original
#   position ids (generated tokens continue after the unpruned prompt).
# llm: ``tokens.LlmPruner`` on the Qwen2 decoder layers, the placeholders as visual positions,
#   the kept set chosen per tile from the same attention scores (:class:`TileLlmPruner`).
# transformers 4.37-4.39 (the remote code's range): Qwen2's rotary module returns the table up to
#   the layer's own cache length and indexes it by position id, so with original positions past
#   that length the table is extended (:class:`_RotaryReach`; same values), and the llm stage's
#   scoring gets (cos, sin) of the position ids from the same table.


def _visual_columns(model: Any) -> dict[str, torch.Tensor]:
    """encoder -> the columns of ``mlp1``'s input that hold its channels (see the comment above)."""
    infos = ADAPTER.encoders(model)
    factor = int(round(1 / _downsample(model))) ** 2
    if layout_of(model) == CONVNEXT_512_SIGLIP_448:
        width = {e.name: e.output_shape[1] for e in infos}
        siglip = width["siglip"] * factor
        return {"siglip": torch.arange(siglip), "convnext": torch.arange(siglip, siglip + width["convnext"])}
    widths = [e.output_shape[1] for e in infos]
    block, out = sum(widths), {}
    for i, e in enumerate(infos):
        start = sum(widths[:i])
        out[e.name] = torch.cat([torch.arange(b * block + start, b * block + start + widths[i]) for b in range(factor)])
    return out


def _rotary_modules(layers: Sequence[nn.Module]) -> list[nn.Module]:
    """The rotary modules of decoder layers whose forward takes ``seq_len`` (transformers < 4.40)."""
    import inspect

    out = []
    for layer in layers:
        rot = getattr(getattr(layer, "self_attn", None), "rotary_emb", None)
        if rot is not None and "seq_len" in inspect.signature(rot.forward).parameters:
            out.append(rot)
    return out


class _RotaryReach:
    """While armed, every ``rotary_emb(x, seq_len=n)`` returns the table up to at least ``reach``
    rows: the layer indexes it by position id, and a pruned sequence keeps original position ids
    beyond its own length.  Rows are the same values, so unpruned numbers are unchanged."""

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        self.reach = 0
        self._handles = [r.register_forward_pre_hook(self._extend, with_kwargs=True) for r in _rotary_modules(layers)]

    def _extend(self, _m: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if not self.reach:
            return None
        if len(args) > 1:
            args, kwargs = args[:1], dict(kwargs, seq_len=args[1])
        return args, dict(kwargs, seq_len=max(int(kwargs.get("seq_len") or 0), self.reach))


class _PositionRemap:
    """Pre-hook on the decoder stack: while armed with the kept positions of a pruned prompt, the
    position ids it would use (``0..n-1`` over the shorter sequence, then one per generated token)
    become the original ones (kept positions, then ``prompt length + step``)."""

    def __init__(self, decoder: nn.Module) -> None:
        self.kept: torch.Tensor | None = None
        self.pruned = 0
        self._handle = decoder.register_forward_pre_hook(self._remap, with_kwargs=True)

    @staticmethod
    def _past(cache: Any) -> int:
        if cache is None:
            return 0
        if hasattr(cache, "get_seq_length"):
            return int(cache.get_seq_length())
        return int(cache[0][0].shape[-2]) if len(cache) else 0

    def _remap(self, _m: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if self.kept is None:
            return None
        x = kwargs.get("inputs_embeds")
        if x is None:
            x = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]
        pos = kwargs.get("position_ids")
        if pos is None:
            past = self._past(kwargs.get("past_key_values"))
            pos = torch.arange(past, past + x.shape[1], device=x.device).unsqueeze(0)
        kept = self.kept.to(pos.device)
        n = kept.numel()
        new = torch.where(pos < n, kept[pos.clamp(max=n - 1)], pos + self.pruned)
        return args, dict(kwargs, position_ids=new)


def _tile_top(scores: torch.Tensor, tile_tokens: int, k: int) -> list[int]:
    """Indices into ``scores`` (tiles x tile_tokens, flattened) of each tile's ``k`` best, ascending."""
    from vlmeval_encred.tokens import top_positions

    out: list[int] = []
    for t in range(scores.numel() // tile_tokens):
        out += [t * tile_tokens + j for j in top_positions(scores[t * tile_tokens:(t + 1) * tile_tokens], k).tolist()]
    return out


def _tile_pruner_class() -> type:
    """:class:`~vlmeval_encred.tokens.LlmPruner` with Eagle2's per-tile budget (built on first use:
    tokens.py's torch side is imported lazily)."""
    from vlmeval_encred.tokens import LlmPruner, TokenError

    class TileLlmPruner(LlmPruner):
        """The llm stage with the budget per tile: the attention scores are LlmPruner's own (last
        prompt token, layer K-1, softmax over all prompt keys, mean over heads); each tile keeps its
        ``ceil(tile_tokens * keep / 100)`` best (the adaptive fraction likewise per tile)."""

        def __init__(self, layers: Sequence[Any], spec: Any, tile_tokens: int) -> None:
            super().__init__(layers, spec)
            self.tile_tokens = int(tile_tokens)
            self._old_rotary = bool(_rotary_modules(self.layers[spec.layer - 1:spec.layer]))

        def arm(self, visual: Sequence[int], prompt_len: int) -> None:
            if len(visual) % self.tile_tokens:
                raise TokenError(f"llm stage: {len(visual)} image tokens are not whole tiles of {self.tile_tokens}")
            super().arm(visual, prompt_len)

        def _score(self, attn: Any, args: tuple, kwargs: dict) -> None:
            if self.visual is None or not self._prefill or self.kept_visual is not None:
                return None
            if self._old_rotary and kwargs.get("position_embeddings") is None:
                rot, pos = attn.rotary_emb, kwargs["position_ids"]
                h = self._hidden(args, kwargs)
                cos, sin = rot(h, seq_len=int(pos.max()) + 1)
                kwargs = dict(kwargs, position_embeddings=(cos[pos], sin[pos]))  # what 4.40+ passes
            super()._score(attn, args, kwargs)  # the attention itself still gets the original kwargs
            t = self.tile_tokens
            k = (self.spec.budget(t) if not self.spec.adaptive
                 else min(t, max(1, math.ceil(t * self.fraction - 1e-9))))
            self.kept_visual = [self.visual[i] for i in _tile_top(self.scores, t, k)]
            self._idx = self._index(self._hidden(args, kwargs).shape[1])
            return None

    return TileLlmPruner


@dataclass
class TokenHooks:
    """What a token-budget wrapper keeps installed on its model."""

    reach: _RotaryReach
    remap: _PositionRemap | None = None
    pruner: Any = None


def install_tokens(wrapper: Any, tokens: Any, name: str) -> TokenHooks:
    """Check ``tokens`` against the loaded model and install its hooks (inert until a generation)."""
    from vlmeval_encred.tokens import TokenError

    model = wrapper.model
    decoder = model.language_model.model
    hooks = TokenHooks(_RotaryReach(decoder.layers))
    if tokens.stage == "fusion":
        r = wrapper.encred_report
        if r is not None and len(r.spec.masked) >= len(r.encoders):
            raise TokenError(f"{name}: every encoder is masked; the fusion stage has no encoder to score tokens")
        hooks.remap = _PositionRemap(decoder)
    else:
        hooks.pruner = _tile_pruner_class()(decoder.layers, tokens, model.num_image_token)
    return hooks


def fusion_keep(wrapper: Any, pixel_values: torch.Tensor) -> tuple[torch.Tensor, list[int], list[dict[str, float]]]:
    """The fusion stage on one image's tiles: (the kept rows of ``extract_feature``'s output, the
    kept token indices counted over all tiles' tokens in order, the rank weights per tile)."""
    from vlmeval_encred.tokens import fusion_select

    model = wrapper.model
    masked = set(wrapper.encred_report.spec.masked) if wrapper.encred_report else set()
    cols = {e: c for e, c in _visual_columns(model).items() if e not in masked}
    seen: dict[str, torch.Tensor] = {}
    handle = model.mlp1.register_forward_pre_hook(lambda _m, a: seen.__setitem__("x", a[0]))
    try:
        fused = model.extract_feature(pixel_values)
    finally:
        handle.remove()
    x = seen["x"]
    tiles, t = fused.shape[:2]
    kept, rows, weights = [], [], []
    for i in range(tiles):
        sel = fusion_select({e: x[i][:, c.to(x.device)] for e, c in cols.items()}, wrapper.tokens)
        kept += [i * t + j for j in sel.kept.tolist()]
        rows.append(fused[i, sel.kept.to(fused.device)])
        weights.append(sel.weights)
    return torch.cat(rows, 0), kept, weights


def generate_with_tokens(wrapper: Any, pixel_values: torch.Tensor, prompt: str) -> str:
    """``chat`` with the wrapper's token budget (``generate_inner``'s path; sets ``token_report``).

    ``chat`` builds the prompt and post-processes the reply as always; its call of ``generate`` is
    intercepted on this model instance to prune: the fusion stage removes the pruned placeholders
    and passes the kept rows as ``visual_features``; the llm stage arms the pruner."""
    model, hooks, spec = wrapper.model, wrapper.token_hooks, wrapper.tokens
    real = model.generate
    report: dict[str, Any] = {"stage": spec.stage, "tile_tokens": int(model.num_image_token)}

    def pruned_generate(pixel_values: torch.Tensor | None = None, input_ids: torch.Tensor | None = None,
                        attention_mask: torch.Tensor | None = None, **kw: Any) -> Any:
        from vlmeval_encred.tokens import TokenError, splice_positions

        if input_ids.shape[0] != 1:
            raise TokenError("token budgets run one sample at a time (batch size 1)")
        s = input_ids.shape[1]
        visual = (input_ids[0] == model.img_context_token_id).nonzero().flatten().tolist()
        report.update(prompt_len=s, visual=visual)
        hooks.reach.reach = s + int(kw.get("max_new_tokens") or 0) + 1
        try:
            if spec.stage == "llm":
                hooks.pruner.arm(visual, s)
                try:
                    out = real(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask, **kw)
                finally:
                    report["kept"] = list(hooks.pruner.kept_visual or visual)
                    hooks.pruner.disarm()
                return out
            if len(visual) != pixel_values.shape[0] * model.num_image_token:
                raise TokenError(f"fusion stage: {len(visual)} image placeholders for {pixel_values.shape[0]} tiles "
                                 f"of {model.num_image_token} tokens")
            rows, kept, report["weights"] = fusion_keep(wrapper, pixel_values)
            report["kept"] = [visual[j] for j in kept]
            idx = torch.tensor(splice_positions(s, visual, report["kept"]), device=input_ids.device)
            hooks.remap.kept, hooks.remap.pruned = idx, s - idx.numel()
            try:
                ids = input_ids[:, idx]
                return real(pixel_values=pixel_values, input_ids=ids, attention_mask=torch.ones_like(ids),
                            visual_features=rows, **kw)
            finally:
                hooks.remap.kept, hooks.remap.pruned = None, 0
        finally:
            hooks.reach.reach = 0

    model.generate = pruned_generate  # this instance, this call only
    try:
        with torch.inference_mode():
            reply = model.chat(wrapper.tokenizer, pixel_values, prompt, dict(wrapper.gen_kwargs))
    finally:
        del model.generate
    wrapper.token_report = report
    return reply


# --- encred sweep support: share encoder outputs across every subset of a sample ---------------------
# :class:`~vlmeval_encred.sweep.protocol.SweepSupport` for ``EncredEagle2`` (both fusion layouts).
#
# * ``prepare``: the wrapper's ``build_inputs`` (tiles, pixel values, prompt: what
#   ``generate_inner`` hands to ``chat``).
# * ``encode``: the upstream vision tower's own ``forward`` on those pixels, with the
#   towers not asked for replaced by :class:`ZeroTower` and forward hooks keeping
#   each asked tower's output (the tensor masking replaces by zeros).
# * ``fuse``: per subset, the towers are swapped for replays of the kept outputs and
#   :class:`ZeroTower` for the masked ones, and the model's own ``extract_feature``
#   runs (resize, interpolation, concatenation, pixel shuffle, ``mlp1`` exactly as in a
#   per-variant run, same batch); the prompt is built as ``chat`` builds it; then the
#   remote code's own ``generate`` builds ``inputs_embeds`` for all subsets (features
#   given as ``visual_features``, its entry for pre-computed features) and is stopped
#   where it would hand them to ``language_model.generate``.  The result is a
#   :class:`~vlmeval_encred.sweep.decoding.DecodeRequest`: the sweep's shared-prefix
#   greedy decoder takes it from there.
# * ``fuse_and_generate``: ``decode([fuse(...)])[0]`` when the wrapper decodes plainly
#   greedily (:func:`greedy_refusal`); otherwise -- or with
#   ``Eagle2Sweep(batched_decode=False)`` -- the remote code's ``generate`` with the
#   wrapper's settings, all subsets in one batch (or one per subset), rows cut after
#   their first end-of-sequence token (in a batch a row that finished early goes on
#   with padding where a batch of one stops).


class _Replay(nn.Module):
    """A tower slot that returns a recorded output (for the sweep's per-subset fusion)."""

    def __init__(self, tower: nn.Module, output: torch.Tensor) -> None:
        super().__init__()
        self.name, self.input_image_size = getattr(tower, "name", ""), tower.input_image_size
        self._hidden, self.output = tower.hidden_size, output

    @property
    def hidden_size(self) -> int:
        return self._hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != self.output.shape[0]:
            raise RuntimeError(f"sweep replay: {x.shape[0]} tiles in, {self.output.shape[0]} recorded")
        return self.output


class _Swapped:
    """Context manager: put other modules in ``vision_towers`` slots, restore them afterwards."""

    def __init__(self, towers: nn.ModuleList, replace: Mapping[int, nn.Module]) -> None:
        self.towers, self.replace, self.saved = towers, replace, {}

    def __enter__(self) -> None:
        for i, m in self.replace.items():
            self.saved[i] = self.towers[i]
            self.towers[i] = m

    def __exit__(self, *exc: Any) -> None:
        for i, m in self.saved.items():
            self.towers[i] = m


def _eos_cut(row: torch.Tensor, eos: int | None) -> torch.Tensor:
    if eos is not None:
        hits = (row == eos).nonzero()
        if len(hits):
            return row[: int(hits[0]) + 1]
    return row


def finish_reply(tok: Any, sep: str, rows: Sequence[Any]) -> list[str]:
    """Generated ids per row -> what ``generate_inner`` returns: ``chat``'s own tail (decode without
    special tokens, the part before the template separator, stripped) and the wrapper's ``strip``."""
    return [tok.decode(r, skip_special_tokens=True).split(sep)[0].strip() for r in rows]


# Generation settings that leave greedy decoding of one row unchanged (the rest must be neutral).
_GREEDY_NEUTRAL = {"max_new_tokens", "do_sample", "num_beams", "temperature", "top_p", "top_k", "use_cache",
                   "pad_token_id", "eos_token_id", "repetition_penalty", "num_return_sequences"}


def greedy_refusal(lm: Any, gen_kwargs: Mapping[str, Any]) -> str | None:
    """Why ``language_model.generate(**gen_kwargs)`` is not plain greedy decoding (None if it is).

    The shared-prefix decoder reproduces argmax decoding with end-of-sequence stopping and
    nothing else, so sampling, beams, penalties, logits processors or other stopping rules keep
    the remote code's ``generate``.  The language model's own ``generation_config`` counts too:
    ``generate`` merges it under the keywords."""
    other = sorted(set(gen_kwargs) - _GREEDY_NEUTRAL)
    if other:
        return f"generation keywords {other} are not plain greedy decoding"
    cfg = getattr(lm, "generation_config", None)
    merged = {k: getattr(cfg, k, None) for k in ("do_sample", "num_beams", "repetition_penalty",
                                                  "num_return_sequences", "no_repeat_ngram_size", "min_length",
                                                  "min_new_tokens", "bad_words_ids", "forced_bos_token_id",
                                                  "forced_eos_token_id", "suppress_tokens", "begin_suppress_tokens",
                                                  "sequence_bias", "guidance_scale", "max_time")}
    merged.update({k: v for k, v in gen_kwargs.items() if k in merged})
    neutral = {"do_sample": (None, False), "num_beams": (None, 1), "repetition_penalty": (None, 1.0),
               "num_return_sequences": (None, 1), "no_repeat_ngram_size": (None, 0), "min_length": (None, 0),
               "min_new_tokens": (None, 0), "guidance_scale": (None, 1.0)}
    bad = {k: v for k, v in merged.items() if v not in neutral.get(k, (None,))}
    if bad:
        return f"generation settings {bad} are not plain greedy decoding"
    if gen_kwargs.get("max_new_tokens") is None:
        return "no max_new_tokens: the decoder stops after max_new_tokens"
    return None


def _captured_embeds(model: Any, **generate_kw: Any) -> torch.Tensor:
    """The ``inputs_embeds`` the remote code's ``generate`` hands to ``language_model.generate``,
    built by that ``generate`` itself (the per-variant path), which is stopped there."""
    lm = model.language_model
    own = vars(lm).get("generate")
    seen: dict[str, torch.Tensor] = {}

    def capture(*_a: Any, inputs_embeds: torch.Tensor, **_kw: Any) -> None:
        seen["embeds"] = inputs_embeds

    lm.generate = capture  # an instance attribute shadows the class method for this call only
    try:
        model.generate(**generate_kw)
    finally:
        if own is None:
            del lm.generate
        else:
            lm.generate = own
    return seen["embeds"]


def _has_batch_cache() -> bool:
    """Whether transformers' ``DynamicCache`` can repeat and select batch rows (>= 4.42; the eagle2
    recipe's 4.39.2 cannot)."""
    from transformers.cache_utils import DynamicCache

    return hasattr(DynamicCache, "batch_repeat_interleave") and hasattr(DynamicCache, "batch_select_indices")


class _BatchCache:
    """A ``DynamicCache`` subclass with the two batch operations the shared-prefix decoder uses
    (built lazily: transformers is imported where used)."""

    cls: Any = None

    @classmethod
    def new(cls) -> Any:
        if cls.cls is None:
            from transformers.cache_utils import DynamicCache

            class Cache(DynamicCache):
                def batch_repeat_interleave(self, repeats: int) -> None:
                    self.key_cache = [k.repeat_interleave(repeats, dim=0) for k in self.key_cache]
                    self.value_cache = [v.repeat_interleave(repeats, dim=0) for v in self.value_cache]

                def batch_select_indices(self, indices: torch.Tensor) -> None:
                    self.key_cache = [k[indices] for k in self.key_cache]
                    self.value_cache = [v[indices] for v in self.value_cache]

            cls.cls = Cache
        return cls.cls()


class _CacheCompatLM:
    """The chat model's language model as :func:`~vlmeval_encred.sweep.decoding.greedy_subsets`
    drives it, under transformers whose ``DynamicCache`` lacks batch operations (4.37-4.39, the
    range Eagle2's remote code asserts): the first forward gets an empty cache that has them
    (given a ``Cache``, the model updates and returns it instead of a legacy tuple).  Same
    forward, same numbers; one per language model, so the decoder's prefix cache finds it again."""

    def __init__(self, lm: Any) -> None:
        self.lm = lm

    def forward(self, inputs_embeds: torch.Tensor, past_key_values: Any = None, use_cache: bool = True,
                attention_mask: torch.Tensor | None = None) -> Any:
        cache = _BatchCache.new() if past_key_values is None else past_key_values
        return self.lm(inputs_embeds=inputs_embeds, past_key_values=cache, use_cache=use_cache,
                       attention_mask=attention_mask)

    __call__ = forward


def decoder_lm(model: Any) -> Any:
    """What the shared-prefix decoder runs: the language model itself, or its cache-compatible
    view (kept on the model, so that every sample sees the same object)."""
    lm = model.language_model
    if _has_batch_cache():
        return lm
    view = getattr(model, "_encred_decoder_lm", None)
    if view is None or view.lm is not lm:
        view = _CacheCompatLM(lm)
        model._encred_decoder_lm = view
    return view


class Eagle2Sweep:
    """SweepSupport of the Eagle2 family (see the comment block above)."""

    def __init__(self, batched_decode: bool = True) -> None:
        self.batched_decode = batched_decode

    def prepare(self, wrapper: Any, message: list[dict[str, Any]], dataset: str | None) -> Any:
        if getattr(wrapper, "tokens", None) is not None:
            raise ValueError("Eagle2 sweep: a token-budget variant is run as an ordinary VLMEvalKit model, not swept "
                             "(the sweep shares encoders across mask subsets of the unpruned model)")
        px, prompt = wrapper.build_inputs(message, dataset)
        return {"pixel_values": px, "prompt": prompt}

    @staticmethod
    def _infos(wrapper: Any) -> dict[str, EncoderInfo]:
        return {e.name: e for e in ADAPTER.encoders(wrapper.model)}

    def encode(self, wrapper: Any, inputs: Any, encoders: Sequence[str]) -> dict[str, torch.Tensor]:
        tower = _concat_tower(wrapper.model)
        infos = self._infos(wrapper)
        unknown = [n for n in encoders if n not in infos]
        if unknown:
            raise ValueError(f"Eagle2 sweep: no encoder {unknown}; have {list(infos)}")
        out: dict[str, torch.Tensor] = {}
        handles = []
        for n in encoders:
            t = tower.vision_towers[infos[n].index]
            if isinstance(t, ZeroTower):
                raise ValueError(f"Eagle2 sweep: encoder {n!r} was masked when the model was loaded")
            handles.append(t.register_forward_hook(lambda _m, _i, o, _n=n: out.__setitem__(_n, o)))
        skip = {e.index: zero_tower_for(tower.vision_towers[e.index], e) for n, e in infos.items()
                if n not in encoders and not isinstance(tower.vision_towers[e.index], ZeroTower)}
        try:
            with _Swapped(tower.vision_towers, skip), torch.inference_mode():
                wrapper.model.vision_model(pixel_values=inputs["pixel_values"])
        finally:
            for h in handles:
                h.remove()
        return out

    def _features(self, wrapper: Any, inputs: Any, features_per_subset: list[dict[str, Any]],
                  mask_mode: str) -> list[torch.Tensor]:
        """Per subset, ``extract_feature`` with the towers replayed or zeroed (a variant's fusion)."""
        if mask_mode != "zero":
            raise ValueError(f"Eagle2 supports mask mode 'zero' only, not {mask_mode!r}")
        model = wrapper.model
        tower = _concat_tower(model)
        infos = self._infos(wrapper)
        feats = []
        with torch.inference_mode():
            for subset in features_per_subset:
                slots = {}
                for n, e in infos.items():
                    t = tower.vision_towers[e.index]
                    f = subset.get(n)
                    slots[e.index] = _Replay(t, f) if f is not None else (
                        t if isinstance(t, ZeroTower) else zero_tower_for(t, e))
                with _Swapped(tower.vision_towers, slots):
                    feats.append(model.extract_feature(inputs["pixel_values"]))
        return feats

    def fuse(self, wrapper: Any, inputs: Any, features_per_subset: list[dict[str, Any]],
             mask_mode: str) -> Any:
        """One row of ``inputs_embeds`` per subset, built by the remote code's ``generate``."""
        from functools import partial

        from vlmeval_encred.sweep.decoding import DecodeRequest

        reason = greedy_refusal(wrapper.model.language_model, wrapper.gen_kwargs)
        if reason:
            raise ValueError(f"Eagle2 sweep: cannot hand this wrapper's decoding to the greedy decoder: {reason}")
        model, tok = wrapper.model, wrapper.tokenizer
        feats = self._features(wrapper, inputs, features_per_subset, mask_mode)
        px = inputs["pixel_values"]
        ids, mask, sep, eos = self._query(model, tok, inputs["prompt"], px.shape[0])
        s = len(feats)
        with torch.inference_mode():
            embeds = _captured_embeds(model, pixel_values=px, input_ids=ids.repeat(s, 1),
                                      attention_mask=mask.repeat(s, 1), visual_features=torch.cat(feats, 0))
        lm = model.language_model
        return DecodeRequest(lm=decoder_lm(model), embeds=embeds, embed_tokens=lm.get_input_embeddings(),
                             eos_ids=[eos], max_new_tokens=int(wrapper.gen_kwargs["max_new_tokens"]),
                             finish=partial(finish_reply, tok, sep))

    def fuse_and_generate(self, wrapper: Any, inputs: Any, features_per_subset: list[dict[str, Any]],
                          mask_mode: str) -> list[str]:
        if self.batched_decode and greedy_refusal(wrapper.model.language_model, wrapper.gen_kwargs) is None:
            from vlmeval_encred.sweep.decoding import decode

            return decode([self.fuse(wrapper, inputs, features_per_subset, mask_mode)])[0]
        # Sampling, beams, penalties or batched_decode=False: the remote code's generate with the
        # wrapper's own settings, which the shared-prefix greedy decoder does not reproduce.
        model, tok = wrapper.model, wrapper.tokenizer
        feats = self._features(wrapper, inputs, features_per_subset, mask_mode)
        px = inputs["pixel_values"]
        ids, mask, sep, eos = self._query(model, tok, inputs["prompt"], px.shape[0])
        gen = dict(wrapper.gen_kwargs, eos_token_id=eos)
        rows: list[torch.Tensor] = []
        with torch.inference_mode():
            if self.batched_decode:
                s = len(feats)
                out = model.generate(pixel_values=px, input_ids=ids.repeat(s, 1), attention_mask=mask.repeat(s, 1),
                                     visual_features=torch.cat(feats, 0), **gen)
                rows = list(out)
            else:
                for f in feats:
                    rows.append(model.generate(pixel_values=px, input_ids=ids, attention_mask=mask,
                                               visual_features=f, **gen)[0])
        return finish_reply(tok, sep, [_eos_cut(r, eos) for r in rows])

    @staticmethod
    def _query(model: Any, tok: Any, prompt: str, tiles: int) -> tuple[torch.Tensor, torch.Tensor, str, int]:
        """Token ids of the prompt ``chat`` would build for one image of ``tiles`` tiles, and its separator.

        Uses the remote code's own ``get_conv_template`` (imported into the module that
        defines the model class) and the same image-token layout as ``chat``."""
        get_conv_template = getattr(sys.modules.get(type(model).__module__), "get_conv_template", None)
        if get_conv_template is None:
            raise MaskError(f"Eagle2 sweep: {type(model).__module__} has no get_conv_template; cannot build the "
                            "prompt exactly as the model's chat() does")
        model.img_context_token_id = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
        question = prompt if "<image>" in prompt else "<image>\n" + prompt
        template = get_conv_template(model.template)
        template.system_message = model.system_message
        template.append_message(template.roles[0], question)
        template.append_message(template.roles[1], None)
        query = template.get_prompt().replace(
            "<image>", "<img>" + "<IMG_CONTEXT>" * model.num_image_token * tiles + "</img>", 1)
        enc = tok(query, return_tensors="pt")
        dev = model.mlp1[1].weight.device
        return (enc["input_ids"].to(dev), enc["attention_mask"].to(dev), template.sep,
                tok.convert_tokens_to_ids(template.sep))


__getattr__ = lazy_wrapper_getattr(__name__, "EncredEagle2", _build_wrapper)
