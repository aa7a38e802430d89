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
import gc
import os
import types
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from vlmeval_encred.masking import EncoderAdapter, EncoderInfo, MaskError, MaskSpec, count_params
from vlmeval_encred.wrapper import lazy_wrapper_getattr

FAMILY = "imof"
ENV_DINOV2_PATH = "ENCRED_DINOV2_PATH"
ENV_DINOV2_WEIGHTS = "ENCRED_DINOV2_WEIGHTS"
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
        from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

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
        """

        INSTALL_REQ = True
        INTERLEAVE = False
        adapter = ADAPTER

        def __init__(self, model_path: str = "MMVP/MoF_Models", **kwargs: Any) -> None:
            from llava.mm_utils import get_model_name_from_path
            from llava.model.builder import load_pretrained_model

            spec, base = self.pop_encred_kwargs(kwargs)
            name = kwargs.pop("model_name", None) or get_model_name_from_path(model_path)
            if "llava" not in name.lower():
                name = "llava-mof-" + name  # the fork's builder only builds vision towers for 'llava' names
            self.conv_mode = kwargs.pop("conv_mode", "vicuna_v1")
            dpath, dweights = kwargs.pop("dinov2_path", None), kwargs.pop("dinov2_weights", None)
            with local_dinov2(dpath, dweights, skip="dinov2" in spec.masked):
                self.tokenizer, self.model, self.image_processor, _ = load_pretrained_model(model_path, None, name)
            self.gen_kwargs = self.generation_kwargs({"max_new_tokens": 512, "use_cache": True}, kwargs)
            if base:
                from vlmeval_encred.registry import get_base

                if tuple(get_base(base).encoders) != tuple(ADAPTER.names(self.model)):
                    raise MaskError(f"registry entry {base!r} encoders {get_base(base).encoders} != "
                                    f"loaded model's {ADAPTER.names(self.model)}")
            self.apply_mask(self.model, spec, base or model_path)

        def generate_inner(self, message, dataset=None):
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
                                        return_tensors="pt").unsqueeze(0).cuda()
            with torch.inference_mode():
                out = self.model.generate(ids, images=pixels.half().cuda(), **self.gen_kwargs)
            if out.shape[1] >= ids.shape[1] and torch.equal(out[0, :ids.shape[1]], ids[0]):
                out = out[:, ids.shape[1]:]  # the fork's transformers returns prompt + answer
            return self.tokenizer.batch_decode(out, skip_special_tokens=True)[0].strip()

    EncredIMoF.__module__ = __name__
    return EncredIMoF


__getattr__ = lazy_wrapper_getattr(__name__, "EncredIMoF", _build_wrapper)
