"""Eagle-1 (NVlabs EAGLE: Eagle-X4 / Eagle-X5) encoder masking and its VLMEvalKit wrapper.

Architecture (github NVlabs/EAGLE, ``eagle/model/...``):

* The checkpoint's ``config.mm_vision_tower`` is a ``;``-separated list such
  as ``clip-448;convnext-1024;sam-1024;det-1024;pix2struct-1024``.
  ``multimodal_encoder/builder.py`` turns it into a
  ``MultiBackboneChannelConcatenationVisionTower`` whose ``vision_towers``
  (an ``nn.ModuleList``) hold one tower per name, in that order.
* Fusion point: ``MultiBackboneChannelConcatenationVisionTower.forward``
  resizes the image to each tower's ``input_image_size``, brings each output
  to ``(B, num_tokens, C_i)`` (``num_tokens = grid_size ** 2 = 1024``;
  interpolating to the 32 x 32 grid where needed) and concatenates along
  channels.  ``mm_projector`` (``mlp2x_gelu``: Linear(sum C_i -> hidden),
  GELU, Linear) maps that to the LLM's width.

Short names: the part of an upstream name before ``-``, with ``det`` (the
EVA-02-L detection backbone) called ``eva02``: ``clip``, ``convnext``,
``sam``, ``eva02``, ``pix2struct``.  Order and per-tower widths are read from
the loaded model (``mm_vision_tower`` and each tower's ``hidden_size``,
``num_tokens`` of the fusion), and checked against the catalog entry and the
projector's input width.

Modes (:class:`Eagle1Adapter`):

* ``zero`` (the paper): the masked tower's slot in ``vision_towers`` is taken
  by :class:`ZeroTower`, which never looks at the image and returns zeros of
  ``(B, num_tokens, C_i)``; the fusion appends them unchanged (already on the
  grid), so the projector sees exactly the concatenation with that block
  zeroed.
* ``drop``: the tower leaves ``vision_towers`` and the projector's first
  Linear loses the matching input columns (weight columns sliced, bias kept).
  Since zero inputs contribute nothing to a Linear, ``W x + b`` with the
  masked block zeroed equals ``W[:, kept] x_kept + b``: the output equals
  ``zero`` up to floating-point summation order (``drop_equals_zero=True``),
  with less compute and a narrower matmul.

Not building masked towers at load time: not done, on purpose.  Upstream
builds every tower inside the model's constructor
(``MultiBackboneChannelConcatenationVisionTower.load_vision_towers``), each
tower fetching its own pretrained weights there, and takes the image
processor from the ConvNeXt tower unconditionally.  Rewriting
``mm_vision_tower`` would (a) lose the per-tower widths, which exist only on
the built modules (the config stores just their sum, ``mm_hidden_size``) and
which both modes need to keep the projector's channel layout, and (b) break
the processor when ConvNeXt is masked.  Re-implementing the tower factory per
name would tie us to upstream internals the config does not describe.  So
the towers are built as the checkpoint says and the masked ones are freed
right after loading (:meth:`Eagle1Adapter.release`: detached from the model,
moved to the meta device so a stray reference cannot pin their storage, then
``gc`` and ``torch.cuda.empty_cache``).  Peak memory during loading still
includes them; resident memory afterwards does not.

Importing this module imports torch and ``vlmeval.vlm.eagle_x`` only; the
``eagle`` package is imported by VLMEvalKit's wrapper inside ``__init__`` /
``generate_inner``.
"""

from __future__ import annotations

import gc
import logging
from typing import Any, Sequence

import torch
import torch.nn as nn
from vlmeval.vlm.eagle_x import Eagle

from vlmeval_encred.masking import EncoderAdapter, EncoderInfo, MaskError, MaskSpec, count_params
from vlmeval_encred.wrapper import EncredMixin

log = logging.getLogger("vlmeval_encred")

UPSTREAM_TO_SHORT: dict[str, str] = {
    "clip": "clip", "convnext": "convnext", "sam": "sam", "det": "eva02", "pix2struct": "pix2struct"}
"""Upstream tower-name prefix (before ``-<resolution>``) -> our stable short name."""


def short_name(upstream: str) -> str:
    """``det-1024`` -> ``eva02``; ``clip-448`` -> ``clip``; unknown prefixes are an error."""
    prefix = upstream.strip().split("-")[0].lower()
    try:
        return UPSTREAM_TO_SHORT[prefix]
    except KeyError:
        raise MaskError(f"unknown Eagle vision tower {upstream!r} in mm_vision_tower; known towers: "
                        + ", ".join(f"{k}-* ({v})" for k, v in UPSTREAM_TO_SHORT.items())) from None


