"""Eagle2-9B: encoder masking for the channel-concatenated SigLIP + ConvNeXt vision model.

Upstream (nvidia/Eagle2-9B remote code): ``model.vision_model.vision_model`` is a
``MultiBackboneChannelConcatenationVisionTower`` (same class pattern as Eagle-1)
whose ``vision_towers`` ModuleList follows ``config.vision_config.vision_tower``
(names joined by ``;``).  Each tile is resized per tower; outputs are brought to
a ``grid_size`` x ``grid_size`` map (bilinear) and concatenated on channels;
``extract_feature`` then pixel-shuffles (0.5) and applies ``mlp1`` =
LayerNorm, Linear, GELU, Linear.

Hook point: a masked tower in ``vision_towers`` is replaced by :class:`ZeroTower`,
which returns zeros of shape (tiles, grid**2, hidden_size) without running
anything.  Upstream uses such an output as is (no interpolation), and
interpolating zeros would give the same zeros, so the concatenation is exactly
the zero-fill of the paper.  The tower ModuleList sees every tile of the
dynamic tiling *and* the thumbnail in one batch, so the mask applies to all of
them by construction.

Only ``zero`` is offered.  ``drop`` is not: the first layer after the
concatenation is a LayerNorm over all (pixel-shuffled) channels, so zero
channels still enter its mean and variance; no reweighting of the following
Linear removes a tower exactly, and normalising over the kept channels only
would feed ``mlp1`` statistics it was never trained on.

Importing this module imports neither the remote code nor ``vlmeval``.
"""

from __future__ import annotations

import gc
import json
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vlmeval_encred.masking import EncoderAdapter, EncoderInfo, MaskError, MaskSpec, count_params
from vlmeval_encred.wrapper import lazy_wrapper_getattr

FAMILY = "eagle2"


def short_name(raw: str) -> str:
    low = raw.lower()
    if "siglip" in low:
        return "siglip"
    if "convnext" in low:
        return "convnext"
    return "".join(ch for ch in low if ch.isalnum()) or "tower"


class ZeroTower(nn.Module):
    """A masked tower's slot: zeros of its fused shape, no weights, nothing run."""

    def __init__(self, name: str, hidden_size: int, input_image_size: int, num_tokens: int, dtype: torch.dtype) -> None:
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
    freed: int = 0


def _concat_tower(model: Any) -> Any:
    vm = getattr(model, "vision_model", None)
    inner = getattr(vm, "vision_model", None)
    if inner is None or not hasattr(inner, "vision_towers"):
        raise MaskError(f"Eagle2 model with vision model {type(vm).__name__}: only the multi-backbone "
                        "channel-concatenation vision model (Eagle2-9B) has several encoders to mask")
    return inner


class Eagle2Adapter(EncoderAdapter):
    family = FAMILY
    modes = ("zero",)
    drop_equals_zero = None

    def encoders(self, model: Any) -> list[EncoderInfo]:
        tower = _concat_tower(model)
        if getattr(tower, "moe_version_type", None) not in (None, "all_tiling"):
            raise MaskError(f"Eagle2 moe_version_type={tower.moe_version_type!r}: only the default channel "
                            "concatenation (None / 'all_tiling') is supported")
        raw = getattr(getattr(getattr(model, "config", None), "vision_config", None), "vision_tower", None)
        names_raw = raw.split(";") if isinstance(raw, str) else [getattr(t, "name", "") for t in tower.vision_towers]
        if len(names_raw) != len(tower.vision_towers):
            raise MaskError(f"Eagle2 config vision_tower={raw!r} names {len(names_raw)} towers but the model has "
                            f"{len(tower.vision_towers)}")
        grid = int(tower.grid_size) ** 2
        return [EncoderInfo(short_name(r), i, (grid, int(t.hidden_size)), t, count_params(t))
                for i, (r, t) in enumerate(zip(names_raw, tower.vision_towers))]

    def install(self, model: Any, spec: MaskSpec, infos: list[EncoderInfo]) -> None:
        if getattr(model, "_encred_eagle2", None) is not None:
            raise MaskError("a mask is already installed on this Eagle2 model")
        tower = _concat_tower(model)
        st = _State(spec.masked)
        for e in infos:
            if not spec.is_masked(e.name):
                continue
            old = tower.vision_towers[e.index]
            p = next(iter(old.parameters()), None)
            dtype = p.dtype if p is not None else torch.float32
            st.freed += count_params(old)
            tower.vision_towers[e.index] = ZeroTower(e.name, e.output_shape[1], int(old.input_image_size),
                                                     e.output_shape[0], dtype)
            e.module = None
            del old
        model._encred_eagle2 = st

    def release(self, model: Any, spec: MaskSpec, infos: list[EncoderInfo]) -> int:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return model._encred_eagle2.freed


