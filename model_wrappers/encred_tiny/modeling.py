"""The CPU demo model (``vlmeval_encred.demo.model``) as a VLMEvalKit model, with masking.

Architecture: three towers (``lowres``, ``hires``, ``colour``), each brought to a
common 4x4 token grid, concatenated along channels, ``mlp2x_gelu`` projector,
``LlamaForCausalLM``.  The fusion point is the channel concatenation
(``EncredTinyModel.fusion_inputs``); each tower's per-image output there is
``(16, C_i)``.

Masking modes:

``zero`` (paper)
    The masked tower is never run; zeros of shape ``(B, 16, C_i)`` take its place
    in the concatenation.  Its module is then deleted.
``drop``
    The tower is removed from the concatenation and the projector's first
    ``Linear`` loses the matching input columns.  Because those columns only
    ever multiplied zeros under ``zero``, the outputs are the same as ``zero``
    (up to float summation order; tests check equal answers and allclose
    features), so ``drop_equals_zero = True``.

Imports only torch and ``vlmeval.vlm.base`` at import time (it is imported while
``vlmeval.config`` executes).
"""

from __future__ import annotations

import gc
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from vlmeval.vlm.base import BaseModel

from vlmeval_encred.masking import EncoderAdapter, EncoderInfo, MaskError, MaskSpec, count_params
from vlmeval_encred.wrapper import EncredMixin, resolve_dtype


def _check(model: Any) -> Any:
    for attr in ("towers", "encoder_names", "tower_channels", "projector", "zeroed", "dropped"):
        if not hasattr(model, attr):
            raise MaskError(f"{type(model).__name__} is not an EncredTinyModel: no attribute {attr!r}")
    return model


class EncredTinyAdapter(EncoderAdapter):
    """Encoder masking for :class:`vlmeval_encred.demo.model.EncredTinyModel`."""

    family = "encred_tiny"
    modes = ("zero", "drop")
    drop_equals_zero = True

    def encoders(self, model: Any) -> list[EncoderInfo]:
        m = _check(model)
        t = m.config.n_image_tokens
        return [EncoderInfo(name, i, (t, m.tower_channels[name]),
                            m.towers[name] if name in m.towers else None,
                            count_params(m.towers[name]) if name in m.towers else 0)
                for i, name in enumerate(m.encoder_names)]

    def install(self, model: Any, spec: MaskSpec, infos: list[EncoderInfo]) -> None:
        m = _check(model)
        masked = [i for i in infos if spec.is_masked(i.name)]
        if spec.mode == "zero":
            m.zeroed.update(i.name for i in masked)
            return
        if spec.mode != "drop":
            raise MaskError(f"encred_tiny: unsupported mask mode {spec.mode!r}")
        # Columns of the projector's first Linear, in concatenation order.
        first: torch.nn.Linear = m.projector[0]
        keep_cols, start = [], 0
        for name in m.encoder_names:
            if name in m.dropped:
                continue
            width = m.tower_channels[name]
            if not spec.is_masked(name):
                keep_cols.extend(range(start, start + width))
            start += width
        if start != first.in_features:
            raise MaskError(f"encred_tiny: projector expects {first.in_features} input channels but the "
                            f"towers give {start}; the checkpoint is inconsistent")
        with warnings.catch_warnings():  # every tower dropped: a 0-column Linear (bias only) is intended
            warnings.simplefilter("ignore", UserWarning)
            new = torch.nn.Linear(len(keep_cols), first.out_features, bias=first.bias is not None,
                                  dtype=first.weight.dtype, device=first.weight.device)
        with torch.no_grad():
            new.weight.copy_(first.weight[:, keep_cols])
            if first.bias is not None:
                new.bias.copy_(first.bias)
        m.projector[0] = new
        m.dropped.update(i.name for i in masked)

    def release(self, model: Any, spec: MaskSpec, infos: list[EncoderInfo]) -> int:
        m = _check(model)
        freed = 0
        for info in infos:
            if spec.is_masked(info.name) and info.name in m.towers:
                freed += count_params(m.towers[info.name])
                del m.towers[info.name]
                info.module = None
        gc.collect()
        return freed


