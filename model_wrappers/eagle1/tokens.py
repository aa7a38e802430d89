"""Token-budget variants of Eagle-1 (docs/tokens.md; issue 19).

Visual tokens: the ``num_tokens`` (32 x 32 = 1024) grid positions of each image's channel
concatenation (``MultiBackboneChannelConcatenationVisionTower.forward``); ``mm_projector``
maps each position to one LLM token, and upstream's ``prepare_inputs_labels_for_multimodal``
puts them in place of the prompt's image token.

``fusion``: per image, every unmasked tower's block of the concatenation (its channels at the
fusion point) is scored by the L2 norm of each position's features and weighted by its
effective rank (:func:`vlmeval_encred.tokens.fusion_select`).  No tower has an attention
signal there: Eagle's HR-CLIP tower (``hr_clip_encoder.HRCLIPVisionTower.forward``) removes
[CLS] right after the patch embedding, before ``pre_layrnorm`` and every transformer block,
so the model never computes a [CLS] query, let alone its last-layer attention; SAM and EVA-02
are windowed ViTs without [CLS], Pix2Struct's encoder has none, ConvNeXt is convolutional.
The kept positions' projected features replace the image token (the LLM's sequence shrinks by
the pruned count) and every token keeps its original position id: a forward pre-hook on the
LLaMA model maps the shorter sequence's indices to the unpruned prompt's positions (decoding
steps continue after the unpruned length); the causal mask and the KV cache index the shorter
sequence, as transformers builds them.

``llm``: :class:`vlmeval_encred.tokens.LlmPruner` on the LLaMA decoder's layers, armed with
the image tokens' positions in the spliced prompt.

Both stages act inside upstream's own ``generate`` (VLMEvalKit's ``generate_inner`` is
unchanged): the model instance's ``prepare_inputs_labels_for_multimodal`` is wrapped.  One
sample at a time (VLMEvalKit's batch of one); images as one 4-D tensor (``pad``/square
aspect, what VLMEvalKit's Eagle gives), flat patch merge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from vlmeval_encred.tokens import LlmPruner, TokenError, TokenSpec, fusion_select

IMAGE_TOKEN_INDEX = -200
"""Upstream's placeholder id for an image in ``input_ids`` (``eagle.constants``)."""


@dataclass
class Block:
    """One tower's channels in the loaded fusion's concatenation."""

    name: str
    start: int
    width: int
    scored: bool
    """False for a masked tower (a zero block in mode ``zero``): masked towers take no part."""


def channel_blocks(report: Any) -> list[Block]:
    """The loaded model's concatenation layout from its mask report: in mode ``zero`` every tower
    keeps its slot (masked ones as zeros), in mode ``drop`` masked towers have no channels."""
    blocks, start = [], 0
    for e in report.encoders:
        masked = report.spec.is_masked(e.name)
        if masked and report.spec.mode == "drop":
            continue
        blocks.append(Block(e.name, start, int(e.output_shape[1]), not masked))
        start += int(e.output_shape[1])
    return blocks


def expanded_positions(input_ids: torch.Tensor, kept_per_image: list[list[int]], per_image: int) -> tuple[list[int], list[int], int]:
    """(original position of each token of the spliced sequence, original positions of every
    image token, unpruned length) for a prompt whose k-th image token became the grid positions
    ``kept_per_image[k]`` of ``per_image``."""
    table, visual, pos, img = [], [], 0, 0
    for tok in input_ids.tolist():
        if tok == IMAGE_TOKEN_INDEX:
            if img >= len(kept_per_image):
                raise TokenError(f"the prompt has more image tokens than the {len(kept_per_image)} images given")
            table.extend(pos + j for j in kept_per_image[img])
            visual.extend(range(pos, pos + per_image))
            pos += per_image
            img += 1
        else:
            table.append(pos)
            pos += 1
    if img != len(kept_per_image):
        raise TokenError(f"the prompt has {img} image tokens for {len(kept_per_image)} images")
    return table, visual, pos