ADAPTER = Eagle2Adapter()


def dynamic_tiles(image: Any, tile: int = 448, min_num: int = 1, max_num: int = 12, thumbnail: bool = True) -> list:
    """Split a PIL image into the grid of ``tile`` squares whose aspect ratio is closest to the image's
    (ties: the larger grid if the image has the pixels for it), plus a thumbnail when more than one tile."""
    w, h = image.size
    ratio = w / h
    grids = sorted({(i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
                    if min_num <= i * j <= max_num}, key=lambda g: g[0] * g[1])
    best, best_diff = (1, 1), float("inf")
    for g in grids:
        diff = abs(ratio - g[0] / g[1])
        if diff < best_diff or (diff == best_diff and w * h > 0.5 * tile * tile * g[0] * g[1]):
            best, best_diff = g, diff
    cols, rows = best
    resized = image.resize((tile * cols, tile * rows))
    tiles = [resized.crop((c * tile, r * tile, (c + 1) * tile, (r + 1) * tile)) for r in range(rows) for c in range(cols)]
    if thumbnail and len(tiles) > 1:
        tiles.append(image.resize((tile, tile)))
    return tiles


def _build_wrapper() -> type:
    from PIL import Image
    from vlmeval.vlm.base import BaseModel

    from vlmeval_encred.wrapper import EncredMixin

    class EncredEagle2(EncredMixin, BaseModel):
        """Eagle2-9B through its remote code's ``chat``; greedy by default.

        Keywords: ``max_num`` tiles (12), ``image_mean``/``image_std`` (else the checkpoint's
        preprocessor_config.json, else 0.5), generation settings.
        """

        INSTALL_REQ = False
        INTERLEAVE = False
        adapter = ADAPTER

        def __init__(self, model_path: str = "nvidia/Eagle2-9B", **kwargs: Any) -> None:
            from transformers import AutoModel, AutoTokenizer

            spec, base = self.pop_encred_kwargs(kwargs)
            self.max_num = int(kwargs.pop("max_num", 12))
            mean, std = kwargs.pop("image_mean", None), kwargs.pop("image_std", None)
            self.model = AutoModel.from_pretrained(model_path, torch_dtype=torch.bfloat16, trust_remote_code=True,
                                                   low_cpu_mem_usage=True).eval().cuda()
            self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=True, use_fast=False)
            if mean is None or std is None:
                mean, std = self._norm_from_checkpoint(model_path)
            self.mean, self.std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
            self.gen_kwargs = self.generation_kwargs({"max_new_tokens": 1024}, kwargs)
            if base:
                from vlmeval_encred.registry import get_base

                if tuple(get_base(base).encoders) != tuple(ADAPTER.names(self.model)):
                    raise MaskError(f"registry entry {base!r} encoders {get_base(base).encoders} != loaded "
                                    f"model's {ADAPTER.names(self.model)} (config.vision_config.vision_tower)")
            self.apply_mask(self.model, spec, base or model_path)

        @staticmethod
        def _norm_from_checkpoint(model_path: str) -> tuple[list[float], list[float]]:
            try:
                from huggingface_hub import hf_hub_download

                path = model_path if os.path.isdir(model_path) else os.path.dirname(
                    hf_hub_download(model_path, "preprocessor_config.json"))
                with open(os.path.join(path, "preprocessor_config.json")) as f:
                    cfg = json.load(f)
                return list(cfg["image_mean"]), list(cfg["image_std"])
            except Exception:
                return [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]

        def generate_inner(self, message, dataset=None):
            import numpy as np

            prompt, image_path = self.message_to_promptimg(message, dataset=dataset)
            tiles = dynamic_tiles(Image.open(image_path).convert("RGB"), max_num=self.max_num)
            px = torch.stack([(torch.from_numpy(np.asarray(t, dtype=np.float32) / 255.0).permute(2, 0, 1)
                               - self.mean) / self.std for t in tiles]).to(torch.bfloat16).cuda()
            return self.model.chat(self.tokenizer, px, prompt, dict(self.gen_kwargs)).strip()

    EncredEagle2.__module__ = __name__
    return EncredEagle2


__getattr__ = lazy_wrapper_getattr(__name__, "EncredEagle2", _build_wrapper)