class EncredTiny(EncredMixin, BaseModel):
    """VLMEvalKit wrapper for the demo model: greedy, one image, VLMEvalKit's MCQ prompt.

    ``model_path`` is ``encred-demo:default`` (the checkpoint shipped in the
    package) or any directory holding a checkpoint of this architecture; both go
    through :func:`vlmeval_encred.demo.model.load_pretrained`.  The prompt is the
    dataset's own (VLMEvalKit's default ``build_prompt``), so no custom prompt.
    """

    INSTALL_REQ = False
    INTERLEAVE = False
    adapter = EncredTinyAdapter()
    on_generate: Callable[[], None] | None = None
    """Called after every answer; ``encred demo`` sets it to advance its progress bar."""
    token_select: Callable[[Any], Any] | None = None
    """Replaces the scored kept positions: called with the scored selection (``.kept``, grid indices
    0..T-1, and ``.importance``; a ``FusionSelection`` at the fusion stage), returns a LongTensor of as many
    grid indices; at the llm stage it is consulted after layer K, where the scored ones would be chosen.
    ``encred demo``'s token check sets a seeded random control (vlmeval_encred.demo.token_check)."""

    def __init__(self, model_path: str = "encred-demo:default", max_new_tokens: int = 2,
                 threads: int | None = None, torch_dtype: Any = "float32", device: str = "cpu",
                 **kwargs: Any) -> None:
        self.tokens = self.pop_token_kwargs(kwargs)
        spec, base = self.pop_encred_kwargs(kwargs)
        kwargs.pop("verbose", None)
        kwargs.pop("retry", None)
        super().__init__()
        from vlmeval_encred.demo.model import load_pretrained

        if threads:
            torch.set_num_threads(int(threads))
        self.model_path = model_path
        self.model, self.tokenizer = load_pretrained(model_path, resolve_dtype(torch_dtype), device)
        if base:
            from vlmeval_encred.registry import RegistryError, get_base

            try:
                expected = get_base(base).encoders
            except RegistryError:
                expected = None
            if expected is not None and tuple(expected) != tuple(self.model.encoder_names):
                raise MaskError(f"catalog entry {base!r} lists encoders {', '.join(expected)} but {model_path} has "
                                f"{', '.join(self.model.encoder_names)}")
        self.apply_mask(self.model, spec, base or str(model_path))
        gen = self.generation_kwargs(dict(max_new_tokens=max_new_tokens), kwargs)
        unsupported = sorted(k for k, v in gen.items() if k not in ("max_new_tokens", "do_sample", "num_beams")
                             and v is not None)
        if gen.get("do_sample") or gen.get("num_beams", 1) != 1 or unsupported:
            raise ValueError(f"EncredTiny decodes greedily only; unsupported generation settings: "
                             f"{unsupported or {k: gen[k] for k in ('do_sample', 'num_beams')}}")
        self.max_new_tokens = int(gen["max_new_tokens"])
        self.pruner = None
        self.token_report: dict[str, Any] | None = None
        if self.tokens is not None:
            self.pruner = install_tokens(self.model, self.tokens, base or str(model_path))

    @staticmethod
    def model_inputs(model: Any, message: list[dict[str, Any]]) -> tuple[torch.Tensor, str]:
        """(pixels of the first image, in the model's dtype and on its device; the joined text)."""
        from vlmeval_encred.demo.model import pixels_from_image

        images = [m["value"] for m in message if m["type"] == "image"]
        if not images:
            raise ValueError("EncredTiny needs an image in every message (it is a demo VLM)")
        prompt = "\n".join(m["value"] for m in message if m["type"] == "text")
        p = next(model.parameters())
        return pixels_from_image(images[0], model.config.image_size).to(device=p.device, dtype=p.dtype), prompt

    def generate_inner(self, message: list[dict[str, Any]], dataset: str | None = None) -> str:
        pixels, prompt = self.model_inputs(self.model, message)
        if self.tokens is None:
            answer = self.model.generate_answer(self.tokenizer, pixels, prompt, self.max_new_tokens)
        else:
            answer, self.token_report = generate_with_tokens(self.model, self.tokenizer, pixels, prompt,
                                                             self.max_new_tokens, self.tokens, self.pruner,
                                                             self.token_select)
        hook = type(self).on_generate
        if hook is not None:
            hook()
        return answer


# --- token budgets (docs/tokens.md) -----------------------------------------------------------
# fusion: the 16 positions of the common grid are scored per unmasked tower by the L2 norm of
# the tower's token features at the fusion point (none of the towers has an attention signal:
# two conv nets and a histogram MLP), combined with effective-rank weights; the kept positions'
# projector outputs enter the LLM at their original positions (1 + grid index), the pruned ones
# are not in the sequence at all.  llm: LlmPruner on the LLM's decoder layers, the visual
# positions being 1..16.


