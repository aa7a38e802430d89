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

Sweep: ``EncredEagle.sweep_support`` (:class:`Eagle1Sweep`, at the end of this
file) lets ``encred sweep`` run each tower once per image for all subsets.
Token budgets (``..._keepNN[_llm]``): :mod:`.tokens`, installed by ``EncredEagle``.

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
                "model_wrappers/eagle1/catalog.py so masks name the right towers")
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
            cols = kept_columns([(e.name, e.output_shape[1]) for e in infos], spec.masked)
            _set_projector_first_linear(model, drop_columns(first, cols), slot)
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


def kept_columns(layout: Sequence[tuple[str, int]], masked: Sequence[str]) -> list[int]:
    """Input channels of the projector that belong to the towers not in ``masked``.

    ``layout``: (name, width) of each block of the concatenation, in fusion order."""
    cols: list[int] = []
    start = 0
    for name, width in layout:
        if name not in masked:
            cols.extend(range(start, start + width))
        start += width
    return cols


def drop_columns(first: nn.Linear, cols: Sequence[int]) -> nn.Linear:
    """A copy of ``first`` that reads only input channels ``cols`` (weight columns sliced, bias kept)."""
    new = nn.Linear(len(cols), first.out_features, bias=first.bias is not None,
                    device=first.weight.device, dtype=first.weight.dtype)
    with torch.no_grad():
        index = torch.tensor(list(cols), dtype=torch.long, device=first.weight.device)
        new.weight.copy_(first.weight.index_select(1, index))
        if first.bias is not None:
            new.bias.copy_(first.bias)
    new.requires_grad_(first.weight.requires_grad)
    return new


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
    tokens: Any = None
    """The token budget (:class:`vlmeval_encred.tokens.TokenSpec`) of a ``..._keepNN`` variant."""
    token_state: Any = None
    token_report: dict[str, Any] | None = None
    """What the last ``generate_inner`` kept (token-budget variants; see ``tokens.py``)."""

    def __init__(self, model_path: str = "NVEagle/Eagle-X5-7B", **kwargs: Any) -> None:
        self.tokens = self.pop_token_kwargs(kwargs)
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
        if self.tokens is not None:
            from .tokens import install_tokens

            self.token_state = install_tokens(self, self.tokens, base or model_path)
        self.pruner = self.token_state.pruner if self.token_state is not None else None
        log.debug("vlmeval-encred: %s generation settings %s", base or model_path, self.kwargs)

    def generate_inner(self, message: list[dict[str, Any]], dataset: str | None = None) -> str:
        """VLMEvalKit's ``generate_inner``; a token budget acts inside upstream's ``generate`` and is
        disarmed afterwards, whatever happens, so the model never carries one sample's state into
        the next."""
        state = self.token_state
        if state is None:
            return super().generate_inner(message, dataset)
        state.report = None
        try:
            return super().generate_inner(message, dataset)
        finally:
            state.disarm()
            self.token_report = state.report


# --- encred sweep support: every tower once per image, shared by all subsets -------------------
# :class:`~vlmeval_encred.sweep.protocol.SweepSupport` for ``EncredEagle``.
#
# * ``prepare`` runs VLMEvalKit's own ``Eagle.generate_inner`` up to the point where it calls
#   ``model.generate`` and keeps what it would pass (prompt ids, image tensor, image sizes,
#   generation keywords), so prompts and image processing cannot drift from a per-variant run.
# * ``encode`` runs upstream's fusion (``MultiBackboneChannelConcatenationVisionTower.forward``)
#   once per needed tower, each time with a one-tower list, so every block comes out exactly as
#   in the full concatenation (resized input, grid interpolation, its own dtype).
# * ``fuse`` builds each subset's concatenation as a masked variant's fusion would (``zero``:
#   zeros of the tower's width and dtype in its slot; ``drop``: the kept blocks and the
#   projector's first Linear with only their columns, made by the adapter's own
#   ``drop_columns``), projects it, and splices it into the prompt with upstream's own
#   ``prepare_inputs_labels_for_multimodal`` (what upstream's ``generate`` calls), giving one
#   ``inputs_embeds`` row per subset: a :class:`~vlmeval_encred.sweep.decoding.DecodeRequest`.
# * ``fuse_and_generate`` decodes that request with the shared-prefix greedy decoder
#   (:func:`~vlmeval_encred.sweep.decoding.decode`) when the wrapper's generation settings
#   are plain greedy decoding; otherwise (sampling, beams, a repetition penalty, ...: things the
#   decoder does not implement) it runs upstream's ``generate`` with the subsets' features in
#   place of ``encode_images``, one subset at a time (or all at once with ``batch_decode``).


