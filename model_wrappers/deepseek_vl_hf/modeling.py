"""DeepSeek-VL 7B through transformers' ``DeepseekVLHybridForConditionalGeneration``.

Architecture (transformers ``models/deepseek_vl_hybrid/modeling_deepseek_vl_hybrid.py``),
inside ``DeepseekVLHybridModel``:

* ``siglip`` (low resolution): ``vision_model``, called through
  ``get_low_res_image_features(pixel_values)``; its ``last_hidden_state`` is
  ``(B, T, C_siglip)``.
* ``sam`` (high resolution): ``high_res_vision_model`` (SAM ViT), its global
  attention feature through ``high_res_vision_neck``, both resampled by
  ``high_res_vision_proj`` to the SigLIP grid and mixed with the learned
  scalar ``high_res_vision_alpha``; called through
  ``get_high_res_image_features(high_res_pixel_values)``; output ``(B, T, C_sam)``.
* Fusion point: ``aligner(low, high)`` -- per-branch ``Linear`` layers
  (``vision_proj``, ``high_res_vision_proj``), concatenation ``[high, low]``
  along channels, GELU, ``proj``.

Masking (mode ``zero`` only).  The masked branch's ``get_*_image_features``
is replaced, on this model instance, by a function that returns zeros of the
branch's exact per-image output shape, in the aligner's dtype and on its
device; the branch's modules are then deleted (set to ``None``) so their
weights are not resident.  This is bit-identical to running the branch and
zero-filling its output before the aligner (the paper's semantics) -- see
tests/test_deepseek_vl_hf.py.

Why there is no ``drop`` mode: the aligner's per-branch Linear layers have
biases, so a zero branch still contributes ``GELU(bias)`` to half of the
channels that ``proj`` reads, and the two branches share one token grid and a
fixed-width concatenation.  Removing a branch exactly would need a different
``proj`` (half its input columns) that the checkpoint never trained; there is
no structural removal that leaves the rest of the computation unchanged, so
we do not pretend to offer one.

This module imports only torch and ``vlmeval.vlm.base`` at import time: it is
imported while ``vlmeval.config`` executes.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from vlmeval.vlm.base import BaseModel

from vlmeval_encred.masking import EncoderAdapter, EncoderInfo, MaskError, MaskSpec, count_params
from vlmeval_encred.wrapper import EncredMixin, resolve_dtype

# Module attributes of DeepseekVLHybridModel that make up each branch (modules or parameters).
_BRANCH_PARTS: dict[str, tuple[str, ...]] = {
    "low": ("vision_model",),
    "high": ("high_res_vision_model", "high_res_vision_neck", "high_res_vision_proj", "high_res_vision_alpha"),
}


def _short_name(model_type: str) -> str:
    """``siglip_vision_model`` -> ``siglip``; ``sam_vision_model`` -> ``sam``."""
    return str(model_type).split("_")[0].lower()


def _inner(model: Any) -> Any:
    """The ``DeepseekVLHybridModel`` of a ...ForConditionalGeneration, or the model itself."""
    inner = getattr(model, "model", model)
    for attr in ("aligner", "get_low_res_image_features", "get_high_res_image_features"):
        if not hasattr(inner, attr):
            raise MaskError(
                f"{type(model).__name__} is not a DeepseekVLHybrid model: no attribute {attr!r} on "
                f"{type(inner).__name__} (expected transformers' DeepseekVLHybridModel)")
    return inner


def _conv_out(side: int, conv: torch.nn.Conv2d) -> int:
    k, s, p, d = conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0]
    return (side + 2 * p - d * (k - 1) - 1) // s + 1


def _part_params(inner: Any, parts: tuple[str, ...]) -> int:
    total = 0
    for name in parts:
        obj = getattr(inner, name, None)
        if isinstance(obj, torch.nn.Parameter):
            total += 0 if obj.is_meta else obj.numel()
        else:
            total += count_params(obj)
    return total


class DeepseekVLHybridAdapter(EncoderAdapter):
    """Encoder masking for ``DeepseekVLHybrid{Model,ForConditionalGeneration}``.

    Encoders are named from the loaded config's sub-model types
    (``vision_config`` then ``high_res_vision_config``: ``siglip``, ``sam``);
    their output shapes at the aligner's input are read from the loaded modules.
    """

    family = "deepseek_vl_hf"
    modes = ("zero",)
    drop_equals_zero = None  # no drop mode; see the module docstring

    def encoders(self, model: Any) -> list[EncoderInfo]:
        inner = _inner(model)
        cfg = inner.config
        aligner = inner.aligner
        infos: list[EncoderInfo] = []
        if getattr(inner, "_encred_infos", None) is not None:
            return inner._encred_infos  # after release the modules are gone; shapes were recorded

        # Low resolution (SigLIP): tokens from the patch grid, channels = aligner input.
        low_cfg = cfg.vision_config
        emb = getattr(inner.vision_model, "embeddings", None)
        low_tokens = getattr(emb, "num_patches", None) or (low_cfg.image_size // low_cfg.patch_size) ** 2
        low_ch = aligner.vision_proj.in_features
        if getattr(low_cfg, "hidden_size", low_ch) != low_ch:
            raise MaskError(f"DeepseekVLHybrid: vision_config.hidden_size={low_cfg.hidden_size} but the aligner's "
                            f"vision_proj expects {low_ch} channels; the checkpoint config is inconsistent")
        infos.append(EncoderInfo(_short_name(low_cfg.model_type), 0, (int(low_tokens), int(low_ch)),
                                 inner.vision_model, _part_params(inner, _BRANCH_PARTS["low"])))

        # High resolution (SAM): the projection resamples to 4*output_size and applies its convs.
        proj = inner.high_res_vision_proj
        side = 4 * proj.output_size
        convs = [m for m in proj.modules() if isinstance(m, torch.nn.Conv2d)]
        for conv in convs:
            side = _conv_out(side, conv)
        high_ch = aligner.high_res_vision_proj.in_features
        if convs and convs[-1].out_channels != high_ch:
            raise MaskError(f"DeepseekVLHybrid: high_res_vision_proj gives {convs[-1].out_channels} channels but "
                            f"the aligner's high_res_vision_proj expects {high_ch}")
        if side * side != low_tokens:
            raise MaskError(f"DeepseekVLHybrid: SAM branch gives {side}x{side} tokens, SigLIP {low_tokens}; "
                            "the aligner concatenates them per token, so they must agree")
        infos.append(EncoderInfo(_short_name(cfg.high_res_vision_config.model_type), 1,
                                 (int(side * side), int(high_ch)), inner.high_res_vision_model,
                                 _part_params(inner, _BRANCH_PARTS["high"])))
        if infos[0].name == infos[1].name:
            raise MaskError(f"DeepseekVLHybrid: both towers have model type {infos[0].name!r}; cannot name them")
        return infos

    @staticmethod
    def _branch(info: EncoderInfo) -> str:
        return "low" if info.index == 0 else "high"

    def install(self, model: Any, spec: MaskSpec, infos: list[EncoderInfo]) -> None:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        inner = _inner(model)
        aligner = inner.aligner
        for info in infos:
            if not spec.is_masked(info.name):
                continue
            branch = self._branch(info)
            ref = aligner.vision_proj.weight if branch == "low" else aligner.high_res_vision_proj.weight
            shape = info.output_shape

            def zeros(pixel_values: torch.Tensor, *_args: Any, _shape=shape, _ref=ref, **_kwargs: Any):
                # The tower is never called: only the batch size of its input is used.
                out = torch.zeros((pixel_values.shape[0], *_shape), dtype=_ref.dtype, device=_ref.device)
                return BaseModelOutputWithPooling(last_hidden_state=out)

            zeros.__name__ = f"encred_zero_{info.name}"
            attr = "get_low_res_image_features" if branch == "low" else "get_high_res_image_features"
            setattr(inner, attr, zeros)  # instance attribute shadows the class method
        inner._encred_infos = [EncoderInfo(i.name, i.index, i.output_shape, None if spec.is_masked(i.name)
                                           else i.module, i.params) for i in infos]

    def release(self, model: Any, spec: MaskSpec, infos: list[EncoderInfo]) -> int:
        inner = _inner(model)
        freed = 0
        for info in infos:
            if not spec.is_masked(info.name):
                continue
            parts = _BRANCH_PARTS[self._branch(info)]
            freed += _part_params(inner, parts)
            for name in parts:
                if name in inner._parameters:
                    inner.register_parameter(name, None)
                else:
                    setattr(inner, name, None)
            info.module = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return freed


# --- shared with model_wrappers/deepseek_vl (the original package's family) ---------------------

# Generation settings that make ``generate`` something other than plain greedy decoding of
# ``inputs_embeds`` (logits processors, other decoding strategies, extra stopping rules):
# attribute -> the values that leave greedy argmax decoding unchanged.
_NOT_GREEDY: dict[str, tuple[Any, ...]] = {
    "do_sample": (False, None), "num_beams": (1, None), "num_beam_groups": (1, None),
    "num_return_sequences": (1, None), "penalty_alpha": (None, 0, 0.0), "dola_layers": (None,),
    "repetition_penalty": (None, 1, 1.0), "encoder_repetition_penalty": (None, 1, 1.0),
    "no_repeat_ngram_size": (None, 0), "encoder_no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,),
    "min_length": (None, 0), "min_new_tokens": (None, 0), "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,), "suppress_tokens": (None,), "begin_suppress_tokens": (None,),
    "sequence_bias": (None,), "guidance_scale": (None, 1, 1.0), "exponential_decay_length_penalty": (None,),
    "stop_strings": (None,), "max_time": (None,), "watermarking_config": (None,), "constraints": (None,),
    "force_words_ids": (None,), "prompt_lookup_num_tokens": (None,), "assistant_model": (None,),
}


def greedy_settings(generation_config: Any, kwargs: dict[str, Any]) -> tuple[Any, str | None]:
    """(the generation config ``generate`` would use, the reason it is not plain greedy or None).

    ``generate`` merges the model's ``generation_config`` with the call's keywords; the shared-prefix
    decoder (:func:`vlmeval_encred.sweep.decoding.decode`) reproduces only argmax decoding without
    logits processors, so anything else keeps the family's ``generate`` path."""
    import copy

    cfg = copy.deepcopy(generation_config)
    extra = cfg.update(**kwargs)  # returns the keywords that are not config attributes
    for name, neutral in _NOT_GREEDY.items():
        value = kwargs.get(name) if name in (extra or {}) else getattr(cfg, name, None)
        if value not in neutral:
            return cfg, f"{name}={value!r}"
    if kwargs.get("max_new_tokens") is None:
        return cfg, "no max_new_tokens"
    return cfg, None


