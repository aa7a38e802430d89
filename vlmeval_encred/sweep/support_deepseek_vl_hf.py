""":class:`~.protocol.SweepSupport` for ``EncredDeepseekVLHybrid`` (transformers' DeepseekVLHybrid).

* ``prepare``: the wrapper's own ``build_inputs`` (what ``generate_inner`` calls).
* ``encode``: ``get_low_res_image_features`` (siglip) and
  ``get_high_res_image_features`` (sam) -- the tensors the aligner receives
  and the ones masking replaces by zeros.
* ``fuse_and_generate``: the aligner once per subset (batch = that sample's
  images, as in a per-variant run), then one ``generate`` over all subsets
  with the precomputed image features passed as ``mm_encoder_outputs``.  Rows are cut after
  their first end-of-sequence token before decoding, because in a batch a row
  that finished early continues with padding where a batch of one stops.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch


def _inner(wrapper: Any) -> Any:
    return wrapper.model.model


def _branches(wrapper: Any) -> dict[str, tuple[str, Any]]:
    """encoder name -> (branch, EncoderInfo); branch 'low' (SigLIP) or 'high' (SAM)."""
    infos = wrapper.adapter.encoders(wrapper.model)
    return {i.name: ("low" if i.index == 0 else "high", i) for i in infos}


def _eos_ids(wrapper: Any) -> set[int]:
    eos = wrapper.model.generation_config.eos_token_id
    if eos is None:
        eos = wrapper.tokenizer.eos_token_id
    return set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}


def cut_after_eos(row: torch.Tensor, eos: set[int]) -> torch.Tensor:
    """Tokens up to and including the first end-of-sequence token (what a batch of one returns)."""
    for pos, tok in enumerate(row.tolist()):
        if tok in eos:
            return row[:pos + 1]
    return row


class DeepseekVLHybridSweep:
    """SweepSupport of the DeepseekVLHybrid family (see the module docstring)."""

    def prepare(self, wrapper: Any, message: list[dict[str, Any]], dataset: str | None) -> Any:
        return wrapper.build_inputs(message)

    def encode(self, wrapper: Any, inputs: Any, encoders: Sequence[str]) -> dict[str, torch.Tensor]:
        inner = _inner(wrapper)
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

    def fuse_and_generate(self, wrapper: Any, inputs: Any, features_per_subset: list[dict[str, Any]],
                          mask_mode: str) -> list[str]:
        if mask_mode != "zero":
            raise ValueError(f"DeepseekVLHybrid supports mask mode 'zero' only, not {mask_mode!r}")
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        inner = _inner(wrapper)
        branches = _branches(wrapper)
        aligner = inner.aligner
        n_img = inputs["pixel_values"].shape[0]
        S = len(features_per_subset)
        with torch.inference_mode():
            fused = []
            for feats in features_per_subset:
                parts = {}
                for name, (branch, info) in branches.items():
                    ref = aligner.vision_proj.weight if branch == "low" else aligner.high_res_vision_proj.weight
                    t = feats.get(name)
                    parts[branch] = t if t is not None else torch.zeros(
                        (n_img, *info.output_shape), dtype=ref.dtype, device=ref.device)
                fused.append(aligner(parts["low"], parts["high"]))
            image_features = torch.cat(fused, dim=0)
            # Pixels stay out of the batch: generate() would encode them; the features are given
            # as ``mm_encoder_outputs`` (transformers' own entry for pre-encoded images), which
            # is what generate() itself builds from the pixels before the prefill.
            batched = {k: v.repeat(S, *([1] * (v.dim() - 1))) for k, v in inputs.items()
                       if torch.is_tensor(v) and k not in ("pixel_values", "high_res_pixel_values")}
            mm = {"image": BaseModelOutputWithPooling(pooler_output=image_features)}
            out = wrapper.model.generate(**batched, mm_encoder_outputs=mm, **wrapper.kwargs)
        start = inputs["input_ids"].shape[1]
        eos = _eos_ids(wrapper)
        return [wrapper.tokenizer.decode(cut_after_eos(row[start:], eos), skip_special_tokens=True).strip()
                for row in out]