class _Captured(Exception):
    """Raised by the stand-in for ``model.generate`` once ``generate_inner`` has called it."""


def _layout(wrapper: Any) -> list[EncoderInfo]:
    report = getattr(wrapper, "encred_report", None)
    if report is None:
        raise MaskError(f"{type(wrapper).__name__} has no encred_report: load it through EncredEagle")
    return list(report.encoders)


def cut_after_eos(row: torch.Tensor, eos: set[int]) -> torch.Tensor:
    """Tokens up to and including the first end-of-sequence token (what a batch of one returns)."""
    for pos, tok in enumerate(row.tolist()):
        if tok in eos:
            return row[:pos + 1]
    return row


# Generation settings (wrapper.kwargs over the model's generation_config) under which upstream's
# generate is plain greedy decoding: value each must have (None: unset).  Anything else set in
# wrapper.kwargs and not named in _HARMLESS makes the sweep fall back to generate.
_GREEDY_NEUTRAL: dict[str, Any] = {
    "do_sample": False, "num_beams": 1, "num_beam_groups": 1, "penalty_alpha": None, "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "min_length": 0, "min_new_tokens": None,
    "bad_words_ids": None, "force_words_ids": None, "constraints": None, "sequence_bias": None,
    "suppress_tokens": None, "begin_suppress_tokens": None, "forced_bos_token_id": None,
    "forced_eos_token_id": None, "forced_decoder_ids": None, "exponential_decay_length_penalty": None,
    "guidance_scale": None, "max_time": None, "stop_strings": None, "prompt_lookup_num_tokens": None,
    "assistant_model": None, "logits_processor": None, "stopping_criteria": None, "prefix_allowed_tokens_fn": None,
}
_HARMLESS = {"max_new_tokens", "use_cache", "eos_token_id", "pad_token_id", "bos_token_id",
             "temperature", "top_p", "top_k", "typical_p", "epsilon_cutoff", "eta_cutoff", "length_penalty",
             "early_stopping", "num_return_sequences"}
"""Keys that do not change greedy decoding at one beam (sampling warpers are off without
``do_sample``; ``num_return_sequences`` is checked to be 1 below)."""


def greedy_settings(wrapper: Any) -> tuple[int, list[int]] | str:
    """(max_new_tokens, end-of-sequence ids) when the wrapper decodes plain greedily, else the reason
    it does not (why the sweep then keeps upstream's ``generate``)."""
    kwargs = dict(getattr(wrapper, "kwargs", {}) or {})
    config = getattr(wrapper.model, "generation_config", None)

    def value(key: str) -> Any:
        return kwargs[key] if key in kwargs else getattr(config, key, None)

    for key, neutral in _GREEDY_NEUTRAL.items():
        v = value(key)
        if v is None or v == neutral or (neutral is None and v in (0, [], {})) or (key == "do_sample" and not v):
            continue
        return f"{key}={v!r}"
    extra = sorted(k for k in kwargs if k not in _GREEDY_NEUTRAL and k not in _HARMLESS)
    if extra:
        return f"generation keyword(s) {', '.join(extra)}"
    if (value("num_return_sequences") or 1) != 1:
        return f"num_return_sequences={value('num_return_sequences')!r}"
    max_new = kwargs.get("max_new_tokens")
    if not isinstance(max_new, int) or max_new < 1:
        return f"max_new_tokens={max_new!r} (the decoder needs an explicit count)"
    eos = value("eos_token_id")
    if eos is None:
        eos = wrapper.tokenizer.eos_token_id
    eos_ids = [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None]
    return max_new, eos_ids