def eos_ids(generation_config: Any, tokenizer: Any) -> list[int]:
    """End-of-sequence ids ``generate`` stops at: the config's, else the tokenizer's."""
    eos = generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    return sorted(set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None})


@dataclass
class GridSelection:
    """The fusion stage's choice for one prompt (docs/tokens.md): what each image keeps."""

    kept: list[int]
    """Kept visual positions of the prompt, ascending."""
    per_image: list[torch.Tensor]
    """Per image: kept indices into its T-token grid (ascending LongTensor)."""
    weights: list[dict[str, float]]
    """Per image: the encoders' effective-rank weights."""


def select_grid_tokens(branches: dict[str, torch.Tensor], tokens: Any, visual: Sequence[int]) -> GridSelection:
    """The fusion stage of DeepSeek-VL: SigLIP and SAM share one T-token grid at the aligner input.

    ``branches``: each *unmasked* encoder's aligner input (n_images, T, C); ``visual``: the
    prompt's image positions, n_images x T of them in image order.  Both families (the original
    package and transformers' port) score the same tensors, so both call this."""
    from vlmeval_encred.tokens import TokenError, fusion_select

    if not branches:
        raise TokenError("the fusion stage needs at least one unmasked encoder to score tokens")
    n_img, t = next(iter(branches.values())).shape[:2]
    if len(visual) != n_img * t:
        raise TokenError(f"fusion stage: {len(visual)} image positions for {n_img} images of {t} tokens")
    kept, per_image, weights = [], [], []
    for b in range(n_img):
        sel = fusion_select({name: f[b] for name, f in branches.items()}, tokens)
        kept += [visual[b * t + j] for j in sel.kept.tolist()]
        per_image.append(sel.kept)
        weights.append(sel.weights)
    return GridSelection(kept, per_image, weights)


