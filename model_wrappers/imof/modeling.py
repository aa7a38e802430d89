"""I-MoF (Interleaved Mixture of Features): encoder masking for the MMVP repository's LLaVA fork.

Upstream (github tsb0601/MMVP, ``LLaVA/llava/model/llava_arch.py``): CLIP
ViT-L/14-336 (``vision_tower``) and DINOv2 ViT-L/14 (``dino_tower``, loaded by
``torch.hub.load('facebookresearch/dinov2', 'dinov2_vitl14')``) each feed their
own ``mlp2x_gelu`` projector (``mm_projector`` / ``dino_mm_projector``);
``prepare_inputs_labels_for_multimodal_withdino`` interleaves the projected
tokens (CLIP, DINO, CLIP, DINO ...; 2 x 576).

Hook points (instance attributes; no upstream file edited):

``zero``  ``encode_images_withclip`` / ``encode_images_withdino`` of a masked
          tower return its projector applied to zeros of the tower's output
          shape (576 x 1024): the tower's output is zero *before* its
          projector, so its 576 tokens stay (each equal to the projector's
          response to zero) and the sequence keeps 1152 image tokens.
``drop``  ``prepare_inputs_labels_for_multimodal_withdino`` becomes the fork's
          own single-tower ``prepare_inputs_labels_for_multimodal`` with
          ``encode_images`` bound to the kept tower and its projector: the
          masked tower's tokens are removed (576 stay).  With both masked the
          image placeholder is removed from the prompt and the fork's text-only
          path runs (see :func:`_without_image_tokens`; the fork itself crashes
          on zero image tokens).

A masked tower is never run; it is replaced by :class:`ReleasedTower`
(no parameters) and its weights are freed.  In ``drop`` its projector is
freed as well.  DINOv2 comes from torch.hub upstream; :func:`local_dinov2`
redirects that call to a local clone/weights file (``dinov2_path`` /
``dinov2_weights`` keywords or ``ENCRED_DINOV2_PATH`` / ``ENCRED_DINOV2_WEIGHTS``),
and skips building DINOv2 at all when it is masked.

Importing this module imports neither ``llava`` nor ``vlmeval``.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import os
import types
import weakref
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from vlmeval_encred.masking import EncoderAdapter, EncoderInfo, MaskError, MaskSpec, count_params
from vlmeval_encred.wrapper import lazy_wrapper_getattr

FAMILY = "imof"
ENV_DINOV2_PATH = "ENCRED_DINOV2_PATH"
ENV_DINOV2_WEIGHTS = "ENCRED_DINOV2_WEIGHTS"
IMAGE_TOKEN_INDEX = -200  # llava.constants.IMAGE_TOKEN_INDEX of the fork (checked by tests/test_imof_realcode.py)
IGNORE_INDEX = -100  # llava.constants.IGNORE_INDEX
_TOWERS = (("clip", "vision_tower", "mm_projector", "encode_images_withclip"),
           ("dinov2", "dino_tower", "dino_mm_projector", "encode_images_withdino"))


class ReleasedTower(nn.Module):
    """Replaces a masked tower: keeps what the fork reads from a tower (dtype, device, sizes), no weights."""

    def __init__(self, tower: nn.Module, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.hidden_size = int(tower.hidden_size)
        self.image_processor = getattr(tower, "image_processor", None)
        self.is_loaded = True
        self._dtype, self._device = dtype, device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dummy_feature(self) -> torch.Tensor:
        return torch.zeros(1, self.hidden_size, device=self._device, dtype=self._dtype)

    def forward(self, *_a: Any, **_k: Any) -> torch.Tensor:
        raise RuntimeError("vlmeval-encred: this I-MoF tower is masked and was released; it must not be run")


class ZeroProjector(nn.Module):
    """Replaces a dropped tower's projector (only reached by the fork's text-only dummy path, times 0)."""

    def __init__(self, out_dim: int) -> None:
        super().__init__()
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(*x.shape[:-1], self.out_dim)


@dataclass
class _State:
    masked: tuple[str, ...]
    mode: str
    freed_projector_params: int = 0


def _get(m: Any, attr: str) -> Any:
    t = getattr(m, attr, None)
    return t[0] if isinstance(t, list) else t


def _set(m: Any, attr: str, value: Any) -> None:
    if isinstance(getattr(m, attr, None), list):
        getattr(m, attr)[0] = value
    else:
        setattr(m, attr, value)


def _first_param(mod: nn.Module) -> torch.Tensor:
    p = next(iter(mod.parameters()), None)
    if p is None:
        raise MaskError(f"{type(mod).__name__} has no parameters to read dtype/device from")
    return p


class IMoFAdapter(EncoderAdapter):
    family = FAMILY
    modes = ("zero", "drop")
    drop_equals_zero = False

    def encoders(self, model: Any) -> list[EncoderInfo]:
        m = model.get_model()
        clip = _get(m, "vision_tower")
        if clip is None or _get(m, "dino_tower") is None or not hasattr(model, "prepare_inputs_labels_for_multimodal_withdino"):
            raise MaskError("not an I-MoF model: expected vision_tower, dino_tower and "
                            "prepare_inputs_labels_for_multimodal_withdino (MMVP repository's LLaVA fork)")
        cfg = clip.config
        tokens = (int(cfg.image_size) // int(cfg.patch_size)) ** 2  # DINO tokens must match to interleave
        out = []
        for i, (name, attr, _proj, _enc) in enumerate(_TOWERS):
            tower = _get(m, attr)
            out.append(EncoderInfo(name, i, (tokens, int(tower.hidden_size)), tower, count_params(tower)))
        return out

    def install(self, model: Any, spec: MaskSpec, infos: list[EncoderInfo]) -> None:
        if getattr(model, "_encred_imof", None) is not None:
            raise MaskError("a mask is already installed on this I-MoF model")
        m = model.get_model()
        st = _State(spec.masked, spec.mode)
        shapes = {e.name: e.output_shape for e in infos}
        if spec.mode == "zero":
            for name, _attr, proj_attr, enc in _TOWERS:
                if name in spec.masked:
                    setattr(model, enc, types.MethodType(_zero_encoder(proj_attr, shapes[name]), model))
        else:
            kept = [t for t in _TOWERS if t[0] not in spec.masked]
            llm_hidden = int(m.config.hidden_size)
            if kept:
                model.encode_images = getattr(model, kept[0][3])
                model.prepare_inputs_labels_for_multimodal_withdino = model.prepare_inputs_labels_for_multimodal
            else:
                def no_tokens(self_: Any, images: torch.Tensor) -> torch.Tensor:
                    return images.new_zeros(images.shape[0], 0, llm_hidden)
                model.encode_images = types.MethodType(no_tokens, model)
                model.prepare_inputs_labels_for_multimodal_withdino = types.MethodType(
                    _without_image_tokens(model.prepare_inputs_labels_for_multimodal), model)
            for name, _attr, proj_attr, _enc in _TOWERS:
                if name in spec.masked:
                    st.freed_projector_params += count_params(getattr(m, proj_attr))
                    setattr(m, proj_attr, ZeroProjector(llm_hidden))
        model._encred_imof = st

    def release(self, model: Any, spec: MaskSpec, infos: list[EncoderInfo]) -> int:
        st: _State = model._encred_imof
        m = model.get_model()
        freed = st.freed_projector_params
        for name, attr, proj_attr, _enc in _TOWERS:
            if name not in spec.masked:
                continue
            tower = _get(m, attr)
            if isinstance(tower, ReleasedTower):
                continue
            ref = _first_param(getattr(m, proj_attr)) if not isinstance(getattr(m, proj_attr), ZeroProjector) \
                else _first_param(m.embed_tokens)
            freed += count_params(tower)
            _set(m, attr, ReleasedTower(tower, ref.dtype, ref.device))
            del tower
        for e in infos:
            if e.name in spec.masked:
                e.module = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return freed


def _without_image_tokens(fork_prepare: Any) -> Any:
    """``drop`` with every tower masked: the prompt loses its image placeholder(s) and runs as text.

    The fork's single-tower ``prepare_inputs_labels_for_multimodal`` cannot express
    zero image tokens: each placeholder is replaced by nothing, the sequence is one
    token shorter than ``input_ids``, and its attention-mask padding (``new_len -
    len(input_ids)`` positions) becomes negative (``negative dimension -1``).  Here the
    placeholders are removed from ``input_ids``, ``attention_mask`` and ``labels``
    first and the fork's own code runs on the result with ``images=None`` (its
    text-only path).  Cached decode steps (one new token) still go through the
    fork's code with the images, which sizes the attention mask from the cache."""
    def prepare(self_: Any, input_ids: torch.Tensor, attention_mask: Any, past_key_values: Any, labels: Any,
                images: Any) -> Any:
        if images is None or input_ids.shape[1] == 1:
            return fork_prepare(input_ids, attention_mask, past_key_values, labels, images)
        keep = input_ids != IMAGE_TOKEN_INDEX
        if bool(keep.all()):
            return fork_prepare(input_ids, attention_mask, past_key_values, labels, images)
        rows = [input_ids[i][keep[i]] for i in range(input_ids.shape[0])]
        width = max(r.shape[0] for r in rows)

        def cut(t: Any, fill: Any) -> Any:
            if t is None:
                return None
            out = t.new_full((t.shape[0], width), fill)
            for i in range(t.shape[0]):  # right padding, as the fork pads rows of unequal length
                kept = t[i][keep[i]]
                out[i, :kept.shape[0]] = kept
            return out

        ids = cut(input_ids, 0)
        mask = cut(attention_mask, 0)
        if mask is not None:
            for i, r in enumerate(rows):
                mask[i, r.shape[0]:] = 0
        return fork_prepare(ids, mask, past_key_values, cut(labels, IGNORE_INDEX), None)
    return prepare