class _DecodeLM:
    """The Eagle model as :func:`~vlmeval_encred.sweep.decoding.greedy_subsets` calls it.

    Why not the model itself: with no cache given, transformers 4.44's ``LlamaModel`` (this
    family's pinned version) returns a legacy tuple cache, and the decoder needs a
    ``DynamicCache`` to repeat and select rows; an empty ``DynamicCache`` in its place gives the
    same numbers.  The forward is upstream's ``EagleLlamaForCausalLM.forward`` with
    ``inputs_embeds`` (which skips its multimodal preparation).  One instance per model (kept on
    the wrapper), so the decoder's prefix cache is reused across samples."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None,
                past_key_values: Any = None, use_cache: bool = True) -> Any:
        if past_key_values is None:
            from transformers import DynamicCache

            past_key_values = DynamicCache()
        return self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                          past_key_values=past_key_values, use_cache=use_cache, return_dict=True)

    __call__ = forward


def _decode_lm(wrapper: Any) -> _DecodeLM:
    lm = wrapper.__dict__.get("_encred_decode_lm")
    if lm is None or lm.model is not wrapper.model:
        lm = wrapper.__dict__["_encred_decode_lm"] = _DecodeLM(wrapper.model)
    return lm


def finish_like_generate_inner(tokenizer: Any, rows: list[list[int]]) -> list[str]:
    """What VLMEvalKit's ``Eagle.generate_inner`` does to ``generate``'s ids (batch of one, new
    tokens only): ``batch_decode(..., skip_special_tokens=True)[0].strip()``, per row."""
    return [tokenizer.batch_decode([row], skip_special_tokens=True)[0].strip() for row in rows]


class Eagle1Sweep:
    """SweepSupport of Eagle-1 (see the comment above)."""

    batch_decode: bool = False
    """Fallback path only (settings that are not plain greedy): run ``generate`` on all of a
    call's subsets as one batch instead of one after another.  Off by default, because a batch is
    not bit-exact against a batch of one (on the tiny real-class model, float32, CPU: later
    decoding steps differed by ~1e-7) and a subset's answer must be its variant's."""

    def prepare(self, wrapper: Any, message: list[dict[str, Any]], dataset: str | None) -> dict[str, Any]:
        if getattr(wrapper, "tokens", None) is not None:
            raise MaskError("Eagle sweep: token-budget variants are not swept (the sweep covers the mask lattice); "
                            "load the base without tokens=")
        model = wrapper.model
        seen: dict[str, Any] = {}

        def capture(*args: Any, **kwargs: Any) -> None:
            seen["args"], seen["kwargs"] = args, kwargs
            raise _Captured

        model.generate = capture  # instance attribute: shadows the class's generate for this call only
        try:
            wrapper.generate_inner(message, dataset)
        except _Captured:
            pass
        finally:
            del model.generate
        if "args" not in seen:
            raise MaskError("VLMEvalKit's Eagle.generate_inner returned without calling model.generate")
        kwargs = dict(seen["kwargs"])
        input_ids = seen["args"][0] if seen["args"] else kwargs.pop("inputs")
        return {"input_ids": input_ids, "images": kwargs.pop("images"),
                "image_sizes": kwargs.pop("image_sizes", None), "generate_kwargs": kwargs}

    def encode(self, wrapper: Any, inputs: dict[str, Any], encoders: Sequence[str]) -> dict[str, torch.Tensor]:
        fusion = _fusion(wrapper.model)
        towers = {e.name: e.module for e in _layout(wrapper)}
        missing = [n for n in encoders if towers.get(n) is None]
        if missing:
            raise MaskError(f"Eagle sweep: towers {missing} were masked when the model was loaded")
        every = fusion.vision_towers
        out: dict[str, torch.Tensor] = {}
        try:
            with torch.inference_mode():
                for name in encoders:
                    fusion.vision_towers = nn.ModuleList([towers[name]])
                    out[name] = fusion(inputs["images"])
        finally:
            fusion.vision_towers = every
        return out

    def _features(self, wrapper: Any, layout: list[EncoderInfo], feats: dict[str, Any], n_img: int,
                  mask_mode: str) -> torch.Tensor:
        """The projected image features of one subset, as that masked variant computes them."""
        model = wrapper.model
        fusion = _fusion(model)
        first, slot = _projector_first_linear(model)
        projector = model.get_model().mm_projector
        loaded_mode = wrapper.encred_report.spec.mode
        loaded_masked = set(wrapper.encred_report.spec.masked)
        present = {id(t): t for t in fusion.vision_towers}
        blocks = []
        for e in layout:
            if feats.get(e.name) is not None:
                blocks.append(feats[e.name])
            elif mask_mode == "zero":
                ref = e.module if e.module is not None else next(
                    (t for t in present.values() if getattr(t, "encred_masked_name", None) == e.name), None)
                if ref is None:
                    raise MaskError(f"Eagle sweep: no tower or zero block for {e.name} in the loaded model")
                dtype, device = ((ref.dtype, ref.device) if isinstance(ref, ZeroTower) else _tower_dtype_device(ref))
                blocks.append(torch.zeros(n_img, e.output_shape[0], e.output_shape[1], dtype=dtype, device=device))
        with torch.inference_mode():
            if mask_mode == "zero":
                if loaded_mode == "drop" and loaded_masked:
                    raise MaskError("Eagle sweep: mode 'zero' needs a model loaded without 'drop' masking")
                return projector(torch.cat(blocks, dim=-1))
            # drop: the columns of the kept towers, counted in the loaded projector's own layout
            loaded = [(e.name, e.output_shape[1]) for e in layout
                      if not (loaded_mode == "drop" and e.name in loaded_masked)]
            masked = [e.name for e in layout if feats.get(e.name) is None]
            linear = drop_columns(first, kept_columns(loaded, masked))
            if not blocks:  # every tower dropped: one zero-width block, as the adapter's fusion gives
                dtype, device = _tower_dtype_device(first)
                blocks = [torch.zeros(n_img, layout[0].output_shape[0], 0, dtype=dtype, device=device)]
            x = linear(torch.cat(blocks, dim=-1))
            return x if slot is None else projector[slot + 1:](x)

    def _subset_features(self, wrapper: Any, inputs: dict[str, Any], features_per_subset: list[dict[str, Any]],
                         mask_mode: str) -> list[torch.Tensor]:
        if mask_mode not in Eagle1Adapter.modes:
            raise MaskError(f"Eagle-1 does not support mask mode {mask_mode!r}")
        layout = _layout(wrapper)
        n_img = inputs["images"].shape[0]
        with torch.inference_mode():
            return [self._features(wrapper, layout, f, n_img, mask_mode) for f in features_per_subset]

    def fuse(self, wrapper: Any, inputs: dict[str, Any], features_per_subset: list[dict[str, Any]],
             mask_mode: str) -> Any:
        """One ``inputs_embeds`` row per subset, built by upstream's own
        ``prepare_inputs_labels_for_multimodal`` (what its ``generate`` calls before decoding),
        ready for :func:`~vlmeval_encred.sweep.decoding.decode`.  Raises :class:`MaskError` with the
        reason when the wrapper's generation settings are not plain greedy decoding."""
        from vlmeval_encred.sweep.decoding import DecodeRequest

        settings = greedy_settings(wrapper)
        if isinstance(settings, str):
            raise MaskError(f"Eagle sweep: the wrapper's generation is not plain greedy decoding ({settings}); "
                            "the shared-prefix decoder cannot reproduce it (fuse_and_generate uses generate)")
        max_new, eos_ids = settings
        stacked = torch.cat(self._subset_features(wrapper, inputs, features_per_subset, mask_mode))
        embeds = self._embeds(wrapper, inputs, stacked)
        tokenizer = wrapper.tokenizer
        return DecodeRequest(lm=_decode_lm(wrapper), embeds=embeds,
                             embed_tokens=wrapper.model.get_model().embed_tokens, eos_ids=eos_ids,
                             max_new_tokens=max_new,
                             finish=lambda rows: finish_like_generate_inner(tokenizer, rows))

    def fuse_and_generate(self, wrapper: Any, inputs: dict[str, Any], features_per_subset: list[dict[str, Any]],
                          mask_mode: str) -> list[str]:
        if not isinstance(greedy_settings(wrapper), str):
            from vlmeval_encred.sweep.decoding import decode

            return decode([self.fuse(wrapper, inputs, features_per_subset, mask_mode)])[0]
        # Not plain greedy (sampling, beams, penalties...): the decoder implements none of these,
        # so upstream's generate decodes, with each subset's features in place of encode_images.
        feats = self._subset_features(wrapper, inputs, features_per_subset, mask_mode)
        groups = [list(range(len(feats)))] if self.batch_decode else [[i] for i in range(len(feats))]
        out: list[str] = []
        for group in groups:
            out.extend(self._generate(wrapper, inputs, torch.cat([feats[i] for i in group])))
        return out

    @staticmethod
    def _rows(inputs: dict[str, Any], stacked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list | None]:
        """Prompt ids repeated per subset, a placeholder image batch of the right size, image sizes."""
        n_img = inputs["images"].shape[0]
        rows_n = stacked.shape[0] // n_img
        ids = inputs["input_ids"].repeat(rows_n, 1)
        sizes = list(inputs["image_sizes"] or []) * rows_n or None
        # upstream only needs the image tensor's batch size and rank (encode_images is ours)
        return ids, inputs["images"].new_empty((stacked.shape[0], 0, 0, 0)), sizes

    @staticmethod
    def _with_features(model: Any, stacked: torch.Tensor) -> Any:
        """Install ``stacked`` (subsets x images) as ``model.encode_images``' answer (an instance
        attribute: the caller deletes it in a ``finally``)."""
        def encode_images(given: torch.Tensor) -> torch.Tensor:
            if given.shape[0] != stacked.shape[0]:
                raise MaskError(f"Eagle sweep: upstream asked for {given.shape[0]} images, have {stacked.shape[0]}")
            return stacked

        model.encode_images = encode_images

    def _embeds(self, wrapper: Any, inputs: dict[str, Any], stacked: torch.Tensor) -> torch.Tensor:
        """Upstream's ``prepare_inputs_labels_for_multimodal`` on the repeated prompt, with
        ``stacked`` in place of ``encode_images``: (subsets, T, d), unpadded (one prompt)."""
        model = wrapper.model
        ids, images, sizes = self._rows(inputs, stacked)
        self._with_features(model, stacked)
        try:
            with torch.inference_mode():
                _, _, _, _, embeds, _ = model.prepare_inputs_labels_for_multimodal(
                    ids, None, None, None, None, images, image_sizes=sizes)
        finally:
            del model.encode_images
        return embeds

    def _generate(self, wrapper: Any, inputs: dict[str, Any], stacked: torch.Tensor) -> list[str]:
        """Upstream's ``generate`` with ``stacked`` (subsets x images) in place of ``encode_images``."""
        model = wrapper.model
        ids, images, sizes = self._rows(inputs, stacked)
        self._with_features(model, stacked)
        try:
            with torch.inference_mode():
                out = model.generate(ids, images=images, image_sizes=sizes, **inputs["generate_kwargs"])
        finally:
            del model.encode_images
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = wrapper.tokenizer.eos_token_id
        eos_set = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        rows = [cut_after_eos(row, eos_set).tolist() for row in out]
        return finish_like_generate_inner(wrapper.tokenizer, rows)


EncredEagle.sweep_support = Eagle1Sweep()