def check_catalog_order(base: str, found: list[str]) -> None:
    """The catalog's encoder names for ``base`` must be the ones the loaded model has, in its order."""
    if not base:
        return
    from vlmeval_encred.registry import RegistryError, get_base

    try:
        expected = get_base(base).encoders
    except RegistryError:
        return  # used outside the catalog (e.g. a user's own config): nothing to compare with
    if tuple(found) != tuple(expected):
        raise MaskError(f"catalog entry {base!r} lists encoders {', '.join(expected)} but the loaded model has "
                        f"{', '.join(found)}; fix model_wrappers/{get_base(base).family}/catalog.py so masks name the "
                        "right towers")


class EncredDeepseekVLHybrid(EncredMixin, BaseModel):
    """VLMEvalKit wrapper: DeepseekVLHybrid loaded with ``from_pretrained``, optionally masked.

    ``model_path`` is a Hub id, a local checkpoint directory, or an
    ``encred-tiny:<name>`` path (built offline by :mod:`vlmeval_encred.tiny_models`).
    ``device``: ``'cuda'``/``'cpu'``/``'cuda:1'``; ``'auto'`` spreads the model with
    accelerate's ``device_map='auto'``; ``None`` picks cuda when available.
    Decoding is greedy unless the entry/user overrides it (``gen_kwargs``).
    """

    INSTALL_REQ = False
    INTERLEAVE = True
    adapter = DeepseekVLHybridAdapter()

    def __init__(self, model_path: str = "deepseek-community/deepseek-vl-7b-chat", torch_dtype: Any = "bfloat16",
                 device: str | None = None, max_new_tokens: int = 512, **gen_kwargs: Any) -> None:
        self.tokens = self.pop_token_kwargs(gen_kwargs)
        spec, base = self.pop_encred_kwargs(gen_kwargs)
        super().__init__()
        from transformers import AutoProcessor, DeepseekVLHybridForConditionalGeneration

        from vlmeval_encred.tiny_models import resolve_model_path

        self.model_path = model_path
        path = resolve_model_path(model_path)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        load_kw: dict[str, Any] = dict(dtype=resolve_dtype(torch_dtype))
        if device != "cpu":
            load_kw["device_map"] = device  # 'auto' or an explicit device: weights go straight there
        self.processor = AutoProcessor.from_pretrained(path)
        self.tokenizer = self.processor.tokenizer
        self.model = DeepseekVLHybridForConditionalGeneration.from_pretrained(path, **load_kw).eval()
        check_catalog_order(base, self.adapter.names(self.model))
        self.apply_mask(self.model, spec, base or model_path)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.kwargs = self.generation_kwargs(dict(max_new_tokens=max_new_tokens, use_cache=True, pad_token_id=pad),
                                             gen_kwargs)
        self.pruner = None
        self.token_report: dict[str, Any] | None = None
        if self.tokens is not None:
            self.pruner = install_tokens(self, self.tokens, base or model_path)

    # -- prompt building -------------------------------------------------------------------
    def build_inputs(self, message: list[dict[str, Any]]) -> Any:
        """Chat-template prompt and processor tensors for a VLMEvalKit message list."""
        from PIL import Image

        content: list[dict[str, Any]] = []
        images = []
        for item in message:
            if item["type"] == "image":
                content.append({"type": "image"})
                with Image.open(item["value"]) as im:
                    images.append(im.convert("RGB"))
            elif item["type"] == "text":
                content.append({"type": "text", "text": item["value"]})
            else:
                raise ValueError(f"{type(self).__name__}: unsupported message item type {item['type']!r}")
        prompt = self.processor.apply_chat_template([{"role": "user", "content": content}],
                                                    add_generation_prompt=True, tokenize=False)
        inputs = self.processor(text=prompt, images=images or None, return_tensors="pt")
        device = self.model.device
        dtype = self.model.dtype
        return {k: (v.to(device, dtype) if torch.is_floating_point(v) else v.to(device)) for k, v in inputs.items()}

    def generate_inner(self, message: list[dict[str, Any]], dataset: str | None = None) -> str:
        inputs = self.build_inputs(message)
        if self.tokens is not None:
            return generate_with_tokens(self, inputs)
        with torch.inference_mode():
            out = self.model.generate(**inputs, **self.kwargs)
        new = out[0, inputs["input_ids"].shape[1]:]
        return self.tokenizer.decode(new, skip_special_tokens=True).strip()