class ZeroTower(nn.Module):
    """Stands in the fusion's tower list for a masked tower: zeros of its exact output shape.

    It reports the masked tower's ``hidden_size`` (so the fusion's
    ``hidden_size`` and the projector layout are unchanged) and the fusion's
    own ``input_image_size`` (so the fusion does not resize the image for
    it).  The output is ``(B, num_tokens, hidden_size)``, already on the
    fusion's grid, in the dtype and on the device of a zero-element buffer
    that follows ``.to()`` like the tower's weights did.  It holds no
    parameters.
    """

    def __init__(self, name: str, hidden_size: int, num_tokens: int, input_image_size: int,
                 dtype: torch.dtype, device: torch.device | str):
        super().__init__()
        self.encred_masked_name = name
        self._hidden_size = int(hidden_size)
        self.num_tokens = int(num_tokens)
        self.input_image_size = input_image_size
        self.is_loaded = True
        self.register_buffer("_anchor", torch.empty(0, dtype=dtype, device=device), persistent=False)

    @property
    def hidden_size(self) -> int:
        return self._hidden_size

    @property
    def dtype(self) -> torch.dtype:
        return self._anchor.dtype

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], self.num_tokens, self._hidden_size, dtype=self._anchor.dtype,
                           device=self._anchor.device)

    def extra_repr(self) -> str:
        return f"masked={self.encred_masked_name!r}, out=(B, {self.num_tokens}, {self._hidden_size})"


def _fusion(model: Any) -> Any:
    """The model's ``MultiBackboneChannelConcatenationVisionTower`` (checked by duck typing)."""
    getter = getattr(model, "get_vision_tower", None)
    tower = getter() if callable(getter) else None
    if tower is None or not isinstance(getattr(tower, "vision_towers", None), nn.ModuleList) \
            or not hasattr(tower, "num_tokens"):
        raise MaskError(
            f"{type(model).__name__} has no Eagle-1 multi-backbone vision tower (expected "
            "get_vision_tower() to return a MultiBackboneChannelConcatenationVisionTower with "
            f"vision_towers and num_tokens; got {type(tower).__name__})")
    return tower


def _projector_first_linear(model: Any) -> tuple[nn.Module, str | int | None]:
    """The Linear that reads the concatenation, and where it sits in ``mm_projector``."""
    inner = model.get_model() if hasattr(model, "get_model") else getattr(model, "model", model)
    proj = getattr(inner, "mm_projector", None)
    if isinstance(proj, nn.Linear):
        return proj, None
    if isinstance(proj, nn.Sequential) and len(proj) and isinstance(proj[0], nn.Linear):
        return proj[0], 0
    raise MaskError(f"Eagle mm_projector of type {type(proj).__name__} is not a Linear or a Sequential "
                    "starting with one (mm_projector_type linear / mlpNx_gelu); cannot map tower channels")


def _set_projector_first_linear(model: Any, new: nn.Linear, slot: int | None) -> None:
    inner = model.get_model() if hasattr(model, "get_model") else getattr(model, "model", model)
    if slot is None:
        inner.mm_projector = new
    else:
        inner.mm_projector[slot] = new