def _zero_encoder(proj_attr: str, shape: tuple[int, int]):
    def encode(self_: Any, images: torch.Tensor) -> torch.Tensor:
        proj = getattr(self_.get_model(), proj_attr)
        p = _first_param(proj)
        zeros = torch.zeros(images.shape[0], *shape, dtype=images.dtype, device=p.device)
        return proj(zeros.to(p.dtype))
    return encode


ADAPTER = IMoFAdapter()


class _UnloadedDino(nn.Module):
    """Returned instead of DINOv2 when it is masked: nothing is downloaded or built."""

    def forward(self, *_a: Any, **_k: Any) -> torch.Tensor:
        raise RuntimeError("vlmeval-encred: DINOv2 is masked and was not loaded")


@contextlib.contextmanager
def local_dinov2(path: str | None = None, weights: str | None = None, skip: bool = False) -> Iterator[None]:
    """Redirect ``torch.hub.load('facebookresearch/dinov2', ...)`` while the fork builds its DINO tower.

    ``path``: a local clone of github.com/facebookresearch/dinov2 (the directory holding
    ``hubconf.py``); ``weights``: a local ``dinov2_vitl14_pretrain.pth`` (else torch.hub's
    checkpoint cache is used).  ``skip``: return a weightless placeholder (DINOv2 masked).
    Without path/weights/skip, torch.hub behaves as usual (network or its cache).
    """
    path = path or os.environ.get(ENV_DINOV2_PATH) or None
    weights = weights or os.environ.get(ENV_DINOV2_WEIGHTS) or None
    original = torch.hub.load
    if path and not os.path.isfile(os.path.join(path, "hubconf.py")):
        raise FileNotFoundError(f"{ENV_DINOV2_PATH}/dinov2_path={path!r}: no hubconf.py there; expected a clone of "
                                "https://github.com/facebookresearch/dinov2")
    if weights and not os.path.isfile(weights):
        raise FileNotFoundError(f"{ENV_DINOV2_WEIGHTS}/dinov2_weights={weights!r} does not exist")

    def load(repo_or_dir: str, model: str, *args: Any, **kwargs: Any) -> Any:
        if "dinov2" not in str(repo_or_dir):
            return original(repo_or_dir, model, *args, **kwargs)
        if skip:
            return _UnloadedDino()
        if path is None and weights is None:
            return original(repo_or_dir, model, *args, **kwargs)
        if path is None:
            raise FileNotFoundError(f"dinov2_weights given without dinov2_path: set {ENV_DINOV2_PATH} to a local "
                                    "clone of facebookresearch/dinov2 so the network can be built offline")
        net = original(path, model, *args, source="local", pretrained=weights is None, **kwargs)
        if weights is not None:
            net.load_state_dict(torch.load(weights, map_location="cpu"))
        return net

    torch.hub.load = load
    try:
        yield
    finally:
        torch.hub.load = original


