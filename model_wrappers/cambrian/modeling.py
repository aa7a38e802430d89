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
# * ``fuse_and_generate``: per subset, upstream's own ``prepare_inputs_labels_for_multimodal``
#   (connector SVA, unpadding, newline tokens) with the subset's features in place of the
#   towers' outputs and the subset's mask applied where the adapter applies it; then one
#   greedy decode over all subsets, after setting the attributes upstream's ``generate()``
#   sets (``vision_tower_aux_feature_list`` ...), concatenated along the batch, so the
#   SVA layers inside the LLM see each row's own subset.  A subset that drops *every*
#   tower is decoded on its own: its cross-attentions have no keys (see ``drop``).
#   Rows are cut after their first end-of-sequence token before decoding, because in a
#   batch a finished row continues with padding where a batch of one stops.


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

    def fuse_and_generate(self, wrapper: Any, inputs: Any, features_per_subset: list[dict[str, Any]],
                          mask_mode: str) -> list[str]:
        from transformers.generation.utils import GenerationMixin

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
                fused.append((masked, out))
            # one batch for every subset that keeps some keys; each all-dropped subset alone
            no_keys = [k for k, (masked, _) in enumerate(fused) if mask_mode == "drop" and len(masked) == len(names)]
            groups = [[k for k in range(len(fused)) if k not in no_keys]] + [[k] for k in no_keys]
            eos = _eos_ids(wrapper)
            answers: dict[int, str] = {}
            for group in (g for g in groups if g):
                rows = [fused[k][1] for k in group]
                # the attributes upstream's generate() sets for the in-LLM SVA, one row per subset
                model.vision_tower_aux_feature_list = [torch.cat(t, 0) for t in zip(*(r[6] for r in rows))]
                model.vision_tower_aux_attention_masks_list = [torch.cat(t, 0) for t in zip(*(r[7] for r in rows))]
                model.final_vision_feature_size = [size for r in rows for size in r[8]]
                model.global_context_feature = torch.cat([r[9] for r in rows], 0)
                view = _SubsetView(model, {}, fused[group[0]][0], mask_mode, lens) if group[0] in no_keys \
                    else contextlib.nullcontext()
                with view:
                    # upstream's generate() after its own feature preparation (done above, per subset)
                    out = GenerationMixin.generate(model, position_ids=rows[0][1], attention_mask=rows[0][2],
                                                   inputs_embeds=torch.cat([r[4] for r in rows], 0),
                                                   **wrapper.gen_kwargs)
                for k, row in zip(group, out):
                    answers[k] = wrapper.tokenizer.decode(_cut_after_eos(row, eos), skip_special_tokens=True).strip()
        return [answers[k] for k in range(len(fused))]
