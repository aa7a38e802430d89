"""DeepSeek-VL 7B through the original ``deepseek_vl`` package (github.com/deepseek-ai/DeepSeek-VL).

Architecture (upstream ``deepseek_vl/models/clip_encoder.py`` and ``modeling_vlm.py``):
``MultiModalityCausalLM.vision_model`` is a ``HybridVisionTower`` holding two
``CLIPVisionTower`` s:

* ``vision_tower_low``  -- SigLIP-L (``model_name`` ``siglip_*``) on ``resize(images)``
  (384 px), output ``(B, T, C_low)``;
* ``vision_tower_high`` -- SAM-B with downsampling (``sam_*``) on the full 1024 px
  image, output ``(B, C_high, h, w)`` flattened to ``(B, h*w, C_high)``.

``forward`` returns them as ``(high, low)`` (``concat_type="tuple"`` in the 7B
config); the fusion point is the aligner, ``MlpProjector`` of type
``low_high_hybrid_split_mlp_gelu``: ``high_up_proj`` / ``low_up_proj`` (Linear
with bias), concatenation ``[high, low]``, GELU, Linear.

Masking (mode ``zero`` only).  The tower's ``forward`` is replaced on the
instance by one that runs only the kept tower and puts zeros of the masked
tower's exact shape (tokens, channels) in its slot, in the aligner's dtype and
on its device; the masked ``CLIPVisionTower`` is then deleted.  The authors ran
the tower and zeroed its output afterwards; the result at the aligner is
bit-identical (tests/test_deepseek_vl_orig.py), but we neither compute nor keep
the tower.  No ``drop`` mode: the aligner's per-branch Linear layers have
biases and the two branches share one fixed-width concatenation, so there is
no exact removal (see docs/masking.md, "DeepSeek-VL").

Shapes: channels are the aligner's input widths; the token count per image is
the processor's ``num_image_tokens`` (the number of ``<image_placeholder>``
slots ``prepare_inputs_embeds`` fills, which every tower must produce).  Upstream
SAM resamples to a fixed grid before downsampling, so its token count cannot
be derived from the image size; the kept tower's token count is checked
against it on every call.
"""

from __future__ import annotations

import gc
from typing import Any

import torch
from vlmeval.vlm.base import BaseModel
from vlmeval.vlm.deepseek_vl import DeepSeekVL

from vlmeval_encred.masking import EncoderAdapter, EncoderInfo, MaskError, MaskSpec, count_params
from vlmeval_encred.model_wrappers.deepseek_vl_hf import check_catalog_order
from vlmeval_encred.wrapper import EncredMixin, resolve_dtype

_TOWERS = {"low": "vision_tower_low", "high": "vision_tower_high"}


def _tower(model: Any) -> Any:
    tower = getattr(model, "vision_model", model)
    missing = [a for a in ("vision_tower_high", "vision_tower_low", "resize", "concat_type") if not hasattr(tower, a)]
    if missing:
        raise MaskError(
            f"{type(model).__name__}.vision_model is {type(tower).__name__}, not a HybridVisionTower "
            f"(deepseek_vl/models/clip_encoder.py): missing {', '.join(missing)}. DeepSeek-VL 1.3B is "
            "SigLIP-only and has no second encoder to mask")
    return tower


def _aligner_in(model: Any, which: str) -> torch.nn.Linear:
    aligner = getattr(model, "aligner", None)
    lin = getattr(aligner, f"{which}_up_proj", None)
    if not isinstance(lin, torch.nn.Linear):
        raise MaskError(f"{type(model).__name__}.aligner has no {which}_up_proj Linear: only the hybrid split "
                        "projector (low_high_hybrid_split_mlp_gelu, DeepSeek-VL 7B) is supported")
    return lin