def _build_wrapper() -> type:
    from PIL import Image
    from vlmeval.vlm.base import BaseModel

    from vlmeval_encred.wrapper import EncredMixin

    class EncredIMoF(EncredMixin, BaseModel):
        """I-MoF 13B in VLMEvalKit (no upstream wrapper exists): LLaVA-1.5 prompting, greedy by default.

        Keywords: ``model_path`` (the MoF checkpoint directory or hub id), ``model_name``
        (must contain 'llava' for the fork's builder), ``conv_mode`` (``vicuna_v1``),
        ``dinov2_path`` / ``dinov2_weights`` (see :func:`local_dinov2`), generation settings.
        For the CPU tests only: ``device='cpu'`` (the fork's builder moves DINOv2 to CUDA
        unconditionally; :func:`~vlmeval_encred.model_wrappers.imof.compat.dino_tower_device` redirects
        that move) and ``dtype='float32'`` (the builder loads float16; this casts afterwards).
        """

        INSTALL_REQ = True
        INTERLEAVE = False
        adapter = ADAPTER

        def __init__(self, model_path: str = "MMVP/MoF_Models", **kwargs: Any) -> None:
            self.tokens = self.pop_token_kwargs(kwargs)
            spec, base = self.pop_encred_kwargs(kwargs)
            from .compat import dino_tower_device, import_fork

            import_fork()
            from llava.mm_utils import get_model_name_from_path
            from llava.model.builder import load_pretrained_model

            name = kwargs.pop("model_name", None) or get_model_name_from_path(model_path)
            if "llava" not in name.lower():
                name = "llava-mof-" + name  # the fork's builder only builds vision towers for 'llava' names
            self.conv_mode = kwargs.pop("conv_mode", "vicuna_v1")
            self.device = kwargs.pop("device", "cuda")
            dtype = kwargs.pop("dtype", None)
            dpath, dweights = kwargs.pop("dinov2_path", None), kwargs.pop("dinov2_weights", None)
            device_map = "auto" if str(self.device).startswith("cuda") else self.device
            with local_dinov2(dpath, dweights, skip="dinov2" in spec.masked), dino_tower_device(self.device), \
                    contextlib.redirect_stdout(_Discard()):  # CLIPVisionTower.load_model prints its state dict
                self.tokenizer, self.model, self.image_processor, _ = load_pretrained_model(
                    model_path, None, name, device_map=device_map, device=self.device)
            if dtype is not None:
                self.model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
            self.gen_kwargs = self.generation_kwargs({"max_new_tokens": 512, "use_cache": True}, kwargs)
            if base:
                from vlmeval_encred.registry import get_base

                if tuple(get_base(base).encoders) != tuple(ADAPTER.names(self.model)):
                    raise MaskError(f"registry entry {base!r} encoders {get_base(base).encoders} != "
                                    f"loaded model's {ADAPTER.names(self.model)}")
            self.apply_mask(self.model, spec, base or model_path)
            self.token_report: dict[str, Any] | None = None
            self.token_hooks = IMoFTokens(self, self.tokens, base or model_path) if self.tokens is not None else None

        @property
        def dtype(self) -> torch.dtype:
            return self.model.get_model().embed_tokens.weight.dtype

        def build_inputs(self, message: list[dict[str, Any]], dataset: str | None = None) -> dict[str, torch.Tensor]:
            """Prompt ids and padded-square pixels, as the MMVP/LLaVA-1.5 evaluation prepares them."""
            from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
            from llava.conversation import conv_templates
            from llava.mm_utils import tokenizer_image_token

            prompt, image_path = self.message_to_promptimg(message, dataset=dataset)
            image = Image.open(image_path).convert("RGB")
            mean = tuple(int(x * 255) for x in self.image_processor.image_mean)
            w, h = image.size
            square = Image.new("RGB", (max(w, h),) * 2, mean)
            square.paste(image, ((max(w, h) - w) // 2, (max(w, h) - h) // 2))
            pixels = self.image_processor.preprocess(square, return_tensors="pt")["pixel_values"]
            conv = conv_templates[self.conv_mode].copy()
            conv.append_message(conv.roles[0], DEFAULT_IMAGE_TOKEN + "\n" + prompt)
            conv.append_message(conv.roles[1], None)
            ids = tokenizer_image_token(conv.get_prompt(), self.tokenizer, IMAGE_TOKEN_INDEX,
                                        return_tensors="pt").unsqueeze(0)
            return {"input_ids": ids.to(self.device), "images": pixels.to(self.device, self.dtype)}

        def decode(self, out: torch.Tensor, prompt: torch.Tensor) -> list[str]:
            """Answers from ``generate``'s rows: the prompt removed, then :meth:`answer`."""
            n = prompt.shape[-1]
            answers = []
            for row in out:
                if row.shape[0] >= n and torch.equal(row[:n], prompt.reshape(-1)):
                    row = row[n:]  # transformers 4.x returns prompt + answer for decoder-only models
                answers.append(self.answer(row))
            return answers

        def answer(self, row: torch.Tensor) -> str:
            """One row of generated ids (no prompt) -> the answer: cut after the first end token
            (in a batch, a finished row goes on with padding), special tokens skipped, stripped.
            The sweep's shared-prefix decoder finishes its rows with this too."""
            hits = (row == self.tokenizer.eos_token_id).nonzero()
            if hits.numel():
                row = row[:int(hits[0]) + 1]
            return self.tokenizer.decode(row, skip_special_tokens=True).strip()

        def generate_inner(self, message, dataset=None):
            inputs = self.build_inputs(message, dataset)
            if self.tokens is not None:
                return self.decode(generate_with_tokens(self, inputs), inputs["input_ids"])[0]
            with torch.inference_mode():
                out = self.model.generate(inputs["input_ids"], images=inputs["images"], **self.gen_kwargs)
            return self.decode(out, inputs["input_ids"])[0]

    EncredIMoF.__module__ = __name__
    EncredIMoF.sweep_support = IMoFSweep()
    return EncredIMoF


class _Discard:
    def write(self, _s: str) -> int:
        return 0

    def flush(self) -> None:
        pass


# --- encred sweep support: share encoder outputs across the subsets of a sample ----------------
# :class:`~vlmeval_encred.sweep.protocol.SweepSupport` for EncredIMoF.
#
# * ``prepare``: the wrapper's ``build_inputs`` (what ``generate_inner`` runs first).
# * ``encode``: each tower once (``CLIPVisionTower`` / ``DINOVisionTower`` output, before its
#   projector: the tensor ``zero`` replaces by zeros).
# * ``fuse``: for each subset the fork's encode methods are bound, for the call, to that
#   subset's projected features (``zero``: a masked tower's projector applied to zeros, as
#   ``_zero_encoder`` does; ``drop``: the kept tower only, through the fork's single-tower path,
#   or the text-only path with both dropped), and the fork's own
#   ``prepare_inputs_labels_for_multimodal_withdino`` builds the ``inputs_embeds`` rows that its
#   ``generate`` would prefill; it stops there (a :class:`~vlmeval_encred.sweep.decoding.DecodeRequest`).
# * ``fuse_and_generate``: those requests decoded by the shared-prefix greedy decoder
#   (:func:`~vlmeval_encred.sweep.decoding.decode`) when the wrapper's generation settings are
#   plain greedy (:func:`greedy_refusal`); otherwise the fork's ``generate`` with the wrapper's
#   settings.  Subsets whose sequences have the same layout share one request / one batch (no
#   padding: the same positions as a batch of one); see :data:`IMoFSweep.batched`.  In ``drop``
#   mode the layouts differ (1152, 576 or 0 image tokens), so one sample makes up to three
#   requests and ``fuse`` -- one request by contract -- is refused for a mixed set of subsets.

_NEUTRAL_GENERATION: dict[str, tuple[Any, ...]] = {
    "num_beams": (None, 1), "num_beam_groups": (None, 1), "penalty_alpha": (None,),
    "repetition_penalty": (None, 1.0), "encoder_repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,), "force_words_ids": (None,),
    "min_length": (None, 0), "min_new_tokens": (None, 0), "sequence_bias": (None,),
    "suppress_tokens": (None,), "begin_suppress_tokens": (None,), "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,), "exponential_decay_length_penalty": (None,),
    "guidance_scale": (None, 1.0), "stop_strings": (None,), "max_time": (None,),
    "watermarking_config": (None,), "dola_layers": (None,), "prompt_lookup_num_tokens": (None,),
    "assistant_model": (None,), "cache_implementation": (None,),
}
"""generate() settings that keep greedy decoding plain (argmax of the raw logits, one beam, stop
at end-of-sequence or ``max_new_tokens``): any other value changes which token is chosen or when
decoding stops, which the shared-prefix decoder does not reproduce."""


def greedy_refusal(model: Any, gen_kwargs: dict[str, Any], input_ids: torch.Tensor | None = None) -> str | None:
    """Why ``model.generate(input_ids, **gen_kwargs)`` is not plain greedy decoding (None: it is).

    The checkpoint's ``generation_config`` counts as generate sees it, overridden by ``gen_kwargs``.
    With ``input_ids``: also refused when the prompt contains the pad id, because generate then
    masks those prompt positions out (its attention mask is ``input_ids != pad``) where the
    shared-prefix decoder attends to every position."""
    cfg = copy.deepcopy(model.generation_config)
    unused = cfg.update(**gen_kwargs)
    if unused:
        return f"generate keywords outside GenerationConfig: {sorted(unused)}"
    if cfg.do_sample:
        return "do_sample=True"
    if not getattr(cfg, "use_cache", True):
        return "use_cache=False"
    if cfg.max_new_tokens is None:
        return "no max_new_tokens (generate would stop at max_length, which counts the prompt ids)"
    for key, neutral in _NEUTRAL_GENERATION.items():
        value = getattr(cfg, key, None)
        if value not in neutral:
            return f"{key}={value!r}"
    pad = cfg.pad_token_id
    if input_ids is not None and pad is not None and pad not in _eos_ids(model, gen_kwargs) \
            and bool((input_ids == pad).any()):
        return f"the prompt contains the pad id {pad}, which generate masks out"
    return None


def _eos_ids(model: Any, gen_kwargs: dict[str, Any]) -> list[int]:
    """End-of-sequence ids generate stops at (``generation_config`` or ``gen_kwargs``)."""
    eos = gen_kwargs.get("eos_token_id", model.generation_config.eos_token_id)
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


class _ForkLM:
    """The fork's language model as the shared-prefix decoder drives it (``inputs_embeds`` in,
    logits and cache out).  The fork's ``forward`` cannot take ``inputs_embeds`` (its multimodal
    preparation returns ``None`` for them when no images are given), so this runs what that
    forward runs after the preparation: ``get_model()`` (LlamaModel) and ``lm_head`` on every
    position.  Always with a ``DynamicCache``: LlamaModel of transformers 4.4x turns a missing cache
    into a legacy tuple, which has no ``batch_select_indices``/``batch_repeat_interleave``."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def forward(self, inputs_embeds: torch.Tensor, past_key_values: Any = None, use_cache: bool = True,
                attention_mask: torch.Tensor | None = None) -> Any:
        from transformers import DynamicCache
        from transformers.modeling_outputs import CausalLMOutputWithPast

        if past_key_values is None:
            past_key_values = DynamicCache()
        out = self.model.get_model()(inputs_embeds=inputs_embeds, past_key_values=past_key_values,
                                     use_cache=use_cache, attention_mask=attention_mask, return_dict=True)
        return CausalLMOutputWithPast(logits=self.model.lm_head(out[0]), past_key_values=out.past_key_values)

    __call__ = forward


_FORK_LMS: "weakref.WeakKeyDictionary[Any, _ForkLM]" = weakref.WeakKeyDictionary()


def _fork_lm(model: Any) -> _ForkLM:
    """One :class:`_ForkLM` per model, so the decoder's prefix cache (keyed by it) lives across samples."""
    lm = _FORK_LMS.get(model)
    if lm is None:
        lm = _FORK_LMS[model] = _ForkLM(model)
    return lm


_BOUND = ("encode_images", "encode_images_withclip", "encode_images_withdino",
          "prepare_inputs_labels_for_multimodal_withdino")


@contextlib.contextmanager
def _bound(model: Any, kind: str, plans: list[dict[str, Any]]) -> Iterator[None]:
    """Within the block, the fork's multimodal preparation of ``len(plans)`` copies of the prompt
    uses each subset's projected features (``kind``: interleaved, single or text layout)."""
    cls = type(model)
    saved = {k: model.__dict__[k] for k in _BOUND if k in model.__dict__}

    def const(t: torch.Tensor) -> Any:
        return types.MethodType(lambda _self, _images: t, model)

    try:
        if kind == "interleaved":
            model.encode_images_withclip = const(torch.cat([p["clip"] for p in plans]))
            model.encode_images_withdino = const(torch.cat([p["dinov2"] for p in plans]))
            model.prepare_inputs_labels_for_multimodal_withdino = types.MethodType(
                cls.prepare_inputs_labels_for_multimodal_withdino, model)
        elif kind == "single":
            model.encode_images = const(torch.cat([p["single"] for p in plans]))
            model.prepare_inputs_labels_for_multimodal_withdino = types.MethodType(
                cls.prepare_inputs_labels_for_multimodal, model)
        else:
            model.prepare_inputs_labels_for_multimodal_withdino = types.MethodType(
                _without_image_tokens(types.MethodType(cls.prepare_inputs_labels_for_multimodal, model)), model)
        yield
    finally:
        for k in _BOUND:
            model.__dict__.pop(k, None)
        model.__dict__.update(saved)


class IMoFSweep:
    """SweepSupport of the I-MoF family (see the comment above)."""

    batched: bool = True
    """Decode same-layout subsets of a sample as one batch; ``False``: one request (or ``generate``)
    per subset (the encoders are still shared)."""

    def prepare(self, wrapper: Any, message: list[dict[str, Any]], dataset: str | None) -> Any:
        return wrapper.build_inputs(message, dataset)

    def encode(self, wrapper: Any, inputs: Any, encoders: Any) -> dict[str, torch.Tensor]:
        m = wrapper.model.get_model()
        attrs = {name: attr for name, attr, _p, _e in _TOWERS}
        with torch.inference_mode():
            return {name: _get(m, attrs[name])(inputs["images"]) for name in encoders}

    @staticmethod
    def _projected(wrapper: Any, feats: dict[str, Any], n_img: int) -> dict[str, torch.Tensor | None]:
        """tower -> its projector's output for this subset (None: dropped)."""
        m = wrapper.model.get_model()
        infos = {i.name: i for i in ADAPTER.encoders(wrapper.model)}
        out = {}
        for name, _attr, proj_attr, _enc in _TOWERS:
            proj = getattr(m, proj_attr)
            t = feats.get(name)
            if t is None:
                p = _first_param(proj) if not isinstance(proj, ZeroProjector) else None
                t = None if p is None else torch.zeros(n_img, *infos[name].output_shape, dtype=wrapper.dtype,
                                                       device=p.device).to(p.dtype)
            out[name] = None if t is None else proj(t)
        return out

    def _plans(self, wrapper: Any, n_img: int, features_per_subset: list[dict[str, Any]],
               mask_mode: str) -> list[tuple[str, dict[str, Any]]]:
        """Per subset: (layout kind, the projected features the fork's preparation will use)."""
        if mask_mode not in ADAPTER.modes:
            raise ValueError(f"I-MoF supports mask modes {ADAPTER.modes}, not {mask_mode!r}")
        plans = []
        for feats in features_per_subset:
            kept = [n for n, _a, _p, _e in _TOWERS if feats.get(n) is not None]
            if mask_mode == "zero":
                proj = self._projected(wrapper, feats, n_img)
                if any(v is None for v in proj.values()):
                    raise ValueError("zero-mode sweep needs both projectors; the model was loaded in drop mode")
                plans.append(("interleaved", proj))
            elif len(kept) == len(_TOWERS):
                plans.append(("interleaved", self._projected(wrapper, feats, n_img)))
            elif kept:
                plans.append(("single", {"single": self._projected(wrapper, {kept[0]: feats[kept[0]]}, n_img)[kept[0]]}))
            else:
                plans.append(("text", {}))
        return plans

    def _chunks(self, plans: list[tuple[str, dict[str, Any]]]) -> list[list[int]]:
        """Subset indices decoded together: same layout (and all of them with :attr:`batched`)."""
        groups: dict[str, list[int]] = {}
        for s, (kind, _p) in enumerate(plans):
            groups.setdefault(kind, []).append(s)
        return [c for members in groups.values() for c in ([members] if self.batched else [[s] for s in members])]

    @staticmethod
    def _request(wrapper: Any, inputs: Any, kind: str, plans: list[dict[str, Any]]) -> Any:
        """The rows the fork's ``generate`` would prefill for these subsets, as a DecodeRequest."""
        from vlmeval_encred.sweep.decoding import DecodeRequest

        model = wrapper.model
        ids, images = inputs["input_ids"], inputs["images"]
        s = len(plans)
        with torch.inference_mode(), _bound(model, kind, plans):
            new_ids, _mask, _pkv, embeds, _labels = model.prepare_inputs_labels_for_multimodal_withdino(
                ids.repeat(s, 1), None, None, None, images.repeat(s, *([1] * (images.dim() - 1))))
            if embeds is None:  # text layout: the fork hands the ids on; LlamaModel embeds them so
                embeds = model.get_model().embed_tokens(new_ids)
        if embeds.dim() != 3 or embeds.shape[0] != s:
            raise ValueError(f"I-MoF fuse: expected {s} unpadded rows, got inputs_embeds of shape {tuple(embeds.shape)}")

        def finish(rows: list[list[int]]) -> list[str]:
            return [wrapper.answer(torch.tensor(r, dtype=torch.long)) for r in rows]

        return DecodeRequest(lm=_fork_lm(model), embeds=embeds, embed_tokens=model.get_model().embed_tokens,
                             eos_ids=_eos_ids(model, wrapper.gen_kwargs),
                             max_new_tokens=int(wrapper.gen_kwargs.get("max_new_tokens")
                                                or model.generation_config.max_new_tokens),
                             finish=finish)

    def fuse(self, wrapper: Any, inputs: Any, features_per_subset: list[dict[str, Any]], mask_mode: str) -> Any:
        """One DecodeRequest for every subset of the sample (see the comment above); ValueError
        where greedy decoding of those rows would not be the wrapper's own generation, or where
        the subsets' sequences differ in length (``drop`` with mixed subsets)."""
        why = greedy_refusal(wrapper.model, wrapper.gen_kwargs, inputs["input_ids"])
        if why is not None:
            raise ValueError(f"I-MoF fuse: the wrapper's generation is not plain greedy ({why}); "
                             "use fuse_and_generate, which keeps generate()")
        plans = self._plans(wrapper, inputs["images"].shape[0], features_per_subset, mask_mode)
        kinds = sorted({k for k, _p in plans})
        if len(kinds) != 1:
            raise ValueError(f"I-MoF fuse: in {mask_mode} mode these subsets give sequences of different lengths "
                             f"(layouts {kinds}); one request needs equal lengths: use fuse_and_generate")
        return self._request(wrapper, inputs, kinds[0], [p for _k, p in plans])

    def fuse_and_generate(self, wrapper: Any, inputs: Any, features_per_subset: list[dict[str, Any]],
                          mask_mode: str) -> list[str]:
        plans = self._plans(wrapper, inputs["images"].shape[0], features_per_subset, mask_mode)
        chunks = self._chunks(plans)
        why = greedy_refusal(wrapper.model, wrapper.gen_kwargs, inputs["input_ids"])
        if why is None:
            from vlmeval_encred.sweep.decoding import decode

            outs = decode([self._request(wrapper, inputs, plans[c[0]][0], [plans[s][1] for s in c]) for c in chunks])
        else:
            # Not plain greedy (sampling, beams, penalties, min_new_tokens, ...): the shared-prefix
            # decoder implements none of these, so the fork's own generate() decodes each chunk
            # with the wrapper's settings.
            outs = [self._generate(wrapper, plans[c[0]][0], [plans[s][1] for s in c], inputs) for c in chunks]
        answers: dict[int, str] = {}
        for chunk, texts in zip(chunks, outs):
            answers.update(zip(chunk, texts))
        return [answers[s] for s in range(len(features_per_subset))]

    @staticmethod
    def _generate(wrapper: Any, kind: str, plans: list[dict[str, Any]], inputs: Any) -> list[str]:
        """One ``generate`` over ``len(plans)`` copies of the prompt, each with its subset's features."""
        model = wrapper.model
        ids, images = inputs["input_ids"], inputs["images"]
        s = len(plans)
        with torch.inference_mode(), _bound(model, kind, plans):
            out = model.generate(ids.repeat(s, 1), images=images.repeat(s, *([1] * (images.dim() - 1))),
                                 **wrapper.gen_kwargs)
        return wrapper.decode(out, ids)


# --- token budgets (docs/tokens.md) -----------------------------------------------------------
# fusion: I-MoF's towers reach the LLM as separate token groups (interleaved CLIP, DINOv2, ... in
# zero mode and unmasked; the kept tower's 576 in drop mode), so the budget k = ceil(sum T_e *
# keep / 100) over the unmasked towers is split by effective-rank weights (tokens.split_budget)
# and each group keeps its best k_e tokens (tokens.grouped_select).  Scores: CLIP's [CLS]->patch
# attention in the layer whose output the fork selects (mm_vision_select_layer, -2: the
# penultimate one), DINOv2's [CLS]->patch attention in its last block (the fork takes x_prenorm,
# that block's output); both mean over heads.  Features, scores and weights come from the towers'
# own forward in the fork's preparation (hooks; nothing runs twice).  A zero-mode masked tower's
# tokens (its projector's response to zero) are not scored and stay.  The pruned rows are removed
# from inputs_embeds just before LlamaModel runs, which gets the kept tokens' original position
# ids; generated tokens continue after the unpruned prompt length.
# llm: tokens.LlmPruner on the LLaMA decoder's layers; the visual positions are every image
# token of the fork's sequence (a zero-mode masked tower's included).


def _clip_cls_layer(tower: Any) -> int | None:
    """Index of the CLIP encoder layer whose output the fork selects (None: the embeddings)."""
    layers = tower.vision_tower.vision_model.encoder.layers
    sel = int(tower.select_layer)
    j = len(layers) + 1 + sel if sel < 0 else sel  # index into hidden_states (0: embeddings)
    if not 0 <= j <= len(layers):
        raise MaskError(f"CLIP select_layer={sel} is outside its {len(layers)} layers")
    return None if j == 0 else j - 1


def _last_dino_block(net: Any) -> Any:
    last = net.blocks[-1]
    return last if hasattr(last, "attn") else last[-1]  # block_chunks > 0: a chunk of blocks


class IMoFTokens:
    """The token budget of one loaded I-MoF wrapper: hooks on its towers and LLM, inert until armed."""

    def __init__(self, wrapper: Any, spec: Any, name: str) -> None:
        from vlmeval_encred.tokens import LlmPruner, TokenError

        self.spec, self.model = spec, wrapper.model
        rep = wrapper.encred_report
        masked = set(rep.spec.masked) if rep is not None else set()
        mode = rep.spec.mode if rep is not None else "zero"
        self.live = [n for n, *_ in _TOWERS if n not in masked]
        if mode == "zero" or not masked:
            self.layout = "interleaved"
        else:
            self.layout = "single" if self.live else "text"
        self.ids: torch.Tensor | None = None
        self.feats: dict[str, torch.Tensor] = {}
        self.scores: dict[str, torch.Tensor] = {}
        self.report: dict[str, Any] | None = None
        self._idx: torch.Tensor | None = None
        self._pruned = 0
        m = self.model.get_model()
        self.handles: list[Any] = []
        self.pruner = None
        if spec.stage == "fusion":
            if not self.live:
                raise TokenError(f"{name}: every encoder is masked; the fusion stage has no encoder to score tokens")
            self._hook_towers(m)
        else:
            self.pruner = LlmPruner(m.layers, spec)
        self.handles.append(m.register_forward_pre_hook(self._llm_input, with_kwargs=True))

    # -- towers: features at the fusion point and their [CLS] attention ------------------------------
    def _hook_towers(self, m: Any) -> None:
        from vlmeval_encred.tokens import TokenError

        for name in self.live:
            attr = dict((n, a) for n, a, _p, _e in _TOWERS)[name]
            tower = _get(m, attr)
            if getattr(tower, "select_feature", "patch") != "patch":
                raise TokenError(f"I-MoF {name}: select_feature={tower.select_feature!r}; the token budget "
                                 "scores patch tokens only")
            self.handles.append(tower.register_forward_hook(self._keep_output(name)))
            if name == "clip":
                li = _clip_cls_layer(tower)
                if li is not None:  # selecting the embeddings: no attention, L2 norm
                    attn = tower.vision_tower.vision_model.encoder.layers[li].self_attn
                    self.handles.append(attn.register_forward_pre_hook(self._clip_score, with_kwargs=True))
            else:
                attn = _last_dino_block(tower.vision_tower).attn
                self.handles.append(attn.register_forward_pre_hook(self._dino_score))

    def _keep_output(self, name: str) -> Any:
        def hook(_m: Any, _args: Any, out: torch.Tensor) -> None:
            if self.ids is not None:
                self.feats[name] = out.detach()
        return hook

    def _clip_score(self, attn: Any, args: tuple, kwargs: dict) -> None:
        """CLIPAttention: q = q_proj(h) * scale, k = k_proj(h), softmax over [CLS] and every patch."""
        from vlmeval_encred.tokens import cls_attention_scores

        if self.ids is None:
            return
        h = args[0] if args else kwargs["hidden_states"]
        b, n, _c = h.shape
        q = attn.q_proj(h[:, 0]).view(b, attn.num_heads, attn.head_dim)
        k = attn.k_proj(h).view(b, n, attn.num_heads, attn.head_dim).transpose(1, 2)
        self.scores["clip"] = torch.stack([cls_attention_scores(q[i], k[i], scaling=attn.scale) for i in range(b)])

    def _dino_score(self, attn: Any, args: tuple) -> None:
        """DINOv2 ``Attention``: qkv of the block's normalised input, softmax(q k^T * scale)."""
        from vlmeval_encred.tokens import cls_attention_scores

        if self.ids is None:
            return
        x = args[0]
        b, n, c = x.shape
        qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, c // attn.num_heads)
        q, k = qkv[:, 0, 0], qkv[:, :, 1].transpose(1, 2)  # (b, H, D), (b, H, n, D)
        self.scores["dinov2"] = torch.stack([cls_attention_scores(q[i], k[i], scaling=attn.scale) for i in range(b)])

    # -- the LLM's input --------------------------------------------------------------------------
    def arm(self, input_ids: torch.Tensor) -> None:
        from vlmeval_encred.tokens import TokenError

        if input_ids.shape[0] != 1:
            raise TokenError("token budgets run one sample at a time (batch size 1)")
        if int((input_ids == IMAGE_TOKEN_INDEX).sum()) != 1:
            raise TokenError("I-MoF token budgets need exactly one image placeholder in the prompt")
        self.ids, self.feats, self.scores, self.report, self._idx, self._pruned = input_ids, {}, {}, None, None, 0

    def disarm(self) -> None:
        self.ids, self._idx = None, None
        if self.pruner is not None:
            self.pruner.disarm()

    def groups(self, seq_len: int) -> dict[str, list[int]]:
        """tower -> its image tokens' positions in the LLM sequence (this model's layout)."""
        from vlmeval_encred.tokens import TokenError

        p = int((self.ids[0] == IMAGE_TOKEN_INDEX).nonzero()[0])
        n_img = seq_len - (self.ids.shape[1] - 1)
        names = [n for n, *_ in _TOWERS] if self.layout == "interleaved" else self.live[:1]
        if self.layout == "text" or not names:
            names = []
        t = n_img // max(1, len(names))
        if n_img != t * len(names):
            raise TokenError(f"I-MoF: {n_img} image tokens do not fit the {self.layout} layout of {names}")
        step = len(names)
        return {n: [p + i * step + j for i in range(t)] for j, n in enumerate(names)}

    def _fusion_index(self, seq_len: int) -> torch.Tensor:
        from vlmeval_encred.tokens import TokenError, grouped_select, rank_weights, splice_positions

        missing = [n for n in self.live if n not in self.feats]
        if missing:
            raise TokenError(f"I-MoF fusion stage: no features of {missing} were seen (towers not run?)")
        pos = self.groups(seq_len)
        feats = {n: self.feats[n][0] for n in self.live}
        scores = {n: self.scores[n][0] for n in self.live if n in self.scores}
        kept_in_group = grouped_select(feats, self.spec, scores)
        visual = sorted(q for n in self.live for q in pos[n])
        kept = sorted(pos[n][i] for n in self.live for i in kept_in_group[n].tolist())
        self.report = {"stage": "fusion", "visual": visual, "kept": kept, "weights": rank_weights(feats),
                       "scored_by": {n: "cls_attention" if n in scores else "l2" for n in self.live}}
        return torch.tensor(splice_positions(seq_len, visual, kept), dtype=torch.long)

    def _llm_input(self, _m: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """LlamaModel pre-hook: prefill -> prune (fusion) or arm the pruner (llm); decoding steps
        -> original position ids (fusion) or an attention mask as long as layer 0's cache (llm)."""
        if self.ids is None:
            return None
        kw = dict(kwargs)
        emb, cache = kw.get("inputs_embeds"), kw.get("past_key_values")
        past = 0 if cache is None else int(cache.get_seq_length(0) if hasattr(cache, "get_seq_length")
                                           else cache[0][0].shape[-2])
        if emb is not None and past == 0:  # prefill of the whole prompt
            s = emb.shape[1]
            if self.spec.stage == "fusion":
                self._idx = self._fusion_index(s).to(emb.device)
                self._pruned = s - len(self._idx)
                kw["inputs_embeds"] = emb[:, self._idx]
                mask = kw.get("attention_mask")
                kw["attention_mask"] = torch.ones((1, len(self._idx)), device=emb.device,
                                                  dtype=mask.dtype if torch.is_tensor(mask) else torch.long)
                kw["position_ids"] = self._idx.unsqueeze(0)
            else:
                visual = [q for ps in self.groups(s).values() for q in ps]
                self.pruner.arm(visual, s)
                self.report = {"stage": "llm", "layer": self.spec.layer, "visual": sorted(visual)}
            return args, kw
        if past == 0:
            return None
        ids = kw.get("input_ids")
        q = (emb if emb is not None else ids).shape[1]
        dev = (emb if emb is not None else ids).device
        if self.spec.stage == "fusion":
            kw["position_ids"] = torch.arange(past + self._pruned, past + self._pruned + q, device=dev).unsqueeze(0)
        elif torch.is_tensor(kw.get("attention_mask")):
            # the fork sizes it from the last layer's cache, which the llm stage shortened
            kw["attention_mask"] = torch.ones((1, past + q), device=dev, dtype=kw["attention_mask"].dtype)
        return args, kw

    def finish(self) -> dict[str, Any] | None:
        """The report of the last generation (kept positions in the LLM sequence)."""
        if self.spec.stage == "llm" and self.report is not None:
            self.report["kept"] = list(self.pruner.kept_visual if self.pruner.kept_visual is not None
                                       else self.report["visual"])
        return self.report


def generate_with_tokens(wrapper: Any, inputs: dict[str, torch.Tensor], **extra: Any) -> Any:
    """The fork's ``generate`` with the wrapper's token budget (``extra``: more generate keywords);
    sets ``wrapper.token_report``.  Returns generate's output."""
    hooks: IMoFTokens = wrapper.token_hooks
    hooks.arm(inputs["input_ids"])
    try:
        with torch.inference_mode():
            out = wrapper.model.generate(inputs["input_ids"], images=inputs["images"], **wrapper.gen_kwargs, **extra)
        wrapper.token_report = hooks.finish()
    finally:
        hooks.disarm()
    return out


__getattr__ = lazy_wrapper_getattr(__name__, "EncredIMoF", _build_wrapper)