# --- token budgets (docs/tokens.md) -----------------------------------------------------------
# fusion: per image, the T positions of the shared grid are scored by the L2 norm of each
# unmasked branch's tokens at the aligner input (SigLIP as DeepSeek-VL uses it has no [CLS] and
# no pooling head in this path; SAM is windowed with no [CLS]: neither has an attention signal
# over the grid), combined with effective-rank weights.  The aligner runs on all T tokens (it is
# per-token), the kept rows enter the LLM in place of the kept placeholders; the pruned
# placeholders are removed from input_ids and the remaining tokens keep their original
# position_ids (given to generate(), which extends them by +1 per new token).
# llm: LlmPruner on language_model.layers; the visual positions are the image placeholders.


def install_tokens(wrapper: Any, tokens: Any, name: str, layers: Sequence[Any] | None = None) -> Any:
    """Check ``tokens`` against the loaded model; return the LlmPruner for the llm stage (else None).

    ``layers``: the language model's decoder layers (default: DeepseekVLHybrid's); the original
    package's family passes its own Llama's."""
    from vlmeval_encred.tokens import LlmPruner, TokenError

    if tokens.stage == "fusion":
        r = wrapper.encred_report
        if r is not None and len(r.spec.masked) >= len(r.encoders):
            raise TokenError(f"{name}: every encoder is masked; the fusion stage has no encoder to score tokens")
        return None
    return LlmPruner(wrapper.model.model.language_model.layers if layers is None else layers, tokens)


