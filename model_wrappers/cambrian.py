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

Importing this module imports neither ``cambrian`` nor ``vlmeval``: the
VLMEvalKit wrapper class is built on first access (module ``__getattr__``).
"""

from __future__ import annotations

import gc
import re
import types
from dataclasses import dataclass, field
from typing import Any

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
                        f"mm_vision_tower_aux_list gives {', '.join(names)}; fix model_wrappers/catalog.py")


def _build_wrapper() -> type:
    from vlmeval.vlm.cambrian import Cambrian
    from PIL import Image

    from vlmeval_encred.wrapper import EncredMixin

    class EncredCambrian(EncredMixin, Cambrian):
        """VLMEvalKit's ``Cambrian`` wrapper with encoder masking and overridable greedy decoding.

        Keywords: ``mask``, ``mask_mode``, ``encred_base`` (from the registry),
        ``conv_mode`` (else VLMEvalKit's choice from the path), and generation
        settings (``max_new_tokens`` default 2048 as VLMEvalKit, ``do_sample`` ...).
        """

        adapter = ADAPTER

        def __init__(self, model_path: str = "nyu-visionx/cambrian-8b", **kwargs: Any) -> None:
            spec, base = self.pop_encred_kwargs(kwargs)
            conv_mode = kwargs.pop("conv_mode", None)
            super().__init__(model_path=model_path)
            if conv_mode:
                self.conv_mode = conv_mode
            self.gen_kwargs = self.generation_kwargs({"max_new_tokens": 2048, "use_cache": True}, kwargs)
            _check_registry(base, ADAPTER.names(self.model))
            self.apply_mask(self.model, spec, base or model_path)

        def generate_inner(self, message, dataset=None):
            prompt, image_path = self.message_to_promptimg(message, dataset=dataset)
            image = Image.open(image_path).convert("RGB")
            input_ids, image_tensor, image_sizes, _ = self.process(image, prompt)
            with torch.inference_mode():
                out = self.model.generate(input_ids.to(device="cuda", non_blocking=True), images=image_tensor,
                                          image_sizes=image_sizes, **self.gen_kwargs)
            return self.tokenizer.batch_decode(out, skip_special_tokens=True)[0].strip()

    EncredCambrian.__module__ = __name__
    return EncredCambrian


__getattr__ = lazy_wrapper_getattr(__name__, "EncredCambrian", _build_wrapper)