def install_tokens(model: Any, tokens: Any, name: str = "encred_tiny") -> Any:
    """Check ``tokens`` against the loaded model; return the LlmPruner for the llm stage (else None)."""
    from vlmeval_encred.tokens import LlmPruner, TokenError

    if tokens.stage == "fusion":
        live = [n for n in model.encoder_names if n not in model.zeroed and n not in model.dropped]
        if not live:
            raise TokenError(f"{name}: every tower is masked; the fusion stage has no encoder to score tokens")
        return None
    return LlmPruner(model.language_model.model.layers, tokens)


def fusion_features(model: Any, pixels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(the channel concatenation the projector reads, each unmasked tower's (B, T, C) part of it).

    The same operations as ``EncredTinyModel.fusion_inputs`` (so keep100 is bit-identical)."""
    from vlmeval_encred.demo.model import to_grid

    feats = {name: to_grid(model.towers[name](pixels), model.config.grid) for name in model.encoder_names
             if name not in model.dropped and name not in model.zeroed}
    return concat_features(model, pixels, feats), feats


def concat_features(model: Any, pixels: torch.Tensor, feats: Any) -> torch.Tensor:
    """The channel concatenation of ``feats`` (tower -> (B, T, C); missing or None: zeros of its
    shape), dropped towers left out: one function for the per-variant and the sweep paths, so a
    budget row of the sweep sees the bits its variant sees."""
    grid, parts = model.config.grid, []
    for name in model.encoder_names:
        if name in model.dropped:
            continue
        f = feats.get(name)
        parts.append(f if f is not None else pixels.new_zeros(pixels.shape[0], grid * grid, model.tower_channels[name]))
    return torch.cat(parts, dim=-1) if parts else pixels.new_zeros(pixels.shape[0], grid * grid, 0)


def greedy_from_embeds(model: Any, tokenizer: Any, embeds: torch.Tensor, max_new_tokens: int,
                       positions: list[int] | None = None) -> str:
    """``EncredTinyModel.generate_answer``'s loop (no cache, argmax, stop at ``</s>``) from given
    input embeddings; with ``positions`` (the fusion stage's original position ids) those and an
    all-ones mask go to the language model, and each new token continues after the last."""
    emb_layer = model.language_model.get_input_embeddings()
    pos = list(positions) if positions is not None else None
    out: list[int] = []
    for _ in range(max_new_tokens):
        if pos is None:
            logits = model.language_model(inputs_embeds=embeds).logits[0, -1]
        else:
            p = torch.tensor([pos], device=embeds.device)
            logits = model.language_model(inputs_embeds=embeds, position_ids=p,
                                          attention_mask=torch.ones_like(p)).logits[0, -1]
        nxt = int(torch.argmax(logits))
        if nxt == tokenizer.eos_token_id:
            break
        out.append(nxt)
        embeds = torch.cat([embeds, emb_layer(torch.tensor([[nxt]], device=embeds.device))], dim=1)
        if pos is not None:
            pos.append(pos[-1] + 1)
    return tokenizer.decode(out, skip_special_tokens=True).strip()


def fusion_answer(model: Any, tokenizer: Any, ids: torch.Tensor, cat: torch.Tensor, feats: Any,
                  max_new_tokens: int, tokens: Any, select: Any = None) -> tuple[str, dict[str, Any]]:
    """The fusion stage on one image: select the kept grid positions from the unmasked towers'
    ``feats`` (tower -> (1, T, C)), splice their projector outputs in at their original positions,
    decode greedily; (answer, report).  ``select(selection) -> kept``: a control selection of
    the same size instead of the scored one (the demo's token check)."""
    from vlmeval_encred.tokens import fusion_select

    t = model.config.n_image_tokens
    sel = fusion_select({n: f[0] for n, f in feats.items()}, tokens)
    if select is not None:
        sel.kept = select(sel)
    kept = sel.kept.tolist()
    emb = model.language_model.get_input_embeddings()(ids)
    img = model.projector(cat).to(emb.dtype)
    embeds = torch.cat([emb[:, :1], img[:, sel.kept.to(img.device)], emb[:, 1 + t:]], dim=1)
    pos = [0] + [1 + k for k in kept] + list(range(1 + t, ids.shape[1]))
    answer = greedy_from_embeds(model, tokenizer, embeds, max_new_tokens, pos)
    return answer, {"stage": "fusion", "kept": kept, "n_visual": t, "weights": sel.weights}


@dataclass
class LlmSelection:
    """The llm stage's scored selection as ``EncredTiny.token_select`` sees it."""

    kept: torch.Tensor
    """Grid indices (ascending) of the visual tokens the attention score keeps."""
    importance: torch.Tensor
    """Attention from the last prompt token to each visual token at layer K-1, (T,)."""


@torch.inference_mode()
def generate_with_tokens(model: Any, tokenizer: Any, pixels: torch.Tensor, prompt: str, max_new_tokens: int,
                         tokens: Any, pruner: Any = None, select: Any = None) -> tuple[str, dict[str, Any]]:
    """Greedy decoding as ``generate_answer``, with the token budget applied; returns (answer, report).

    The report names the kept visual positions (grid indices 0..T-1) and, for the llm stage,
    how many tokens the layers after K received."""
    t = model.config.n_image_tokens
    ids = torch.tensor([model.build_inputs(tokenizer, prompt)], device=pixels.device)
    if tokens.stage == "fusion":
        cat, feats = fusion_features(model, pixels)
        return fusion_answer(model, tokenizer, ids, cat, feats, max_new_tokens, tokens, select)
    pruner.arm(range(1, 1 + t), ids.shape[1])
    if select is not None:  # the visual positions are 1..t, so indices into them are grid indices
        from vlmeval_encred.tokens import top_positions

        pruner.select = lambda scores, k: select(LlmSelection(top_positions(scores, k), scores))
    try:
        answer = model.generate_answer(tokenizer, pixels, prompt, max_new_tokens)
        kept = [k - 1 for k in pruner.kept_visual]
    finally:
        pruner.disarm()
        pruner.select = None
    return answer, {"stage": "llm", "kept": kept, "n_visual": t, "layer": tokens.layer}


# --- encred sweep support: share encoder outputs across every subset of a sample ---------------
# :class:`~.protocol.SweepSupport` for the CPU demo model (``EncredTiny``, base ``encred_tiny``).
# 
# Mirrors ``EncredTinyModel.generate_answer`` step by step: the same prompt ids,
# each tower's output brought to the common grid (the tensor zero-masking
# replaces), per-subset channel concatenation + projector (``fuse``), then greedy
# decoding by :func:`vlmeval_encred.sweep.decoding.decode` -- all subsets at once,
# each row stopping at its own end-of-sequence token.  ``generate_answer`` decodes
# without a key/value cache, ``decode`` with one: equal in exact arithmetic, and
# measured equal in fp32 on every demo sample (7,200 of 7,200 answers, also with
# cross-sample batches; benchmarks/decode_batching.py, docs/sweeps.md).  Only the
# ``zero`` mask mode is swept (``drop`` changes the projector per subset).


class EncredTinySweep:
    """SweepSupport of the demo family (see the module docstring)."""

    token_stages_swept = ("fusion", "llm")
    """Both stages are swept exactly: rows with a budget go through :func:`sweep_budget_rows`."""

    def prepare(self, wrapper: Any, message: list[dict[str, Any]], dataset: str | None) -> Any:
        m = wrapper.model
        pixels, prompt = EncredTiny.model_inputs(m, message)
        ids = torch.tensor([m.build_inputs(wrapper.tokenizer, prompt)], device=pixels.device)
        return {"pixels": pixels, "input_ids": ids}

    def encode(self, wrapper: Any, inputs: Any, encoders: Sequence[str]) -> dict[str, torch.Tensor]:
        from vlmeval_encred.demo.model import to_grid

        m = wrapper.model
        with torch.inference_mode():
            return {n: to_grid(m.towers[n](inputs["pixels"]), m.config.grid) for n in encoders}

    def project(self, wrapper: Any, inputs: Any, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Optional hook (``encred rank``): each encoder's share of the projector output.

        The projector reads the channel concatenation of all towers, so "encoder e
        projected" is P(only e kept) - P(all zero): the visual tokens the language model
        gets from the single-encoder input, without the constant P(0) every input shares.
        """
        m = wrapper.model
        grid = m.config.grid
        with torch.inference_mode():
            def zeros(n: str) -> torch.Tensor:
                return inputs["pixels"].new_zeros(1, grid * grid, m.tower_channels[n])

            base = m.projector(torch.cat([zeros(n) for n in m.encoder_names], dim=-1))
            return {e: m.projector(torch.cat([f if n == e else zeros(n) for n in m.encoder_names], dim=-1)) - base
                    for e, f in features.items()}

    def fuse(self, wrapper: Any, inputs: Any, features_per_subset: list[dict[str, Any]], mask_mode: str) -> Any:
        """Each subset's ``<s>, image tokens, prompt`` embeddings, as ``EncredTinyModel.embed`` builds them
        for a variant of that mask, for :func:`vlmeval_encred.sweep.decoding.decode`."""
        from vlmeval_encred.sweep.decoding import DecodeRequest

        if mask_mode != "zero":
            raise ValueError(f"encred sweep supports mask mode 'zero' for encred_tiny, not {mask_mode!r}")
        m, tok = wrapper.model, wrapper.tokenizer
        if m.dropped:
            raise ValueError("encred sweep needs an encred_tiny model loaded in zero mode (towers were dropped)")
        pixels, ids = inputs["pixels"], inputs["input_ids"]
        grid, t = m.config.grid, m.config.n_image_tokens
        emb_layer = m.language_model.get_input_embeddings()
        with torch.inference_mode():
            imgs = []
            for feats in features_per_subset:
                parts = [feats[n] if feats.get(n) is not None
                         else pixels.new_zeros(1, grid * grid, m.tower_channels[n]) for n in m.encoder_names]
                imgs.append(m.projector(torch.cat(parts, dim=-1)))
            emb = emb_layer(ids)
            s = len(imgs)
            embeds = torch.cat([emb[:, :1].expand(s, -1, -1), torch.cat(imgs, 0).to(emb.dtype),
                                emb[:, 1 + t:].expand(s, -1, -1)], dim=1)
        eos = tok.eos_token_id

        def finish(rows: list[list[int]]) -> list[str]:  # as generate_answer: stop before </s>, decode, strip
            return [tok.decode([i for i in r if i != eos], skip_special_tokens=True).strip() for r in rows]

        return DecodeRequest(lm=m.language_model, embeds=embeds, embed_tokens=emb_layer, eos_ids=[eos],
                             max_new_tokens=wrapper.max_new_tokens, finish=finish)

    def fuse_and_generate(self, wrapper: Any, inputs: Any, features_per_subset: list[dict[str, Any]],
                          mask_mode: str, tokens: Sequence[Any] | None = None) -> list[str]:
        if tokens is not None and any(t is not None for t in tokens):
            return sweep_budget_rows(self, wrapper, inputs, features_per_subset, mask_mode, tokens)
        from vlmeval_encred.sweep.decoding import decode

        return decode([self.fuse(wrapper, inputs, features_per_subset, mask_mode)])[0]


@torch.inference_mode()
def sweep_budget_rows(support: Any, wrapper: Any, inputs: Any, features_per_subset: list[dict[str, Any]],
                      mask_mode: str, tokens: Sequence[Any]) -> list[str]:
    """Rows of the sweep with a token budget (``tokens[i]``; None rows go to the plain batched path).

    Each budget row runs at batch 1 through the functions its variant's ``generate_inner`` runs
    (:func:`fusion_answer`; for the llm stage an :class:`~vlmeval_encred.tokens.LlmPruner`
    installed for the row and removed after it, then ``generate_answer``'s loop), on the
    sample's shared tower outputs, so its answer is the variant's own: batch 1 because the
    pruner handles one sequence, and a budget changes the sequence length per row anyway."""
    from vlmeval_encred.tokens import LlmPruner

    if mask_mode != "zero":
        raise ValueError(f"encred sweep supports mask mode 'zero' for encred_tiny, not {mask_mode!r}")
    if len(tokens) != len(features_per_subset):
        raise ValueError(f"{len(tokens)} token budgets for {len(features_per_subset)} rows")
    m, tok = wrapper.model, wrapper.tokenizer
    if m.dropped:
        raise ValueError("encred sweep needs an encred_tiny model loaded in zero mode (towers were dropped)")
    out: list[str | None] = [None] * len(tokens)
    plain = [i for i, t in enumerate(tokens) if t is None]
    if plain:
        for i, a in zip(plain, support.fuse_and_generate(wrapper, inputs, [features_per_subset[i] for i in plain],
                                                         mask_mode)):
            out[i] = a
    pixels, ids, t = inputs["pixels"], inputs["input_ids"], m.config.n_image_tokens
    for i, spec in enumerate(tokens):
        if spec is None:
            continue
        feats = {n: f for n, f in features_per_subset[i].items() if f is not None}
        cat = concat_features(m, pixels, feats)
        if spec.stage == "fusion":
            out[i], _ = fusion_answer(m, tok, ids, cat, feats, wrapper.max_new_tokens, spec)
            continue
        emb = m.language_model.get_input_embeddings()(ids)
        embeds = torch.cat([emb[:, :1], m.projector(cat).to(emb.dtype), emb[:, 1 + t:]], dim=1)
        pruner = LlmPruner(m.language_model.model.layers, spec)
        try:
            pruner.arm(range(1, 1 + t), ids.shape[1])
            out[i] = greedy_from_embeds(m, tok, embeds, wrapper.max_new_tokens)
        finally:
            pruner.remove()
    return [str(a) for a in out]


EncredTiny.sweep_support = EncredTinySweep()