def _visual_positions(wrapper: Any, input_ids: torch.Tensor) -> list[int]:
    return (input_ids[0] == wrapper.model.config.image_token_id).nonzero().flatten().tolist()


def fusion_token_inputs(wrapper: Any, inputs: dict[str, Any], branches: tuple[Any, Any] | None = None,
                        masked: Sequence[str] | None = None, tokens: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fusion stage: (the model inputs with the pruned placeholders removed, the report).

    The returned inputs (``input_ids``, ``attention_mask``, original ``position_ids``, the kept
    image rows as ``mm_encoder_outputs``) go to ``model(...)`` or ``model.generate(...)``.
    ``branches`` (the sweep): the (low, high) features at the aligner input, a masked branch as
    zeros, with ``masked`` and ``tokens`` for that row; by default the wrapper's own."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    from vlmeval_encred.tokens import TokenError, splice_positions

    ids = inputs["input_ids"]
    if ids.shape[0] != 1:
        raise TokenError("token budgets run one sample at a time (batch size 1)")
    visual = _visual_positions(wrapper, ids)
    inner = wrapper.model.model
    if masked is None:
        masked = wrapper.encred_report.spec.masked if wrapper.encred_report else ()
    masked = set(masked)
    tokens = tokens if tokens is not None else wrapper.tokens
    names = {i.index: i.name for i in wrapper.adapter.encoders(wrapper.model)}
    if branches is None:
        low = inner.get_low_res_image_features(inputs["pixel_values"]).last_hidden_state
        high = inner.get_high_res_image_features(inputs["high_res_pixel_values"]).last_hidden_state
    else:
        low, high = branches
    fused = inner.aligner(low, high)  # (n_images, T, D): what get_image_features returns
    sel = select_grid_tokens({names[i]: f for i, f in ((0, low), (1, high)) if names[i] not in masked},
                             tokens, visual)
    kept_vis, weights = sel.kept, sel.weights
    rows = [fused[b, k.to(fused.device)] for b, k in enumerate(sel.per_image)]
    idx = torch.tensor(splice_positions(ids.shape[1], visual, kept_vis), device=ids.device)
    new_ids = ids[:, idx]
    mm = {"image": BaseModelOutputWithPooling(pooler_output=torch.cat(rows, 0).unsqueeze(0))}
    gen = dict(input_ids=new_ids, attention_mask=torch.ones_like(new_ids), position_ids=idx.unsqueeze(0),
               mm_encoder_outputs=mm)
    return gen, {"stage": "fusion", "visual": visual, "kept": kept_vis, "weights": weights}


def generate_with_tokens(wrapper: Any, inputs: dict[str, Any]) -> str:
    """``generate_inner`` with the wrapper's token budget; sets ``wrapper.token_report``."""
    from vlmeval_encred.tokens import TokenError

    ids = inputs["input_ids"]
    if ids.shape[0] != 1:
        raise TokenError("token budgets run one sample at a time (batch size 1)")
    with torch.inference_mode():
        if wrapper.tokens.stage == "llm":
            visual = _visual_positions(wrapper, ids)
            wrapper.pruner.arm(visual, ids.shape[1])
            try:
                out = wrapper.model.generate(**inputs, **wrapper.kwargs)
            finally:
                wrapper.pruner.disarm()
            wrapper.token_report = {"stage": "llm", "layer": wrapper.tokens.layer, "visual": visual,
                                    "kept": list(wrapper.pruner.kept_visual or visual)}
            start = ids.shape[1]
        else:
            gen, wrapper.token_report = fusion_token_inputs(wrapper, inputs)
            out = wrapper.model.generate(**gen, **wrapper.kwargs)
            start = gen["input_ids"].shape[1]
    return wrapper.tokenizer.decode(out[0, start:], skip_special_tokens=True).strip()


# --- encred sweep support: share encoder outputs across every subset of a sample ---------------
# :class:`~.protocol.SweepSupport` for ``EncredDeepseekVLHybrid`` (transformers' DeepseekVLHybrid).
#
# * ``prepare``: the wrapper's own ``build_inputs`` (what ``generate_inner`` calls).
# * ``encode``: ``get_low_res_image_features`` (siglip) and
#   ``get_high_res_image_features`` (sam) -- the tensors the aligner receives
#   and the ones masking replaces by zeros.
# * ``fuse``: the aligner once per subset (batch = that sample's images, as in a per-variant
#   run), its rows put into the prompt's embeddings at the image placeholders by the model's
#   own ``get_placeholder_mask`` and ``masked_scatter`` (what ``DeepseekVLHybridModel.forward``
#   does with ``mm_encoder_outputs``); one row per subset, decoded by
#   :func:`vlmeval_encred.sweep.decoding.decode` (shared template prefix, finished rows dropped).
# * ``fuse_and_generate``: ``decode([fuse(...)])[0]`` under plain greedy settings; otherwise one
#   ``generate`` over all subsets with the fused features as ``mm_encoder_outputs``, rows cut
#   after their first end-of-sequence token (a batch of one stops there).


def _sweep_inner(wrapper: Any) -> Any:
    return wrapper.model.model


def _branches(wrapper: Any) -> dict[str, tuple[str, Any]]:
    """encoder name -> (branch, EncoderInfo); branch 'low' (SigLIP) or 'high' (SAM)."""
    infos = wrapper.adapter.encoders(wrapper.model)
    return {i.name: ("low" if i.index == 0 else "high", i) for i in infos}


def cut_after_eos(row: torch.Tensor, eos: set[int]) -> torch.Tensor:
    """Tokens up to and including the first end-of-sequence token (what a batch of one returns)."""
    for pos, tok in enumerate(row.tolist()):
        if tok in eos:
            return row[:pos + 1]
    return row


class DeepseekVLHybridSweep:
    """SweepSupport of the DeepseekVLHybrid family (see the comment above)."""

    token_stages_swept = ("fusion", "llm")
    """Rows with a budget go through :func:`sweep_budget_rows` (batch 1, the variant's own functions)."""

    def prepare(self, wrapper: Any, message: list[dict[str, Any]], dataset: str | None) -> Any:
        return wrapper.build_inputs(message)

    def encode(self, wrapper: Any, inputs: Any, encoders: Sequence[str]) -> dict[str, torch.Tensor]:
        inner = _sweep_inner(wrapper)
        branches = _branches(wrapper)
        out: dict[str, torch.Tensor] = {}
        with torch.inference_mode():
            for name in encoders:
                branch, _ = branches[name]
                if branch == "low":
                    out[name] = inner.get_low_res_image_features(inputs["pixel_values"]).last_hidden_state
                else:
                    out[name] = inner.get_high_res_image_features(inputs["high_res_pixel_values"]).last_hidden_state
        return out

    @staticmethod
    def _fused(wrapper: Any, inputs: Any, features_per_subset: list[dict[str, Any]], mask_mode: str) -> torch.Tensor:
        """The aligner's output per subset, concatenated: (S * n_images, T, D)."""
        if mask_mode != "zero":
            raise ValueError(f"DeepseekVLHybrid supports mask mode 'zero' only, not {mask_mode!r}")
        aligner = _sweep_inner(wrapper).aligner
        with torch.inference_mode():
            return torch.cat([aligner(*_branch_inputs(wrapper, inputs, feats)) for feats in features_per_subset], dim=0)

    def fuse(self, wrapper: Any, inputs: Any, features_per_subset: list[dict[str, Any]], mask_mode: str) -> Any:
        from vlmeval_encred.sweep.decoding import DecodeRequest

        cfg, why = greedy_settings(wrapper.model.generation_config, wrapper.kwargs)
        if why is not None:
            raise ValueError(f"{type(wrapper).__name__}: generation is not plain greedy ({why}); "
                             "the shared-prefix decoder would not reproduce it")
        inner = _sweep_inner(wrapper)
        fused = self._fused(wrapper, inputs, features_per_subset, mask_mode)
        ids = inputs["input_ids"]
        n_img = inputs["pixel_values"].shape[0]
        rows = []
        with torch.inference_mode():
            text = inner.get_input_embeddings()(ids)
            for s in range(len(features_per_subset)):
                feats = fused[s * n_img:(s + 1) * n_img].reshape(-1, text.shape[-1])
                where = inner.get_placeholder_mask(ids, text, feats)
                rows.append(text.masked_scatter(where, feats.to(text.device, text.dtype)))
        tok = wrapper.tokenizer

        def finish(generated: list[list[int]]) -> list[str]:
            # generate_inner: decode the new tokens (a batch of one ends at the first EOS)
            return [tok.decode(row, skip_special_tokens=True).strip() for row in generated]

        return DecodeRequest(lm=wrapper.model, embeds=torch.cat(rows, dim=0),
                             embed_tokens=wrapper.model.get_input_embeddings(), eos_ids=eos_ids(cfg, tok),
                             max_new_tokens=int(wrapper.kwargs["max_new_tokens"]), finish=finish)

    def fuse_and_generate(self, wrapper: Any, inputs: Any, features_per_subset: list[dict[str, Any]],
                          mask_mode: str, tokens: Sequence[Any] | None = None) -> list[str]:
        if tokens is not None and any(t is not None for t in tokens):
            return sweep_budget_rows(self, wrapper, inputs, features_per_subset, mask_mode, tokens)
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        from vlmeval_encred.sweep.decoding import decode

        cfg, why = greedy_settings(wrapper.model.generation_config, wrapper.kwargs)
        if why is None:
            return decode([self.fuse(wrapper, inputs, features_per_subset, mask_mode)])[0]
        # Not plain greedy (sampling, beams, a repetition penalty...): the shared-prefix decoder
        # implements argmax only, so generate() decodes the batch with the wrapper's settings.
        S = len(features_per_subset)
        image_features = self._fused(wrapper, inputs, features_per_subset, mask_mode)
        with torch.inference_mode():
            # Pixels stay out of the batch: generate() would encode them; the features are given
            # as ``mm_encoder_outputs`` (transformers' own entry for pre-encoded images), which
            # is what generate() itself builds from the pixels before the prefill.
            batched = {k: v.repeat(S, *([1] * (v.dim() - 1))) for k, v in inputs.items()
                       if torch.is_tensor(v) and k not in ("pixel_values", "high_res_pixel_values")}
            mm = {"image": BaseModelOutputWithPooling(pooler_output=image_features)}
            out = wrapper.model.generate(**batched, mm_encoder_outputs=mm, **wrapper.kwargs)
        start = inputs["input_ids"].shape[1]
        eos = set(eos_ids(cfg, wrapper.tokenizer))
        return [wrapper.tokenizer.decode(cut_after_eos(row[start:], eos), skip_special_tokens=True).strip()
                for row in out]


def _branch_inputs(wrapper: Any, inputs: Any, feats: dict[str, Any]) -> tuple[Any, Any]:
    """(low, high) at the aligner input for one row: the shared features, zeros of the branch's
    per-image shape (in the aligner's dtype, as masking makes them) where ``feats`` has None."""
    aligner = _sweep_inner(wrapper).aligner
    n_img = inputs["pixel_values"].shape[0]
    parts = {}
    for name, (branch, info) in _branches(wrapper).items():
        ref = aligner.vision_proj.weight if branch == "low" else aligner.high_res_vision_proj.weight
        t = feats.get(name)
        parts[branch] = t if t is not None else torch.zeros((n_img, *info.output_shape), dtype=ref.dtype,
                                                            device=ref.device)
    return parts["low"], parts["high"]


@torch.inference_mode()
def sweep_budget_rows(support: Any, wrapper: Any, inputs: Any, features_per_subset: list[dict[str, Any]],
                      mask_mode: str, tokens: Sequence[Any]) -> list[str]:
    """Rows of the sweep with a token budget (``tokens[i]``; None rows go to the batched path).

    Each budget row runs at batch 1 with its variant's own steps on the shared branch outputs:
    fusion -- :func:`fusion_token_inputs` then ``generate``; llm -- an
    :class:`~vlmeval_encred.tokens.LlmPruner` installed for the row (removed after it) and
    ``generate`` with the fused image rows as ``mm_encoder_outputs``.  Batch 1 because the pruner
    handles one sequence and a budget gives each row its own length."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    from vlmeval_encred.tokens import LlmPruner

    if mask_mode != "zero":
        raise ValueError(f"DeepseekVLHybrid supports mask mode 'zero' only, not {mask_mode!r}")
    if len(tokens) != len(features_per_subset):
        raise ValueError(f"{len(tokens)} token budgets for {len(features_per_subset)} rows")
    out: list[str | None] = [None] * len(tokens)
    plain = [i for i, t in enumerate(tokens) if t is None]
    if plain:
        for i, a in zip(plain, support.fuse_and_generate(wrapper, inputs, [features_per_subset[i] for i in plain],
                                                         mask_mode)):
            out[i] = a
    ids = inputs["input_ids"]
    text = {k: v for k, v in inputs.items() if k not in ("pixel_values", "high_res_pixel_values")}
    for i, spec in enumerate(tokens):
        if spec is None:
            continue
        feats = features_per_subset[i]
        low, high = _branch_inputs(wrapper, inputs, feats)
        if spec.stage == "fusion":
            masked = [n for n in _branches(wrapper) if feats.get(n) is None]
            gen, _ = fusion_token_inputs(wrapper, inputs, (low, high), masked, spec)
            new = wrapper.model.generate(**gen, **wrapper.kwargs)[0, gen["input_ids"].shape[1]:]
        else:
            mm = {"image": BaseModelOutputWithPooling(pooler_output=_sweep_inner(wrapper).aligner(low, high))}
            pruner = LlmPruner(wrapper.model.model.language_model.layers, spec)
            try:
                pruner.arm(_visual_positions(wrapper, ids), ids.shape[1])
                new = wrapper.model.generate(**text, mm_encoder_outputs=mm, **wrapper.kwargs)[0, ids.shape[1]:]
            finally:
                pruner.remove()
        out[i] = wrapper.tokenizer.decode(new, skip_special_tokens=True).strip()
    return [str(a) for a in out]


EncredDeepseekVLHybrid.sweep_support = DeepseekVLHybridSweep()
