"""Tiny stand-in for ``cambrian/model/cambrian_arch.py`` and ``language_model/cambrian_llama.py``.

Written anew to mirror only the structure the masking adapter touches:

* ``TinyCambrianModel`` ~ ``CambrianMetaModel`` + ``CambrianLlamaModel``: the
  auxiliary towers in a *plain list* ``vision_tower_aux_list`` (so, as
  upstream at inference, their weights are not submodules), one
  ``mm_projector_aux_i`` per tower (Linear, GELU, Linear, LayerNorm),
  ``vision_sampler_<group>`` connectors, ``vision_query``, ``mm_projector``,
  ``image_newline``, and ``vision_sampler_layers`` applied inside the LLM at
  ``start_of_vision_sampler_layers + k * stride_of_vision_sampler_layers`` to
  the image positions (image rows without their newline token).
* ``TinyCambrianForCausalLM`` ~ ``CambrianMetaForCausalLM``:
  ``encode_images``, ``rearrange_vision_tower_features_inference`` (local
  windows per query plus boolean masks, padding windows re-enabled when
  empty) and the SVA branch of ``prepare_inputs_labels_for_multimodal``
  (global context = mean of projected tower 0, computed before the features
  are rearranged).
* ``unpad_image`` / ``unmask_attention_mask`` as upstream.

The LLM is a few residual MLP blocks instead of Llama layers, and the image is
always placed at ``config.image_position`` with text around it.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .vision_sampler import VisionTokenSampler


def unpad_image(t: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
    """Crop the rows/columns that correspond to square padding (t is 1 x H x W x ...)."""
    ow, oh = original_size
    h, w = t.shape[1:3]
    if ow / oh > w / h:
        pad = (h - int(oh * (w / ow))) // 2
        return t[:, pad:h - pad]
    pad = (w - int(ow * (h / oh))) // 2
    return t[:, :, pad:w - pad]


def unmask_attention_mask(mask: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
    ow, oh = original_size
    h, w = mask.shape[1:3]
    if ow / oh > w / h:
        pad = (h - int(oh * (w / ow))) // 2
        if pad > 0:
            mask[:, :pad] = False
            mask[:, -pad:] = False
    else:
        pad = (w - int(ow * (h / oh))) // 2
        if pad > 0:
            mask[:, :, :pad] = False
            mask[:, :, -pad:] = False
    return mask


class TinyTower(nn.Module):
    """A vision tower: image -> (B, side*side, hidden_size); loaded/named like upstream towers."""

    def __init__(self, name: str, hidden_size: int, side: int, image_res: int = 32) -> None:
        super().__init__()
        self.vision_tower_name = name
        self.hidden_size = hidden_size
        self.is_loaded = True
        self.image_processor = SimpleNamespace(name=name, crop_size={"height": image_res})
        self.patch = nn.Conv2d(3, hidden_size, kernel_size=image_res // side, stride=image_res // side)
        self.mix = nn.Linear(hidden_size, hidden_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.mix(self.patch(images).flatten(2).transpose(1, 2))


def tiny_config(**over: Any) -> SimpleNamespace:
    cfg = dict(
        mm_projector_type="sva",
        mm_vision_tower_aux_list=["siglip/CLIP-ViT-SO400M-14-384", "openai/clip-vit-large-patch14-336",
                                  "facebook/dinov2-giant-res378", "clip-convnext-XXL-multi-stage"],
        mm_vision_tower_aux_token_len_list=[16, 16, 16, 64],
        tower_hidden_sizes=[12, 10, 14, 20],
        image_token_len=16, query_num_list=[16], num_query_group=1, connector_depth=2,
        connector_only=False, num_of_vision_sampler_layers=2, start_of_vision_sampler_layers=0,
        stride_of_vision_sampler_layers=2, num_layers=4, image_position=2,
        vision_hidden_size=16, hidden_size=24, vocab_size=50, num_heads=4, mm_use_im_start_end=False)
    cfg.update(over)
    return SimpleNamespace(**cfg)


class TinyCambrianModel(nn.Module):
    def __init__(self, config: SimpleNamespace, sampler_cls: type = VisionTokenSampler) -> None:
        super().__init__()
        self.config = config
        vh, n = config.vision_hidden_size, len(config.mm_vision_tower_aux_list)
        # Plain list, as upstream at inference: the towers are not registered submodules.
        self.vision_tower_aux_list = [
            TinyTower(name, hs, int(tl ** 0.5))
            for name, hs, tl in zip(config.mm_vision_tower_aux_list, config.tower_hidden_sizes,
                                    config.mm_vision_tower_aux_token_len_list)]
        for i, tower in enumerate(self.vision_tower_aux_list):
            setattr(self, f"mm_projector_aux_{i}", nn.Sequential(
                nn.Linear(tower.hidden_size, vh), nn.GELU(), nn.Linear(vh, vh), nn.LayerNorm(vh)))
        heads = {"num_heads": config.num_heads} if sampler_cls is VisionTokenSampler else {}
        for g, qn in enumerate(config.query_num_list):
            sizes = [int(tl ** 0.5) // int(qn ** 0.5) for tl in config.mm_vision_tower_aux_token_len_list]
            setattr(self, f"vision_sampler_{g}", sampler_cls(vh, vh, [vh] * n, sizes, vh, config.connector_depth, **heads))
        sizes = [int(tl ** 0.5) // int(config.image_token_len ** 0.5) for tl in config.mm_vision_tower_aux_token_len_list]
        self.vision_sampler_layers = nn.ModuleList([
            sampler_cls(config.hidden_size, vh, [vh] * n, sizes, vh, 1, **heads)
            for _ in range(config.num_of_vision_sampler_layers)])
        self.vision_query = nn.Parameter(torch.randn(config.num_query_group, vh) / vh ** 0.5)
        self.mm_projector = nn.Sequential(nn.Linear(vh * config.num_query_group, config.hidden_size), nn.GELU(),
                                          nn.Linear(config.hidden_size, config.hidden_size))
        self.image_newline = nn.Parameter(torch.randn(config.hidden_size) / config.hidden_size ** 0.5)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([nn.Sequential(nn.LayerNorm(config.hidden_size),
                                                   nn.Linear(config.hidden_size, config.hidden_size), nn.GELU())
                                     for _ in range(config.num_layers)])

    def get_vision_tower_aux_list(self) -> list[nn.Module]:
        return self.vision_tower_aux_list

    def forward(self, hidden: torch.Tensor, feats: list[torch.Tensor] | None, masks: list[torch.Tensor] | None,
                sizes: list[tuple[int, int]] | None, context: torch.Tensor | None) -> torch.Tensor:
        cfg = self.config
        starts = [cfg.start_of_vision_sampler_layers + k * cfg.stride_of_vision_sampler_layers
                  for k in range(len(self.vision_sampler_layers))]
        for i, layer in enumerate(self.layers):
            hidden = hidden + layer(hidden)
            if cfg.connector_only or feats is None or i not in starts:
                continue
            p = cfg.image_position
            queries, newlines, counts = [], [], []
            for b, (h, w) in enumerate(sizes):
                block = hidden[b:b + 1, p:p + h * (w + 1)].clone().view(1, h, w + 1, -1)
                queries.append(block[:, :, :-1].reshape(h * w, 1, -1))
                newlines.append(block[:, :, -1:])
                counts.append(h * w)
            sampler = self.vision_sampler_layers[(i - starts[0]) // cfg.stride_of_vision_sampler_layers]
            out = sampler(torch.cat(queries, 0), context, *feats, *masks)
            hidden = hidden.clone()
            for b, (chunk, (h, w)) in enumerate(zip(torch.split(out, counts, 0), sizes)):
                merged = torch.cat([chunk.view(1, h, w, -1), newlines[b]], 2).flatten(1, 2)
                hidden[b:b + 1, p:p + h * (w + 1)] = merged
        return hidden


class TinyCambrianForCausalLM(nn.Module):
    def __init__(self, config: SimpleNamespace, sampler_cls: type = VisionTokenSampler) -> None:
        super().__init__()
        self.config = config
        self.model = TinyCambrianModel(config, sampler_cls)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def get_model(self) -> TinyCambrianModel:
        return self.model

    def get_vision_tower_aux_list(self) -> list[nn.Module]:
        return self.model.get_vision_tower_aux_list()

    def encode_images(self, image_aux_list: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [tower(img) for img, tower in zip(image_aux_list, self.model.get_vision_tower_aux_list())]

    def rearrange_vision_tower_features_inference(self, feature_list, query_side_len, image_sizes, unpad=False):
        out_feats, out_masks = [], []
        bs = feature_list[0].shape[0]
        for feat in feature_list:
            side = int(feat.shape[1] ** 0.5)
            assert side % query_side_len == 0
            r = side // query_side_len
            per_f, per_m = [], []
            for b in range(bs):
                mask = torch.ones((1, side, side), dtype=torch.bool, device=feat.device)
                f = feat[b].view(1, query_side_len, r, query_side_len, r, -1).permute(0, 1, 3, 2, 4, 5).contiguous()
                if unpad:
                    f = unpad_image(f, image_sizes[b])
                f = f.flatten(0, 2).flatten(1, 2)
                mask = unmask_attention_mask(mask, image_sizes[b])
                mask = mask.view(1, query_side_len, r, query_side_len, r).permute(0, 1, 3, 2, 4).contiguous()
                if unpad:
                    mask = unpad_image(mask, image_sizes[b])
                mask = mask.flatten(0, 2).flatten(1, 2)
                mask[mask.sum(-1) == 0] = True
                per_f.append(f)
                per_m.append(mask)
            out_feats.append(torch.cat(per_f, 0))
            out_masks.append(torch.cat(per_m, 0))
        return out_feats, out_masks

    def prepare_inputs_labels_for_multimodal(self, images: list[torch.Tensor], image_sizes: list[tuple[int, int]]):
        """The SVA branch of upstream's method; returns image features and the in-LLM SVA inputs."""
        m = self.get_model()
        towers = m.get_vision_tower_aux_list()
        bs, dtype = images[0].shape[0], images[0].dtype
        side = int(m.config.image_token_len ** 0.5)
        feats = self.encode_images(images)
        projected = []
        for i in range(len(towers)):
            f = getattr(m, f"mm_projector_aux_{i}")(feats[i]).to(dtype)
            if i == 0:
                context = f.mean(1).view(bs, 1, 1, -1)
            projected.append(f)
        groups = []
        for g, qn in enumerate(m.config.query_num_list):
            q = m.vision_query[g].view(1, 1, 1, -1).expand(bs, qn, -1, -1)
            ctx = context.expand(-1, qn, 1, -1).flatten(0, 1)
            qs = int(qn ** 0.5)
            fl, ml = self.rearrange_vision_tower_features_inference(projected, qs, image_sizes)
            out = getattr(m, f"vision_sampler_{g}")(q.flatten(0, 1), ctx, *fl, *ml).view(bs, qn, -1)
            if qs != side:
                out = out.permute(0, 2, 1).reshape(bs, -1, qs, qs)
                out = F.interpolate(out.float(), size=(side, side), mode="bilinear", align_corners=False).to(out.dtype)
                out = out.permute(0, 2, 3, 1).flatten(1, 2)
            groups.append(out)
        image_features = m.mm_projector(torch.cat(groups, -1)).view(bs, side, side, -1)
        fl_final, ml_final = self.rearrange_vision_tower_features_inference(projected, side, image_sizes, unpad=True)
        unpadded, sizes, ctx_final = [], [], []
        for b in range(bs):
            cur = unpad_image(image_features[b].unsqueeze(0), image_sizes[b])
            h, w = cur.shape[1:3]
            sizes.append((h, w))
            cur = torch.cat([cur, m.image_newline.view(1, 1, 1, -1).expand(1, h, 1, -1)], 2).flatten(1, 2)
            unpadded.append(cur.squeeze(0))
            ctx_final.append(context[b].expand(h * w, 1, -1))
        return unpadded, fl_final, ml_final, sizes, torch.cat(ctx_final, 0)

    def forward(self, input_ids: torch.Tensor, images: list[torch.Tensor], image_sizes: list[tuple[int, int]]):
        """Logits for ``input_ids`` with the image inserted at ``config.image_position``."""
        m = self.get_model()
        img, feats, masks, sizes, ctx = self.prepare_inputs_labels_for_multimodal(images, image_sizes)
        p = m.config.image_position
        rows = [torch.cat([m.embed_tokens(ids[:p]), im, m.embed_tokens(ids[p:])], 0) for ids, im in zip(input_ids, img)]
        hidden = torch.stack(rows, 0)  # same image size in a batch in the tests
        return self.lm_head(m(hidden, feats, masks, sizes, ctx))