@dataclass
class EagleTokens:
    """A loaded Eagle-1 model's token budget: the wrapped ``prepare_inputs_labels_for_multimodal``,
    the position map of the fusion stage, the llm stage's pruner, the last sample's report."""

    model: Any
    spec: TokenSpec
    blocks: list[Block]
    pruner: LlmPruner | None = None
    report: dict[str, Any] | None = None
    table: torch.Tensor | None = None
    """Fusion stage, while armed: original position of each index of the shorter sequence."""
    pruned: int = 0
    _handles: list[Any] = field(default_factory=list)

    # -- the wrapped upstream step -------------------------------------------------------------
    def prepare(self, original: Callable[..., tuple], input_ids: Any, position_ids: Any, attention_mask: Any,
                past_key_values: Any, labels: Any, images: Any, image_sizes: Any = None) -> tuple:
        """Upstream's ``prepare_inputs_labels_for_multimodal`` with the budget applied (prefill only:
        the same condition upstream uses to return early)."""
        args = (input_ids, position_ids, attention_mask, past_key_values, labels, images)
        if images is None or input_ids is None or input_ids.shape[1] == 1 or self.model.get_vision_tower() is None:
            return original(*args, image_sizes=image_sizes)
        if input_ids.shape[0] != 1:
            raise TokenError("token budgets run one sample at a time (batch size 1)")
        if not torch.is_tensor(images) or images.ndim != 4:
            raise TokenError("Eagle-1 token budgets take the images as one 4-D tensor (image_aspect_ratio pad or "
                             "square, as VLMEvalKit's Eagle gives them), not a list or anyres patches")
        if getattr(self.model.config, "mm_patch_merge_type", "flat") != "flat":
            raise TokenError("Eagle-1 token budgets need mm_patch_merge_type 'flat'")
        if self.spec.stage == "llm":
            out = original(*args, image_sizes=image_sizes)
            per_image = int(self.model.get_vision_tower().num_tokens)
            table, visual, total = expanded_positions(input_ids[0], [list(range(per_image))] * images.shape[0],
                                                      per_image)
            if out[4].shape[1] != total:
                raise TokenError(f"llm stage: upstream's sequence has {out[4].shape[1]} tokens, expected {total} "
                                 "(truncated by tokenizer_model_max_length?)")
            self.pruner.arm(visual, total)
            self.report = {"stage": "llm", "layer": self.spec.layer, "visual": visual}
            return out
        return self._fusion(original, args, image_sizes)

    def _fusion(self, original: Callable[..., tuple], args: tuple, image_sizes: Any) -> tuple:
        model, input_ids, images = self.model, args[0], args[5]
        with torch.no_grad():
            fused = model.get_vision_tower()(images)  # what upstream's encode_images runs, then the projector
            projected = model.get_model().mm_projector(fused)
        n_img, per_image = fused.shape[:2]
        kept, weights = [], []
        for b in range(n_img):
            feats = {bl.name: fused[b, :, bl.start:bl.start + bl.width] for bl in self.blocks if bl.scored}
            sel = fusion_select(feats, self.spec)
            kept.append(sel.kept.tolist())
            weights.append(sel.weights)
        chosen = torch.stack([projected[b, torch.tensor(k, device=projected.device)] for b, k in enumerate(kept)])
        table, visual, total = expanded_positions(input_ids[0], kept, per_image)
        limit = getattr(model.config, "tokenizer_model_max_length", None)
        if limit is not None and total > limit:
            raise TokenError(f"fusion stage: the unpruned prompt ({total} tokens) exceeds tokenizer_model_max_length "
                             f"({limit}); upstream would truncate it, and the pruned one differently")

        def encode_images(given: torch.Tensor) -> torch.Tensor:
            return chosen

        model.encode_images = encode_images  # instance attribute, for this call only
        try:
            out = original(*args, image_sizes=image_sizes)
        finally:
            del model.encode_images
        self.table = torch.tensor(table, dtype=torch.long)
        self.pruned = total - len(table)
        image = set(visual)
        self.report = {"stage": "fusion", "visual": visual, "kept": [p for p in table if p in image],
                       "weights": weights}
        return out

    # -- fusion stage: original position ids ---------------------------------------------------
    def positions(self, _module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """Forward pre-hook of the LLaMA model: indices of the shorter sequence -> original positions
        (index ``i`` below the prompt's length: its table entry; later ones: ``i + pruned``)."""
        if self.table is None:
            return None
        emb = kwargs.get("inputs_embeds")
        ref = emb if emb is not None else (args[0] if args else kwargs["input_ids"])
        pos = kwargs.get("position_ids")
        if pos is None:
            cp = kwargs.get("cache_position")
            if cp is None:
                cp = torch.arange(_cached_length(kwargs.get("past_key_values")),
                                  _cached_length(kwargs.get("past_key_values")) + ref.shape[1], device=ref.device)
            pos = cp.unsqueeze(0)
        table = self.table.to(pos.device)
        n = table.numel()
        mapped = torch.where(pos < n, table[pos.clamp(max=n - 1)], pos + self.pruned)
        return args, {**kwargs, "position_ids": mapped}

    # -- control -------------------------------------------------------------------------------
    def disarm(self) -> None:
        """After a sample: the next use of the model (another sample) starts unarmed."""
        self.table = None
        if self.pruner is not None:
            if self.report is not None and self.report.get("stage") == "llm":
                self.report["kept"] = list(self.pruner.kept_visual or self.report["visual"])
            self.pruner.disarm()


def _cached_length(past: Any) -> int:
    if past is None:
        return 0
    if hasattr(past, "get_seq_length"):
        return int(past.get_seq_length())
    return int(past[0][0].shape[2]) if len(past) else 0


def install_tokens(wrapper: Any, spec: TokenSpec, name: str) -> EagleTokens:
    """Attach ``spec`` to the wrapper's loaded, masked model (checked here, before any sample)."""
    report = wrapper.encred_report
    blocks = channel_blocks(report)
    if spec.stage == "fusion" and not any(b.scored for b in blocks):
        raise TokenError(f"{name}: every tower is masked; the fusion stage has no tower to score tokens")
    model = wrapper.model
    inner = model.get_model()
    state = EagleTokens(model=model, spec=spec, blocks=blocks)
    if spec.stage == "llm":
        state.pruner = LlmPruner(inner.layers, spec)
    else:
        state._handles.append(inner.register_forward_pre_hook(state.positions, with_kwargs=True))
    original = model.prepare_inputs_labels_for_multimodal  # the class's method, bound

    def prepare(*args: Any, **kwargs: Any) -> tuple:
        return state.prepare(original, *args, **kwargs)

    model.prepare_inputs_labels_for_multimodal = prepare  # instance attribute, for this variant's lifetime
    return state