class Eagle1Adapter(EncoderAdapter):
    """Find, mask and release the towers of a loaded Eagle-1 model.

    ``expected``: the catalog's encoder names for this checkpoint; the
    checkpoint's ``mm_vision_tower`` must list the same towers in the same
    order, otherwise loading fails (a wrong catalog entry must not silently
    mask the wrong tower).
    """

    family = "eagle1"
    modes = ("zero", "drop")
    drop_equals_zero = True

    def __init__(self, expected: Sequence[str] | None = None, checkpoint: str = "model") -> None:
        self.expected = tuple(expected) if expected else None
        self.checkpoint = checkpoint

    def upstream_names(self, model: Any) -> list[str]:
        raw = getattr(getattr(model, "config", None), "mm_vision_tower", None)
        if not isinstance(raw, str) or not raw:
            raise MaskError(f"{self.checkpoint}: config.mm_vision_tower is missing or not a string ({raw!r})")
        return [n.strip() for n in raw.split(";") if n.strip()]

    def encoders(self, model: Any) -> list[EncoderInfo]:
        fusion = _fusion(model)
        towers = list(fusion.vision_towers)
        if any(isinstance(t, ZeroTower) for t in towers) or getattr(fusion, "_encred_masked", None):
            raise MaskError(f"{self.checkpoint}: the vision towers are already masked "
                            f"({getattr(fusion, '_encred_masked', '?')}); load the model afresh to mask again")
        upstream = self.upstream_names(model)
        names = [short_name(n) for n in upstream]
        if len(names) != len(towers):
            raise MaskError(
                f"{self.checkpoint}: mm_vision_tower lists {len(names)} towers ({';'.join(upstream)}) but the "
                f"loaded fusion holds {len(towers)} ({', '.join(type(t).__name__ for t in towers)})")
        if len(set(names)) != len(names):
            raise MaskError(f"{self.checkpoint}: mm_vision_tower names a tower twice ({';'.join(upstream)})")
        if self.expected is not None and tuple(names) != self.expected:
            raise MaskError(
                f"{self.checkpoint}: the checkpoint's towers are {', '.join(names)} (mm_vision_tower="
                f"{';'.join(upstream)!r}) but the catalog entry lists {', '.join(self.expected)}; fix "
                "model_wrappers/catalog.py so masks name the right towers")
        n_tok = int(fusion.num_tokens)
        infos = [EncoderInfo(name=n, index=i, output_shape=(n_tok, int(t.hidden_size)), module=t,
                             params=count_params(t)) for i, (n, t) in enumerate(zip(names, towers))]
        first, _ = _projector_first_linear(model)
        width = sum(e.output_shape[1] for e in infos)
        if first.in_features != width:
            raise MaskError(f"{self.checkpoint}: the towers' hidden sizes sum to {width} "
                            f"({', '.join(f'{e.name}={e.output_shape[1]}' for e in infos)}) but the projector's "
                            f"first Linear reads {first.in_features} channels")
        return infos

    def install(self, model: Any, spec: MaskSpec, infos: list[EncoderInfo]) -> None:
        fusion = _fusion(model)
        if spec.mode == "zero":
            for e in infos:
                if spec.is_masked(e.name):
                    dtype, device = _tower_dtype_device(e.module)
                    fusion.vision_towers[e.index] = ZeroTower(
                        e.name, e.output_shape[1], e.output_shape[0], fusion.input_image_size, dtype, device)
        elif spec.mode == "drop":
            first, slot = _projector_first_linear(model)
            cols: list[int] = []
            start = 0
            for e in infos:
                width = e.output_shape[1]
                if not spec.is_masked(e.name):
                    cols.extend(range(start, start + width))
                start += width
            new = nn.Linear(len(cols), first.out_features, bias=first.bias is not None,
                            device=first.weight.device, dtype=first.weight.dtype)
            with torch.no_grad():
                index = torch.tensor(cols, dtype=torch.long, device=first.weight.device)
                new.weight.copy_(first.weight.index_select(1, index))
                if first.bias is not None:
                    new.bias.copy_(first.bias)
            new.requires_grad_(first.weight.requires_grad)
            _set_projector_first_linear(model, new, slot)
            kept = [t for e, t in zip(infos, fusion.vision_towers) if not spec.is_masked(e.name)]
            if not kept:  # nothing left to concatenate: one zero-width block keeps torch.cat well defined
                dtype, device = _tower_dtype_device(infos[0].module)
                kept = [ZeroTower("+".join(spec.masked), 0, infos[0].output_shape[0], fusion.input_image_size,
                                  dtype, device)]
            fusion.vision_towers = nn.ModuleList(kept)
            if hasattr(model, "config"):
                model.config.mm_hidden_size = len(cols)
        else:  # MaskSpec.validate already refused other modes
            raise MaskError(f"Eagle-1 does not support mask mode {spec.mode!r}")
        fusion._encred_masked = f"{','.join(spec.masked)} ({spec.mode})"

    def release(self, model: Any, spec: MaskSpec, infos: list[EncoderInfo]) -> int:
        freed = 0
        for e in infos:
            if spec.is_masked(e.name) and e.module is not None:
                freed += count_params(e.module)
                e.module.to("meta")  # drop the storage even if something else still references the module
                e.module = None
        gc.collect()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
        return freed


def _tower_dtype_device(module: nn.Module) -> tuple[torch.dtype, torch.device]:
    for t in list(module.parameters()) + list(module.buffers()):
        return t.dtype, t.device
    return torch.get_default_dtype(), torch.device("cpu")


class EncredEagle(EncredMixin, Eagle):
    """VLMEvalKit's ``Eagle`` wrapper with a tower mask and greedy decoding.

    Loading, prompts, image handling and generation are VLMEvalKit's
    (``vlmeval.vlm.eagle_x.Eagle``: ``load_pretrained_model(...,
    device_map="cuda")``, the ``vicuna_v1`` template, float16 images).  This
    class only removes our keywords (``mask``, ``mask_mode``,
    ``encred_base``), applies the mask right after the parent has loaded, and
    replaces the parent's sampling defaults (``do_sample=True``,
    ``temperature=0.2``, ``top_p=0.5``) by greedy decoding, because
    encoder-contribution scores compare runs and need them reproducible.  Any
    generation keyword given by the entry or the user (``do_sample``,
    ``max_new_tokens``, ...) still wins.
    """

    adapter: Eagle1Adapter

    def __init__(self, model_path: str = "NVEagle/Eagle-X5-7B", **kwargs: Any) -> None:
        spec, base = self.pop_encred_kwargs(kwargs)
        expected = None
        if base:
            from vlmeval_encred.registry import get_base

            expected = get_base(base).encoders
        self.adapter = Eagle1Adapter(expected=expected, checkpoint=model_path)
        overrides = dict(kwargs)
        super().__init__(model_path=model_path, **kwargs)
        self.kwargs = self.generation_kwargs(self.kwargs, overrides)
        self.apply_mask(self.model, spec, base or model_path)
        log.debug("vlmeval-encred: %s generation settings %s", base or model_path, self.kwargs)
