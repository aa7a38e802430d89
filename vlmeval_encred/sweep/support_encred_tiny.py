""":class:`~.protocol.SweepSupport` for the CPU demo model (``EncredTiny``, base ``encred_tiny``).

Mirrors ``EncredTinyModel.generate_answer`` step by step: the same prompt ids,
each tower's output brought to the common grid (the tensor zero-masking
replaces), per-subset channel concatenation + projector, then greedy decoding
without a KV cache -- for all subsets at once, each row stopping at its own
end-of-sequence token exactly where a batch of one stops.  Only the ``zero``
mask mode is swept (``drop`` changes the projector per subset).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch


class EncredTinySweep:
    """SweepSupport of the demo family (see the module docstring)."""

    def prepare(self, wrapper: Any, message: list[dict[str, Any]], dataset: str | None) -> Any:
        from vlmeval_encred.demo.model import pixels_from_image

        images = [m["value"] for m in message if m["type"] == "image"]
        if not images:
            raise ValueError("EncredTiny needs an image in every message (it is a demo VLM)")
        prompt = "\n".join(m["value"] for m in message if m["type"] == "text")
        m = wrapper.model
        pixels = pixels_from_image(images[0], m.config.image_size)
        ids = torch.tensor([m.build_inputs(wrapper.tokenizer, prompt)], device=pixels.device)
        return {"pixels": pixels, "input_ids": ids}

    def encode(self, wrapper: Any, inputs: Any, encoders: Sequence[str]) -> dict[str, torch.Tensor]:
        from vlmeval_encred.demo.model import to_grid

        m = wrapper.model
        with torch.inference_mode():
            return {n: to_grid(m.towers[n](inputs["pixels"]), m.config.grid) for n in encoders}

    def fuse_and_generate(self, wrapper: Any, inputs: Any, features_per_subset: list[dict[str, Any]],
                          mask_mode: str) -> list[str]:
        if mask_mode != "zero":
            raise ValueError(f"encred sweep supports mask mode 'zero' for encred_tiny, not {mask_mode!r}")
        m, tok = wrapper.model, wrapper.tokenizer
        if m.dropped:
            raise ValueError("encred sweep needs an encred_tiny model loaded in zero mode (towers were dropped)")
        pixels, ids = inputs["pixels"], inputs["input_ids"]
        grid, t = m.config.grid, m.config.n_image_tokens
        with torch.inference_mode():
            imgs = []
            for feats in features_per_subset:
                parts = [feats[n] if feats.get(n) is not None
                         else pixels.new_zeros(1, grid * grid, m.tower_channels[n]) for n in m.encoder_names]
                imgs.append(m.projector(torch.cat(parts, dim=-1)))
            emb = m.language_model.get_input_embeddings()(ids)
            s = len(imgs)
            embeds = torch.cat([emb[:, :1].expand(s, -1, -1), torch.cat(imgs, 0).to(emb.dtype),
                                emb[:, 1 + t:].expand(s, -1, -1)], dim=1)
            emb_layer = m.language_model.get_input_embeddings()
            outs: list[list[int]] = [[] for _ in range(s)]
            live, cur = list(range(s)), embeds
            for _ in range(wrapper.max_new_tokens):
                nxt = torch.argmax(m.language_model(inputs_embeds=cur).logits[:, -1], dim=-1).tolist()
                keep = [i for i, tokid in enumerate(nxt) if tokid != tok.eos_token_id]
                for i in keep:
                    outs[live[i]].append(nxt[i])
                if not keep:
                    break
                live = [live[i] for i in keep]  # finished rows leave the batch
                step = emb_layer(torch.tensor([[nxt[i]] for i in keep], device=pixels.device))
                cur = torch.cat([cur[keep], step], dim=1)
        return [tok.decode(o, skip_special_tokens=True).strip() for o in outs]