class HybridVisionTowerAdapter(EncoderAdapter):
    """Encoder masking for ``deepseek_vl``'s ``MultiModalityCausalLM`` with a ``HybridVisionTower``.

    ``num_image_tokens``: image tokens per image, from the checkpoint's
    ``VLChatProcessor``.  Encoder names come from the towers' ``model_name``
    (``siglip_large_patch16_384`` -> ``siglip``, ``sam_b_downsample`` -> ``sam``),
    listed low then high -- the order of transformers' port of the same
    checkpoint, so both loaders give the same entry names.
    """

    family = "deepseek_vl"
    modes = ("zero",)
    drop_equals_zero = None

    def __init__(self, num_image_tokens: int | None = None) -> None:
        self.num_image_tokens = num_image_tokens

    def encoders(self, model: Any) -> list[EncoderInfo]:
        tower = _tower(model)
        cached = getattr(tower, "_encred_infos", None)
        if cached is not None:
            return cached
        if tower.concat_type != "tuple":
            raise MaskError(f"HybridVisionTower.concat_type={tower.concat_type!r}: only 'tuple' (DeepSeek-VL 7B) "
                            "is supported")
        if not self.num_image_tokens:
            raise MaskError("HybridVisionTowerAdapter needs num_image_tokens (VLChatProcessor.num_image_tokens) "
                            "to know the towers' output token count")
        infos = []
        for index, which in enumerate(("low", "high")):
            sub = getattr(tower, _TOWERS[which])
            name = str(getattr(sub, "model_name", which)).split("_")[0].lower()
            shape = (int(self.num_image_tokens), int(_aligner_in(model, which).in_features))
            infos.append(EncoderInfo(name, index, shape, sub, count_params(sub)))
        if infos[0].name == infos[1].name:
            raise MaskError(f"HybridVisionTower: both towers are named {infos[0].name!r}; cannot tell them apart")
        return infos

    def install(self, model: Any, spec: MaskSpec, infos: list[EncoderInfo]) -> None:
        tower = _tower(model)
        by_branch = {("low", "high")[i.index]: i for i in infos}
        refs = {w: _aligner_in(model, w).weight for w in ("low", "high")}
        masked = {w for w, i in by_branch.items() if spec.is_masked(i.name)}
        shapes = {w: by_branch[w].output_shape for w in by_branch}

        def forward(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            b = images.shape[0]
            out: dict[str, torch.Tensor] = {}
            for w in ("high", "low"):
                if w in masked:
                    out[w] = torch.zeros((b, *shapes[w]), dtype=refs[w].dtype, device=refs[w].device)
                    continue
                sub = getattr(tower, _TOWERS[w])
                if w == "high":
                    x = sub(images)
                    out[w] = x.flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, h*w, C), as upstream
                else:
                    out[w] = sub(tower.resize(images))
                if out[w].shape[1] != shapes[w][0]:
                    raise MaskError(f"HybridVisionTower: {by_branch[w].name} gave {out[w].shape[1]} tokens per image "
                                    f"but the processor's num_image_tokens is {shapes[w][0]}")
            return (out["high"], out["low"])

        tower.forward = forward  # instance attribute: nn.Module.__call__ dispatches to it
        tower._encred_infos = [EncoderInfo(i.name, i.index, i.output_shape, None if spec.is_masked(i.name)
                                           else i.module, i.params) for i in infos]

    def release(self, model: Any, spec: MaskSpec, infos: list[EncoderInfo]) -> int:
        tower = _tower(model)
        freed = 0
        for info in infos:
            if not spec.is_masked(info.name):
                continue
            attr = _TOWERS[("low", "high")[info.index]]
            freed += count_params(getattr(tower, attr))
            setattr(tower, attr, None)
            info.module = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return freed


class EncredDeepSeekVL(EncredMixin, DeepSeekVL):
    """VLMEvalKit's ``DeepSeekVL`` wrapper with a masked ``HybridVisionTower``.

    Loads like VLMEvalKit (``VLChatProcessor.from_pretrained``,
    ``AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True)``), masks
    on the CPU *before* moving the model to the device (a masked tower never
    reaches GPU memory), and keeps VLMEvalKit's conversation building.  Unlike
    VLMEvalKit, dtype and device are arguments and decoding is greedy by default.
    """

    def __init__(self, model_path: str = "deepseek-ai/deepseek-vl-7b-chat", torch_dtype: Any = "bfloat16",
                 device: str | None = None, max_new_tokens: int = 512, **gen_kwargs: Any) -> None:
        spec, base = self.pop_encred_kwargs(gen_kwargs)
        BaseModel.__init__(self)  # not DeepSeekVL.__init__, which hard-codes bfloat16 and .cuda()
        self.check_install()
        from deepseek_vl.models import VLChatProcessor
        from transformers import AutoModelForCausalLM

        self.model_path = model_path
        self.vl_chat_processor = VLChatProcessor.from_pretrained(model_path)
        self.tokenizer = self.vl_chat_processor.tokenizer
        self.adapter = HybridVisionTowerAdapter(self.vl_chat_processor.num_image_tokens)
        model = AutoModelForCausalLM.from_pretrained(model_path, trust_remote_code=True)
        check_catalog_order(base, self.adapter.names(model))
        self.apply_mask(model, spec, base or model_path)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = model.to(device=device, dtype=resolve_dtype(torch_dtype)).eval()
        self.kwargs = self.generation_kwargs(dict(max_new_tokens=max_new_tokens, use_cache=True), gen_kwargs)

    def generate_inner(self, message: list[dict[str, Any]], dataset: str | None = None) -> str:
        from deepseek_vl.utils.io import load_pil_images

        conversation = self.prepare_inputs(message)  # VLMEvalKit's conversation building
        images = load_pil_images(conversation)
        inputs = self.vl_chat_processor(conversations=conversation, images=images, force_batchify=True)
        inputs = inputs.to(self.model.device, dtype=self.model.dtype)
        with torch.inference_mode():
            embeds = self.model.prepare_inputs_embeds(**inputs)
            out = self.model.language_model.generate(
                inputs_embeds=embeds, attention_mask=inputs.attention_mask,
                pad_token_id=self.tokenizer.eos_token_id, bos_token_id=self.tokenizer.bos_token_id,
                eos_token_id=self.tokenizer.eos_token_id, **self.kwargs)
        return self.tokenizer.decode(out[0].cpu().tolist(), skip_special_tokens=True).strip()
