"""Cambrian-1: encoder masking for the Spatial Vision Aggregator (SVA).

Upstream (github cambrian-mllm/cambrian, ``cambrian/model/cambrian_arch.py``):
each auxiliary tower ``i`` of ``config.mm_vision_tower_aux_list`` is encoded,
projected by ``mm_projector_aux_i`` (Linear, GELU, Linear, LayerNorm), and
the projected features are cut into local windows by
``rearrange_vision_tower_features_inference``; learnable queries plus a global
context (mean of projected tower 0) cross-attend to the windows of every tower
in the connector (``vision_sampler_<g>``) and again in ``vision_sampler_layers``
inside the LLM, which read the same rearranged features.

Hook points (instance attributes on the loaded model; no upstream file is edited):

* ``encode_images``: towers that are not run yield a placeholder of shape
  (B, tokens, 0) instead of running;
* ``mm_projector_aux_i`` of such a tower becomes :class:`ZeroFeatures`
  (zeros of the projected shape), so the global context of a masked tower 0
  is zero;
* ``rearrange_vision_tower_features_inference`` (and ``..._train``): its
  result is post-processed per mode, which reaches connector and in-LLM SVA.

Modes:

``zero``  the authors' semantics: masked towers' projected features are zero
          where they are rearranged; the global context is untouched.  When
          tower 0 is masked that needs tower 0's real features, so tower 0 (and
          its projector) is then kept and run *for the global context only*;
          this is the one case in which a masked tower runs (recorded in the
          report's notes).  Every other masked tower is neither run nor resident.
``zero_context``  as ``zero``, but the global context is zero too when tower 0
          is masked; no masked tower is run.
``drop``  masked towers' keys are excluded from every cross-attention (their
          attention-mask entries are False, so they get exactly zero weight);
          a dropped tower 0 gives a zero global context, which is an exact
          removal of the context term because ``proj_context`` has no bias.
          With every tower dropped the cross-attention has no keys at all and
          contributes zero (its output projection has no bias).

The wrapper uses each checkpoint's trained conversation template
(:func:`conv_mode_for`) and carries a ``sweep_support`` (:class:`CambrianSweep`) for
``encred sweep``.  Importing this module imports neither ``cambrian`` nor ``vlmeval``:
the VLMEvalKit wrapper class is built on first access (module ``__getattr__``).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import re
import types
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from vlmeval_encred.masking import EncoderAdapter, EncoderInfo, MaskError, MaskReport, MaskSpec, count_params
from vlmeval_encred.wrapper import lazy_wrapper_getattr

FAMILY = "cambrian"


def short_name(raw: str) -> str:
    """Short encoder name for an entry of ``mm_vision_tower_aux_list``."""
    low = raw.lower()
    for key, short in (("siglip", "siglip"), ("convnext", "convnext"), ("dinov2", "dinov2"), ("clip", "clip")):
        if key in low:
            return short
    return re.sub(r"[^a-z0-9]", "", low.rsplit("/", 1)[-1]) or "tower"


class ZeroFeatures(nn.Module):
    """Stands in for ``mm_projector_aux_i`` of a tower that is not run: zeros of the projected shape."""

    def __init__(self, out_dim: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.out_dim, self.dtype = out_dim, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*x.shape[:-1], self.out_dim, dtype=self.dtype, device=x.device)


class ReleasedTower:
    """What stays of a released tower in ``vision_tower_aux_list``: its name and preprocessing only."""

    def __init__(self, tower: Any) -> None:
        self.vision_tower_name = getattr(tower, "vision_tower_name", "?")
        self.image_processor = getattr(tower, "image_processor", None)
        self.hidden_size = getattr(tower, "hidden_size", None)
        self.is_loaded = True

    def __call__(self, *_a: Any, **_k: Any) -> torch.Tensor:
        raise RuntimeError(f"vlmeval-encred: tower {self.vision_tower_name!r} is masked and was released; "
                           "it must not be run")

    def to(self, *_a: Any, **_k: Any) -> "ReleasedTower":
        return self


@dataclass
class _State:
    masked: tuple[int, ...]
    mode: str
    not_run: tuple[int, ...]
    freed_projector_params: int = 0
    notes: list[str] = field(default_factory=list)


def _meta(model: Any) -> Any:
    return model.get_model() if hasattr(model, "get_model") else model


class CambrianAdapter(EncoderAdapter):
    family = FAMILY
    modes = ("zero", "zero_context", "drop")
    drop_equals_zero = False

    def encoders(self, model: Any) -> list[EncoderInfo]:
        m = _meta(model)
        cfg = m.config
        if getattr(cfg, "mm_projector_type", None) != "sva":
            raise MaskError(f"Cambrian model with mm_projector_type={getattr(cfg, 'mm_projector_type', None)!r}: "
                            "only the SVA connector ('sva', all released Cambrian-1 checkpoints) is supported")
        raw = list(getattr(cfg, "mm_vision_tower_aux_list", None) or [])
        lens = list(getattr(cfg, "mm_vision_tower_aux_token_len_list", None) or [])
        towers = m.get_vision_tower_aux_list()
        if not raw or len(raw) != len(lens) or len(towers) != len(raw):
            raise MaskError("Cambrian config: mm_vision_tower_aux_list and mm_vision_tower_aux_token_len_list "
                            f"must be non-empty and of equal length (got {raw!r}, {lens!r}, {len(towers)} towers)")
        names = [short_name(r) for r in raw]
        if len(set(names)) != len(names):
            raise MaskError(f"Cambrian towers {raw!r} give duplicate short names {names}")
        return [EncoderInfo(n, i, (int(lens[i]), int(cfg.vision_hidden_size)), towers[i],
                            count_params(towers[i]) if isinstance(towers[i], nn.Module) else 0)
                for i, n in enumerate(names)]

    def install(self, model: Any, spec: MaskSpec, infos: list[EncoderInfo]) -> None:
        if getattr(model, "_encred_cambrian", None) is not None:
            raise MaskError("a mask is already installed on this Cambrian model")
        m = _meta(model)
        masked = tuple(e.index for e in infos if spec.is_masked(e.name))
        context_only = spec.mode == "zero" and 0 in masked
        st = _State(masked, spec.mode, tuple(i for i in masked if not (context_only and i == 0)))
        if context_only:
            st.notes.append(f"mode 'zero' with {infos[0].name} (tower 0) masked: it is kept and run only to "
                            "compute the SVA global context, as in the authors' code; use 'zero_context' "
                            "or 'drop' to not run it")
        lens = [e.output_shape[0] for e in infos]
        for i in st.not_run:
            proj = getattr(m, f"mm_projector_aux_{i}")
            st.freed_projector_params += count_params(proj)
            dtype = next(proj.parameters()).dtype
            setattr(m, f"mm_projector_aux_{i}", ZeroFeatures(int(m.config.vision_hidden_size), dtype))

        def encode_images(self_: Any, image_aux_list: Any) -> list[torch.Tensor]:
            towers = _meta(self_).get_vision_tower_aux_list()
            out = []
            for i, (img, tower) in enumerate(zip(image_aux_list, towers)):
                out.append(img.new_zeros((img.shape[0], lens[i], 0)) if i in st.not_run else tower(img))
            return out

        model.encode_images = types.MethodType(encode_images, model)
        for meth in ("rearrange_vision_tower_features_inference", "rearrange_vision_tower_features_train"):
            original = getattr(model, meth, None)
            if original is not None:
                setattr(model, meth, self._post_rearrange(original, st))
        if spec.mode == "drop" and len(masked) == len(infos):
            for mod in m.modules():
                if type(mod).__name__ == "MultiKVCrossAttention":
                    mod.forward = types.MethodType(_no_keys_forward, mod)
            st.notes.append("drop with every tower masked: the SVA cross-attentions have no keys and add zero")
        model._encred_cambrian = st

    @staticmethod
    def _post_rearrange(original: Any, st: _State) -> Any:
        def wrapped(*args: Any, **kwargs: Any):
            feats, masks = original(*args, **kwargs)
            feats, masks = list(feats), list(masks)
            for i in st.masked:
                if st.mode == "drop":
                    masks[i] = torch.zeros_like(masks[i], dtype=torch.bool)
                else:
                    feats[i] = torch.zeros_like(feats[i])
            return feats, masks

        wrapped.__wrapped__ = original
        return wrapped

    def release(self, model: Any, spec: MaskSpec, infos: list[EncoderInfo]) -> int:
        st: _State = model._encred_cambrian
        m = _meta(model)
        towers = m.get_vision_tower_aux_list()
        freed = st.freed_projector_params
        for i in st.not_run:
            t = towers[i]
            if isinstance(t, ReleasedTower):
                continue
            freed += count_params(t) if isinstance(t, nn.Module) else 0
            towers[i] = ReleasedTower(t)
            infos[i].module = None
            del t
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return freed

    def apply(self, model: Any, spec: MaskSpec, model_name: str = "model") -> MaskReport:
        report = super().apply(model, spec, model_name)
        st = getattr(model, "_encred_cambrian", None)
        if st is not None:
            report.notes.extend(st.notes)
        # Upstream keeps the towers in a plain list: count the resident ones explicitly.
        registered = {id(p) for p in model.parameters()}
        for t in _meta(model).get_vision_tower_aux_list():
            if isinstance(t, nn.Module) and not any(id(p) in registered for p in t.parameters()):
                report.resident_params += count_params(t)
        return report


def _no_keys_forward(self: Any, queries: torch.Tensor, *_latents_and_masks: Any) -> torch.Tensor:
    """Cross-attention over an empty key set: zero (plus the output bias, if any)."""
    o = self.o_proj
    out = queries.new_zeros(queries.shape[0], queries.shape[1], o.out_features)
    return out + o.bias if o.bias is not None else out


ADAPTER = CambrianAdapter()


def _check_registry(base: str, names: list[str]) -> None:
    if not base:
        return
    from vlmeval_encred.registry import get_base

    expected = get_base(base).encoders
    if tuple(names) != tuple(expected):
        raise MaskError(f"registry entry {base!r} lists encoders {', '.join(expected)} but the loaded checkpoint's "
                        f"mm_vision_tower_aux_list gives {', '.join(names)}; fix model_wrappers/cambrian/catalog.py")


# The conversation template each released checkpoint was trained with (upstream
# inference.py).  VLMEvalKit's Cambrian wrapper picks '8b' -> llama_3, '13b' -> vicuna_v1,
# anything else -> chatml_direct, which gives cambrian-phi3-3b the wrong template; the
# template also fixes where the image tokens sit, which the in-LLM SVA reads at the
# checkpoint's config.image_position.
CONV_MODES: tuple[tuple[str, str], ...] = (("phi3", "phi3"), ("34b", "chatml_direct"),
                                           ("13b", "vicuna_v1"), ("8b", "llama_3"))


def conv_mode_for(model_path: str) -> str | None:
    """The trained template for a checkpoint, from its name (last path component); None if unknown."""
    name = str(model_path).rstrip("/").rsplit("/", 1)[-1].lower()
    for key, mode in CONV_MODES:
        if key in name:
            return mode
    return None


def refuse_tokens(kwargs: dict[str, Any]) -> None:
    """Stop a ``tokens=`` loader keyword with the reason the catalog gives (``TOKEN_REFUSALS``):
    neither token stage is defined for Cambrian-1, and a VLMEvalKit config can pass the keyword
    without a registry name (which the registry would refuse first)."""
    from vlmeval_encred.tokens import TokenError, TokenSpec

    from .catalog import TOKEN_REFUSALS

    spec = TokenSpec.from_kwargs(kwargs.get("tokens"))
    if spec is not None:
        raise TokenError(f"{kwargs.get('encred_base') or 'Cambrian-1'}: the {spec.stage} token stage is not defined "
                         f"for family cambrian: {TOKEN_REFUSALS[spec.stage]}")


def _build_wrapper() -> type:
    from vlmeval.vlm.cambrian import Cambrian
    from PIL import Image

    from vlmeval_encred.wrapper import EncredMixin, log

    class EncredCambrian(EncredMixin, Cambrian):
        """VLMEvalKit's ``Cambrian`` wrapper with encoder masking and overridable greedy decoding.

        Keywords: ``mask``, ``mask_mode``, ``encred_base`` (from the registry),
        ``conv_mode`` (else the checkpoint's trained template from its name, see
        :func:`conv_mode_for`, else VLMEvalKit's choice), and generation settings
        (``max_new_tokens`` default 2048 as VLMEvalKit, ``do_sample`` ...).
        """

        adapter = ADAPTER

        def __init__(self, model_path: str = "nyu-visionx/cambrian-8b", **kwargs: Any) -> None:
            refuse_tokens(kwargs)
            spec, base = self.pop_encred_kwargs(kwargs)
            conv_mode = kwargs.pop("conv_mode", None) or conv_mode_for(model_path)
            super().__init__(model_path=model_path)
            if conv_mode:
                self.conv_mode = conv_mode
            else:
                log.warning("vlmeval-encred: no known Cambrian template for %r; using VLMEvalKit's choice %r "
                            "(pass conv_mode=... to override)", model_path, self.conv_mode)
            self.gen_kwargs = self.generation_kwargs({"max_new_tokens": 2048, "use_cache": True}, kwargs)
            _check_registry(base, ADAPTER.names(self.model))
            self.apply_mask(self.model, spec, base or model_path)

        def model_inputs(self, message, dataset=None) -> dict[str, Any]:
            """What ``generate_inner`` gives the model: VLMEvalKit's own prompt and image processing."""
            prompt, image_path = self.message_to_promptimg(message, dataset=dataset)
            image = Image.open(image_path).convert("RGB")
            input_ids, image_tensor, image_sizes, _ = self.process(image, prompt)
            return {"input_ids": input_ids.to(device=self.model.device, non_blocking=True),
                    "images": image_tensor, "image_sizes": image_sizes}

        def generate_inner(self, message, dataset=None):
            inputs = self.model_inputs(message, dataset)
            with torch.inference_mode():
                out = self.model.generate(inputs["input_ids"], images=inputs["images"],
                                          image_sizes=inputs["image_sizes"], **self.gen_kwargs)
            return self.tokenizer.batch_decode(out, skip_special_tokens=True)[0].strip()

    EncredCambrian.__module__ = __name__
    EncredCambrian.sweep_support = CambrianSweep()
    return EncredCambrian


__getattr__ = lazy_wrapper_getattr(__name__, "EncredCambrian", _build_wrapper)


# --- encred sweep support: share encoder outputs across every subset of a sample ---------------
# :class:`~vlmeval_encred.sweep.protocol.SweepSupport` for ``EncredCambrian``.
#
# * ``prepare``: the wrapper's ``model_inputs`` (what ``generate_inner`` calls).
# * ``encode``: each kept tower once, through its ``mm_projector_aux_i`` -- the projected
#   features that masking replaces by zeros (tower and projector are what subsets share).
# * ``fuse``: per subset, upstream's own ``prepare_inputs_labels_for_multimodal`` (connector
#   SVA, unpadding, newline tokens) with the subset's features in place of the towers'
#   outputs and the subset's mask applied where the adapter applies it; the rows and the
#   per-row inputs of the in-LLM SVA go into a :class:`DecodeRequest` for the shared-prefix
#   decoder (:func:`vlmeval_encred.sweep.decoding.decode`), whose ``lm`` is a
#   :class:`_SvaPrefill` (why that is exact: its docstring).
# * ``fuse_and_generate``: ``decode([fuse(...)])[0]`` when the wrapper decodes plain greedy;
#   otherwise (sampling, beams, penalties ...: logits processors the decoder does not apply)
#   one ``generate`` over the subsets, as upstream's ``generate()`` after its own fusion.

_SVA_ATTRS = ("vision_tower_aux_feature_list", "vision_tower_aux_attention_masks_list",
              "final_vision_feature_size", "global_context_feature")
"""What upstream's ``generate()`` sets on the model for the SVA layers inside the LLM."""


def _eos_ids(wrapper: Any) -> set[int]:
    eos = getattr(wrapper.model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = wrapper.tokenizer.eos_token_id
    return set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}


def _cut_after_eos(row: torch.Tensor, eos: set[int]) -> torch.Tensor:
    for pos, tok in enumerate(row.tolist()):
        if tok in eos:
            return row[:pos + 1]
    return row


# GenerationConfig fields that change greedy decoding when set away from these values
# (the decoder takes the argmax of the raw logits and stops on end-of-sequence or length).
_GREEDY_NEUTRAL: dict[str, Any] = {
    "do_sample": False, "num_beams": 1, "num_beam_groups": 1, "num_return_sequences": 1, "penalty_alpha": None,
    "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "force_words_ids": None, "min_length": 0,
    "min_new_tokens": None, "suppress_tokens": None, "begin_suppress_tokens": None, "forced_bos_token_id": None,
    "forced_eos_token_id": None, "forced_decoder_ids": None, "sequence_bias": None, "guidance_scale": None,
    "exponential_decay_length_penalty": None, "constraints": None, "low_memory": None, "stop_strings": None,
    "assistant_model": None, "prompt_lookup_num_tokens": None}


def greedy_obstacle(wrapper: Any) -> str | None:
    """Why the wrapper's ``generate`` is not plain greedy decoding (what the shared-prefix
    decoder reproduces), or None.  Reads the model's generation config updated by the
    wrapper's ``gen_kwargs``, as ``generate`` does."""
    cfg = copy.deepcopy(wrapper.model.generation_config)
    unused = cfg.update(**wrapper.gen_kwargs)
    if unused:
        return f"generation arguments {sorted(unused)} are not generation-config fields"
    for key, neutral in _GREEDY_NEUTRAL.items():
        value = getattr(cfg, key, None)  # None: unset (transformers 5's defaults), neutral
        if value is not None and value != neutral and not (neutral in (0, None) and not value):
            return f"{key}={value!r}"
    if cfg.max_new_tokens is None:
        return "no max_new_tokens (the length limit would be max_length, counted differently)"
    return None


def _finish(tokenizer: Any, rows: list[list[int]]) -> list[str]:
    """Generated ids -> answers, as ``generate_inner`` post-processes its ``generate`` output."""
    return [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in rows]


@functools.lru_cache(maxsize=1)
def _cache_class() -> type:
    """transformers' ``DynamicCache`` with the two batch operations the shared-prefix decoder
    calls (``batch_repeat_interleave``, ``batch_select_indices``); transformers 4.37, which
    Cambrian pins, has neither."""
    from transformers import DynamicCache

    class SweepCache(DynamicCache):
        def batch_repeat_interleave(self, repeats: int) -> None:
            """Repeat each row ``repeats`` times (the shared prefix's cache, once per subset)."""
            for layer in range(len(self.key_cache)):
                self.key_cache[layer] = self.key_cache[layer].repeat_interleave(repeats, dim=0)
                self.value_cache[layer] = self.value_cache[layer].repeat_interleave(repeats, dim=0)

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            """Keep the rows ``indices`` (finished rows leave the batch)."""
            for layer in range(len(self.key_cache)):
                self.key_cache[layer] = self.key_cache[layer][indices]
                self.value_cache[layer] = self.value_cache[layer][indices]

    return SweepCache


@contextlib.contextmanager
def _patched(*changes: tuple[Any, str, Any]) -> Any:
    """Set (or, with value ``_ABSENT``, delete) instance attributes for the block; restore after."""
    saved = []
    try:
        for obj, name, value in changes:
            had = name in vars(obj)
            saved.append((obj, name, vars(obj).get(name), had))
            if value is _ABSENT:
                if had:
                    delattr(obj, name)
            else:
                setattr(obj, name, value)
        yield
    finally:
        for obj, name, value, had in reversed(saved):
            if had:
                setattr(obj, name, value)
            elif name in vars(obj):
                delattr(obj, name)


_ABSENT = object()


class _SvaPrefill:
    """The language model as the shared-prefix decoder drives it, for one sample's subsets.

    Upstream's Cambrian LLM runs its SVA layers (after the decoder layers
    ``start_of_vision_sampler_layers + j * stride``) only in a forward that gets
    ``inputs_embeds`` while the model carries the attributes its ``generate()`` sets
    (:data:`_SVA_ATTRS`): that is the prompt forward; later steps get ``input_ids`` and no
    features.  Those layers overwrite the hidden states at the fixed positions
    ``config.image_position + [0, h (w + 1))`` (the query grid with its newline tokens)
    from each row's own tower features.  The decoder calls ``forward`` with embeddings
    every time, so this object decides, per call, what upstream would have done:

    * the call holding the whole image span of every row (the prompt after the shared
      prefix): the attributes set, one block of rows per subset, and ``image_position``
      shifted by the cached length, because upstream indexes the forward's own hidden
      states (absolute positions only in a full prefill);
    * every other call (the shared prefix, the decoding steps): no attributes, as in
      upstream's later steps.  Finished rows leave the batch only in decoding steps,
      which read no features, so nothing per row has to follow them.
    * The shared prefix must end before the image: the SVA makes image positions depend
      on more than the embeddings the prefix test compares.  If the rows' embeddings agree
      into the image span (only possible for identical connector outputs), the prefix
      forward stops at ``image_position`` and the next call prefills the rest per row.

    A subset that drops *every* tower has no keys in the SVA cross-attentions (upstream
    would give NaN): its rows take :func:`_no_keys_forward` in the in-LLM layers, as the
    variant does, while the other rows run upstream's cross-attention among themselves.
    """

    def __init__(self, model: Any, embeds: torch.Tensor, attrs: dict[str, Any], span: tuple[int, int],
                 no_keys: Sequence[int], per_row: int) -> None:
        self.model, self.embeds, self.attrs, self.span = model, embeds, attrs, span
        self.rows, self.no_keys, self.per_row = embeds.shape[0], tuple(no_keys), per_row

    def forward(self, inputs_embeds: torch.Tensor, past_key_values: Any = None, use_cache: bool = True,
                attention_mask: torch.Tensor | None = None) -> Any:
        """Upstream's forward on ``inputs_embeds`` after the cached positions (see the class)."""
        cache = past_key_values if past_key_values is not None else _cache_class()()
        past = cache.get_seq_length()
        b, n = inputs_embeds.shape[:2]
        start = (attention_mask.shape[1] if attention_mask is not None else past + n) - n
        if start > past:  # the shared prefix stopped at the image: prefill the rest of it per row
            if b != self.rows:
                raise RuntimeError(f"Cambrian sweep: a forward of {b} rows after a shortened prefix "
                                   f"(expected {self.rows})")
            inputs_embeds = torch.cat([self.embeds[:, past:start].to(inputs_embeds.dtype), inputs_embeds], 1)
        lo, hi = past, past + inputs_embeds.shape[1]
        ip, end = self.span
        if hi <= ip or lo >= end:
            return self._run(inputs_embeds, cache, None)
        if b == self.rows and lo <= ip and hi >= end:
            return self._run(inputs_embeds, cache, ip - lo)
        if b != self.rows and lo <= ip:
            if ip == lo:
                return types.SimpleNamespace(logits=None, past_key_values=cache)
            return self._run(inputs_embeds[:, :ip - lo], cache, None)
        raise RuntimeError(f"Cambrian sweep: a forward over positions [{lo}, {hi}) of {b} rows cuts the image "
                           f"span [{ip}, {end}) that the in-LLM SVA reads whole")

    __call__ = forward

    def _run(self, embeds: torch.Tensor, cache: Any, image_offset: int | None) -> Any:
        """Upstream's forward; with the SVA inputs and ``image_position = image_offset`` if given."""
        model = self.model
        attention_mask = torch.ones((embeds.shape[0], cache.get_seq_length() + embeds.shape[1]),
                                    dtype=torch.long, device=embeds.device)
        if image_offset is None:
            changes = [(model, a, _ABSENT) for a in _SVA_ATTRS]
        else:
            changes = [(model, a, v) for a, v in self.attrs.items()]
            changes += [(cfg, "image_position", image_offset)
                        for cfg in {id(c): c for c in (model.config, _meta(model).config)}.values()]
            if self.no_keys:
                changes += [(mod, "forward", self._rows_with_keys(mod)) for mod in self._llm_cross_attentions()]
        with _patched(*changes):
            return model(inputs_embeds=embeds, past_key_values=cache, use_cache=True, attention_mask=attention_mask)

    def _llm_cross_attentions(self) -> list[nn.Module]:
        layers = getattr(_meta(self.model), "vision_sampler_layers", None)
        return [m for m in (layers.modules() if layers is not None else ())
                if type(m).__name__ == "MultiKVCrossAttention"]

    def _rows_with_keys(self, mod: nn.Module) -> Any:
        """``mod.forward`` on the query rows of subsets that keep keys; the others get no-keys output.
        The in-LLM SVA stacks the queries of every row, ``per_row`` queries each, in row order."""
        original = mod.forward  # upstream's, or a variant's own no-keys forward
        keep = torch.tensor([r * self.per_row + q for r in range(self.rows) if r not in self.no_keys
                             for q in range(self.per_row)], dtype=torch.long)

        def forward(queries: torch.Tensor, *latents_and_masks: torch.Tensor) -> torch.Tensor:
            out = _no_keys_forward(mod, queries)
            if len(keep):
                idx = keep.to(queries.device)
                out[idx] = original(queries[idx], *(t[idx] for t in latents_and_masks)).to(out.dtype)
            return out

        return forward


class _SubsetView:
    """Within the block, the model fuses ``projected`` (tower index -> projected features;
    masked towers absent) as a variant masking the other towers in ``mode`` would."""

    def __init__(self, model: Any, projected: dict[int, torch.Tensor], masked: tuple[int, ...], mode: str,
                 lens: list[int]) -> None:
        self.model, self.m = model, _meta(model)
        self.projected, self.masked, self.mode, self.lens = projected, masked, mode, lens
        self.saved: list[tuple[Any, str, Any, bool]] = []

    def _set(self, obj: Any, name: str, value: Any) -> None:
        had = name in vars(obj) or name in getattr(obj, "_modules", {})
        self.saved.append((obj, name, getattr(obj, name) if had else None, had))
        setattr(obj, name, value)

    def __enter__(self) -> "_SubsetView":
        try:
            return self._install()
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def _install(self) -> "_SubsetView":
        model, m = self.model, self.m
        for i in range(len(self.lens)):
            proj = getattr(m, f"mm_projector_aux_{i}")
            if i in self.projected:
                self._set(m, f"mm_projector_aux_{i}", nn.Identity())
            elif not isinstance(proj, ZeroFeatures):
                dtype = next(proj.parameters()).dtype
                self._set(m, f"mm_projector_aux_{i}", ZeroFeatures(int(m.config.vision_hidden_size), dtype))

        def encode_images(_self: Any, image_aux_list: Any) -> list[torch.Tensor]:
            return [self.projected[i] if i in self.projected else img.new_zeros((img.shape[0], self.lens[i], 0))
                    for i, img in enumerate(image_aux_list)]

        self._set(model, "encode_images", types.MethodType(encode_images, model))
        st = _State(self.masked, self.mode, self.masked)
        rearrange = model.rearrange_vision_tower_features_inference
        self._set(model, "rearrange_vision_tower_features_inference", CambrianAdapter._post_rearrange(rearrange, st))
        if self.mode == "drop" and len(self.masked) == len(self.lens):
            for mod in m.modules():
                if type(mod).__name__ == "MultiKVCrossAttention":
                    self._set(mod, "forward", types.MethodType(_no_keys_forward, mod))
        return self

    def __exit__(self, *_exc: Any) -> None:
        for obj, name, value, had in reversed(self.saved):
            if had:
                setattr(obj, name, value)
            else:
                delattr(obj, name)
        self.saved.clear()


@dataclass
class _FusedRow:
    """One subset after upstream's ``prepare_inputs_labels_for_multimodal``."""

    masked: tuple[int, ...]
    out: tuple  # (input_ids, position_ids, attention_mask, past, inputs_embeds, labels, *the SVA inputs)

    @property
    def sva(self) -> dict[str, Any]:
        return dict(zip(_SVA_ATTRS, self.out[6:10]))


def _stack_sva(rows: Sequence[_FusedRow]) -> dict[str, Any]:
    """The SVA attributes of several rows as one batch (row blocks in order), as upstream's
    ``generate()`` would set them for that batch."""
    per = [r.sva for r in rows]
    return {"vision_tower_aux_feature_list": [torch.cat(t, 0) for t in zip(*(p[_SVA_ATTRS[0]] for p in per))],
            "vision_tower_aux_attention_masks_list": [torch.cat(t, 0) for t in zip(*(p[_SVA_ATTRS[1]] for p in per))],
            "final_vision_feature_size": [size for p in per for size in p[_SVA_ATTRS[2]]],
            "global_context_feature": torch.cat([p[_SVA_ATTRS[3]] for p in per], 0)}


class CambrianSweep:
    """SweepSupport of the Cambrian family (see the comment above)."""

    def prepare(self, wrapper: Any, message: list[dict[str, Any]], dataset: str | None) -> Any:
        return wrapper.model_inputs(message, dataset)

    @staticmethod
    def _index(wrapper: Any) -> dict[str, int]:
        return {e.name: e.index for e in ADAPTER.encoders(wrapper.model)}

    def encode(self, wrapper: Any, inputs: Any, encoders: Sequence[str]) -> dict[str, torch.Tensor]:
        m = _meta(wrapper.model)
        towers = m.get_vision_tower_aux_list()
        images = inputs["images"]
        dtype = images[0].dtype
        index = self._index(wrapper)
        out = {}
        with torch.inference_mode():
            for name in encoders:
                i = index[name]
                out[name] = getattr(m, f"mm_projector_aux_{i}")(towers[i](images[i])).to(dtype)
        return out

    def _fuse_rows(self, wrapper: Any, inputs: Any, features_per_subset: list[dict[str, Any]],
                   mask_mode: str) -> tuple[list[_FusedRow], int]:
        """Each subset through upstream's own fusion; also the number of towers."""
        if mask_mode not in ADAPTER.modes:
            raise ValueError(f"Cambrian mask mode {mask_mode!r}: expected one of {', '.join(ADAPTER.modes)}")
        model = wrapper.model
        index = self._index(wrapper)
        names = sorted(index, key=index.get)
        lens = [int(x) for x in _meta(model).config.mm_vision_tower_aux_token_len_list]
        fused = []
        with torch.inference_mode():
            for feats in features_per_subset:
                projected = {index[n]: t for n, t in feats.items() if t is not None}
                masked = tuple(i for i in range(len(names)) if i not in projected)
                if mask_mode == "zero" and 0 in masked:
                    # the authors' global context: tower 0's real projected features (zeroed where rearranged)
                    if "_context_tower0" not in inputs:
                        inputs["_context_tower0"] = self.encode(wrapper, inputs, [names[0]])[names[0]]
                    projected[0] = inputs["_context_tower0"]
                with _SubsetView(model, projected, masked, mask_mode, lens):
                    out = model.prepare_inputs_labels_for_multimodal(
                        inputs["input_ids"], None, None, None, None, inputs["images"],
                        image_sizes=inputs["image_sizes"])
                fused.append(_FusedRow(masked, out))
        return fused, len(names)

    def fuse(self, wrapper: Any, inputs: Any, features_per_subset: list[dict[str, Any]],
             mask_mode: str) -> Any:
        """The subsets fused as ``fuse_and_generate`` fuses them, as a
        :class:`~vlmeval_encred.sweep.decoding.DecodeRequest` (plain greedy wrappers only)."""
        from vlmeval_encred.sweep.decoding import DecodeRequest

        why = greedy_obstacle(wrapper)
        if why is not None:
            raise ValueError(f"Cambrian sweep: the wrapper's decoding is not plain greedy ({why}); the shared-prefix "
                             "decoder cannot reproduce it: use fuse_and_generate")
        fused, n_towers = self._fuse_rows(wrapper, inputs, features_per_subset, mask_mode)
        model = wrapper.model
        sizes = {tuple(s) for r in fused for s in r.out[8]}
        if len(sizes) != 1:
            raise ValueError(f"Cambrian sweep: one image per sample expected, got query grids {sorted(sizes)}")
        h, w = sizes.pop()
        ip = int(_meta(model).config.image_position)
        embeds = torch.cat([r.out[4] for r in fused], 0)
        no_keys = [k for k, r in enumerate(fused) if mask_mode == "drop" and len(r.masked) == n_towers]
        lm = _SvaPrefill(model, embeds, _stack_sva(fused), (ip, ip + h * (w + 1)), no_keys, h * w)
        cfg = copy.deepcopy(model.generation_config)
        cfg.update(**wrapper.gen_kwargs)
        eos = cfg.eos_token_id if cfg.eos_token_id is not None else wrapper.tokenizer.eos_token_id
        eos_ids = sorted(set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None})
        return DecodeRequest(lm=lm, embeds=embeds, embed_tokens=_meta(model).embed_tokens, eos_ids=eos_ids,
                             max_new_tokens=int(cfg.max_new_tokens), finish=functools.partial(_finish, wrapper.tokenizer))

    def fuse_and_generate(self, wrapper: Any, inputs: Any, features_per_subset: list[dict[str, Any]],
                          mask_mode: str) -> list[str]:
        if greedy_obstacle(wrapper) is None:
            from vlmeval_encred.sweep.decoding import decode

            return decode([self.fuse(wrapper, inputs, features_per_subset, mask_mode)])[0]
        # Not plain greedy (sampling, beams, penalties ...): the decoder applies no logits
        # processors, so decode with upstream's own generate on the fused rows.
        return self._generate(wrapper, inputs, features_per_subset, mask_mode)

    def _generate(self, wrapper: Any, inputs: Any, features_per_subset: list[dict[str, Any]],
                  mask_mode: str) -> list[str]:
        """One ``generate`` over the subsets, as upstream's ``generate()`` after its own fusion.
        A subset that drops every tower is decoded alone (its cross-attentions have no keys);
        rows are cut after their first end-of-sequence token, because in a batch a finished
        row continues with padding where a batch of one stops."""
        from transformers.generation.utils import GenerationMixin

        fused, n_towers = self._fuse_rows(wrapper, inputs, features_per_subset, mask_mode)
        model = wrapper.model
        lens = [int(x) for x in _meta(model).config.mm_vision_tower_aux_token_len_list]
        no_keys = [k for k, r in enumerate(fused) if mask_mode == "drop" and len(r.masked) == n_towers]
        groups = [[k for k in range(len(fused)) if k not in no_keys]] + [[k] for k in no_keys]
        eos = _eos_ids(wrapper)
        answers: dict[int, str] = {}
        with torch.inference_mode():
            for group in (g for g in groups if g):
                rows = [fused[k] for k in group]
                for name, value in _stack_sva(rows).items():
                    setattr(model, name, value)  # what upstream's generate() sets, one block per subset
                view = _SubsetView(model, {}, fused[group[0]].masked, mask_mode, lens) if group[0] in no_keys \
                    else contextlib.nullcontext()
                with view:
                    out = GenerationMixin.generate(model, position_ids=rows[0].out[1], attention_mask=rows[0].out[2],
                                                   inputs_embeds=torch.cat([r.out[4] for r in rows], 0),
                                                   **wrapper.gen_kwargs)
                for k, row in zip(group, out):
                    answers[k] = wrapper.tokenizer.decode(_cut_after_eos(row, eos), skip_special_tokens=True).strip()
        return [answers[k] for k in range(len(fused))]
