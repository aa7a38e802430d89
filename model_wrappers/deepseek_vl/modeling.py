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

Masking modes (both set on the instance; no upstream file is edited):

* ``zero`` (the paper's): the tower's ``forward`` is replaced on the instance by
  one that runs only the kept tower and puts zeros of the masked tower's exact
  shape (tokens, channels) in its slot, in the aligner's dtype and on its
  device; the masked ``CLIPVisionTower`` is then deleted.  The zeros enter the
  aligner *before* its per-branch Linear, so the masked half of every fused
  token is the constant ``high_up_proj.bias`` / ``low_up_proj.bias`` (then
  GELU), not nothing.  Bit-identical to the authors' procedure (run the tower,
  zero its output): model_wrappers/deepseek_vl/selftest.py checks it on the
  real upstream classes.
* ``drop``: the masked branch is removed from the fusion: as ``zero``, and the
  branch's up-projection is replaced by :class:`ZeroBranch`, so the masked
  half is exactly zero *at the concatenation*.  Since GELU(0) = 0, the
  aligner's last Linear then only sees the kept branch: the same as removing
  the branch (and its input columns of that Linear) from the aligner.  Differs
  from ``zero`` by the bias term above (docs/masking.md gives the measured
  difference); the up-projection's weights are released too.

Shapes: channels are the aligner's input widths; the token count per image is
the processor's ``num_image_tokens`` (the number of ``<image_placeholder>``
slots ``prepare_inputs_embeds`` fills, which every tower must produce).  Upstream
SAM resamples to a fixed grid before downsampling, so its token count cannot
be derived from the image size; the kept tower's token count is checked
against it on every call.
"""

from __future__ import annotations

import contextlib
import gc
import sys
from typing import Any, Iterator, Sequence

import torch
from vlmeval.vlm.base import BaseModel
from vlmeval.vlm.deepseek_vl import DeepSeekVL

from vlmeval_encred.masking import EncoderAdapter, EncoderInfo, MaskError, MaskReport, MaskSpec, count_params
from vlmeval_encred.model_wrappers.deepseek_vl_hf.modeling import (check_catalog_order, cut_after_eos, greedy_settings,
                                                                  install_tokens)
from vlmeval_encred.wrapper import EncredMixin, log, resolve_dtype

_TOWERS = {"low": "vision_tower_low", "high": "vision_tower_high"}
_BRANCHES = ("low", "high")  # EncoderInfo.index order: low (SigLIP) first, as transformers' port lists them

MODE_NOTES = {
    "zero": "zeros replace the masked tower's output at the aligner input (before its up-projection: "
            "the masked half of each fused token is GELU(up_proj.bias)); the authors' procedure",
    "drop": "the masked branch is removed from the aligner: its up-projection output is zero at the "
            "concatenation, so the last Linear sees only the kept branch (differs from zero by the bias)",
}
"""One line per mode, put in the MaskReport's notes and the load log, so each run says which it used."""


def import_deepseek_vl() -> Any:
    """``import deepseek_vl`` (installed, or the upstream copy vlmeval_encred.upstream finds).

    The package is not on PyPI; a user installs it from a checkout.  When it is not
    installed, the checkout named by ``ENCRED_SRC_DEEPSEEK_VL`` (or the project's pinned
    snapshot) is put on ``sys.path``.  Errors say which transformers the code needs.
    """
    try:
        import deepseek_vl  # noqa: F401
        return sys.modules["deepseek_vl"]
    except ModuleNotFoundError as exc:
        if exc.name != "deepseek_vl":
            raise
    from vlmeval_encred import upstream

    try:
        root = str(upstream.import_root("deepseek_vl"))
    except upstream.UpstreamNotFound as exc:
        raise ImportError("the deepseek_vl package (github.com/deepseek-ai/DeepSeek-VL) is not installed: "
                          "pip install -e <a DeepSeek-VL checkout> --no-deps, with the versions of "
                          "model_wrappers/deepseek_vl/recipe.txt; or " + str(exc)) from None
    if root not in sys.path:
        sys.path.insert(0, root)
    import deepseek_vl  # noqa: F401

    return sys.modules["deepseek_vl"]


def _tower(model: Any) -> Any:
    tower = getattr(model, "vision_model", model)
    missing = [a for a in ("vision_tower_high", "vision_tower_low", "resize", "concat_type") if not hasattr(tower, a)]
    if missing:
        raise MaskError(
            f"{type(model).__name__}.vision_model is {type(tower).__name__}, not a HybridVisionTower "
            f"(deepseek_vl/models/clip_encoder.py): missing {', '.join(missing)}. DeepSeek-VL 1.3B is "
            "SigLIP-only and has no second encoder to mask")
    return tower


def _aligner_in(model: Any, which: str) -> torch.nn.Module:
    aligner = getattr(model, "aligner", None)
    lin = getattr(aligner, f"{which}_up_proj", None)
    if not isinstance(lin, (torch.nn.Linear, ZeroBranch)):
        raise MaskError(f"{type(model).__name__}.aligner has no {which}_up_proj Linear: only the hybrid split "
                        "projector (low_high_hybrid_split_mlp_gelu, DeepSeek-VL 7B) is supported")
    return lin


class ZeroBranch(torch.nn.Module):
    """Stands in for a dropped branch's up-projection: zeros of its output width, no parameters.

    A zero-size buffer carries dtype and device, so ``model.to(...)`` after masking moves it
    with the rest and the zeros come out where the other branch's half is."""

    def __init__(self, in_features: int, out_features: int, like: torch.Tensor) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("anchor", torch.empty(0, dtype=like.dtype, device=like.device), persistent=False)

    @property
    def weight(self) -> torch.Tensor:  # dtype/device reference, as Linear.weight is for the zero mode
        return self.anchor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros((*x.shape[:-1], self.out_features), dtype=self.anchor.dtype, device=self.anchor.device)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features} (dropped branch)"


def drop_branch(model: Any, which: str) -> torch.nn.Module:
    """Replace ``aligner.<which>_up_proj`` by a :class:`ZeroBranch`; return the replaced module."""
    old = _aligner_in(model, which)
    setattr(model.aligner, f"{which}_up_proj", ZeroBranch(old.in_features, old.out_features, old.weight))
    return old


class HybridVisionTowerAdapter(EncoderAdapter):
    """Encoder masking for ``deepseek_vl``'s ``MultiModalityCausalLM`` with a ``HybridVisionTower``.

    ``num_image_tokens``: image tokens per image, from the checkpoint's
    ``VLChatProcessor``.  Encoder names come from the towers' ``model_name``
    (``siglip_large_patch16_384`` -> ``siglip``, ``sam_b_downsample`` -> ``sam``),
    listed low then high -- the order of transformers' port of the same
    checkpoint, so both loaders give the same entry names.
    """

    family = "deepseek_vl"
    modes = ("zero", "drop")
    drop_equals_zero = False  # the branch Linear's bias: see the module docstring

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
        for index, which in enumerate(_BRANCHES):
            sub = getattr(tower, _TOWERS[which])
            name = str(getattr(sub, "model_name", which)).split("_")[0].lower()
            shape = (int(self.num_image_tokens), int(_aligner_in(model, which).in_features))
            infos.append(EncoderInfo(name, index, shape, sub, count_params(sub)))
        if infos[0].name == infos[1].name:
            raise MaskError(f"HybridVisionTower: both towers are named {infos[0].name!r}; cannot tell them apart")
        return infos

    def apply(self, model: Any, spec: MaskSpec, model_name: str = "model") -> MaskReport:
        report = super().apply(model, spec, model_name)
        if report.spec.masked:
            report.notes.append(f"mode={report.spec.mode}: {MODE_NOTES[report.spec.mode]}")
        return report

    def install(self, model: Any, spec: MaskSpec, infos: list[EncoderInfo]) -> None:
        tower = _tower(model)
        by_branch = {_BRANCHES[i.index]: i for i in infos}
        masked = {w for w, i in by_branch.items() if spec.is_masked(i.name)}
        if spec.mode == "drop":
            for w in masked:
                drop_branch(model, w)
        refs = {w: _aligner_in(model, w).weight for w in _BRANCHES}
        shapes = {w: by_branch[w].output_shape for w in by_branch}

        def forward(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            b = images.shape[0]
            out: dict[str, torch.Tensor] = {}
            for w in ("high", "low"):
                if w in masked:
                    out[w] = torch.zeros((b, *shapes[w]), dtype=refs[w].dtype, device=refs[w].device)
                    continue
                out[w] = run_branch(tower, w, images)
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
            attr = _TOWERS[_BRANCHES[info.index]]
            freed += count_params(getattr(tower, attr))
            setattr(tower, attr, None)
            info.module = None
        if spec.mode == "drop":
            # install() already swapped the up-projections out; their weights go with the model's
            # last reference (the local in drop_branch), so count them from the info widths.
            for info in infos:
                if spec.is_masked(info.name):
                    zb = _aligner_in(model, _BRANCHES[info.index])
                    freed += zb.in_features * zb.out_features + zb.out_features
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return freed


def run_branch(tower: Any, which: str, images: torch.Tensor) -> torch.Tensor:
    """One ``CLIPVisionTower`` of a ``HybridVisionTower`` as upstream's forward runs it, ``(B, T, C)``."""
    sub = getattr(tower, _TOWERS[which])
    if sub is None:
        raise MaskError(f"HybridVisionTower.{_TOWERS[which]} was released by the mask; it cannot run")
    if which == "high":
        return sub(images).flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, h*w, C), as upstream's rearrange
    return sub(tower.resize(images))


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
        self.tokens = self.pop_token_kwargs(gen_kwargs)
        spec, base = self.pop_encred_kwargs(gen_kwargs)
        BaseModel.__init__(self)  # not DeepSeekVL.__init__, which hard-codes bfloat16 and .cuda()
        import_deepseek_vl()
        self.check_install()
        from deepseek_vl.models import VLChatProcessor
        from transformers import AutoModelForCausalLM

        self.model_path = model_path
        self.vl_chat_processor = VLChatProcessor.from_pretrained(model_path)
        self.tokenizer = self.vl_chat_processor.tokenizer
        self.adapter = HybridVisionTowerAdapter(self.vl_chat_processor.num_image_tokens)
        model = AutoModelForCausalLM.from_pretrained(model_path, trust_remote_code=True)
        check_catalog_order(base, self.adapter.names(model))
        report = self.apply_mask(model, spec, base or model_path)
        for note in report.notes:
            log.info("vlmeval-encred: %s %s", base or model_path, note)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = model.to(device=device, dtype=resolve_dtype(torch_dtype)).eval()
        self.kwargs = self.generation_kwargs(dict(max_new_tokens=max_new_tokens, use_cache=True), gen_kwargs)
        self.pruner = None
        self.token_report: dict[str, Any] | None = None
        if self.tokens is not None:
            self.pruner = install_tokens(self, self.tokens, base or model_path,
                                         layers=self.model.language_model.model.layers)

    @property
    def mask_mode(self) -> str:
        """The mode this variant was built with (``zero``/``drop``); also in ``encred_report.notes``."""
        return self.encred_report.spec.mode if self.encred_report else "zero"

    def build_inputs(self, message: list[dict[str, Any]]) -> Any:
        """VLMEvalKit's conversation for ``message``, through the checkpoint's ``VLChatProcessor``."""
        from deepseek_vl.utils.io import load_pil_images

        conversation = self.prepare_inputs(message)  # VLMEvalKit's conversation building
        images = load_pil_images(conversation)
        inputs = self.vl_chat_processor(conversations=conversation, images=images, force_batchify=True)
        return inputs.to(self.model.device, dtype=self.model.dtype)

    def decode_answers(self, embeds: torch.Tensor, attention_mask: torch.Tensor) -> list[str]:
        """Greedy decoding from input embeddings, one answer per row (rows cut at their first EOS)."""
        with torch.inference_mode():
            out = self.model.language_model.generate(
                inputs_embeds=embeds, attention_mask=attention_mask,
                pad_token_id=self.tokenizer.eos_token_id, bos_token_id=self.tokenizer.bos_token_id,
                eos_token_id=self.tokenizer.eos_token_id, **self.kwargs)
        return self.finish_answers(out.tolist())

    def finish_answers(self, rows: list[list[int]]) -> list[str]:
        """Generated ids per row -> answers: cut after the first EOS (where a batch of one stops),
        special tokens skipped, stripped; ``generate_inner``'s post-processing, shared with the sweep."""
        eos = {self.tokenizer.eos_token_id}
        return [self.tokenizer.decode(cut_after_eos(torch.tensor(row, dtype=torch.long), eos).tolist(),
                                      skip_special_tokens=True).strip() for row in rows]

    def greedy_settings(self) -> tuple[Any, str | None]:
        """(the language model's effective generation config, why it is not plain greedy or None),
        with the keywords :meth:`decode_answers` passes to ``generate``."""
        kw = dict(self.kwargs, pad_token_id=self.tokenizer.eos_token_id, bos_token_id=self.tokenizer.bos_token_id,
                  eos_token_id=self.tokenizer.eos_token_id)
        return greedy_settings(self.model.language_model.generation_config, kw)

    def generate_inner(self, message: list[dict[str, Any]], dataset: str | None = None) -> str:
        inputs = self.build_inputs(message)
        if self.tokens is not None:
            return generate_with_tokens(self, inputs)
        with torch.inference_mode():
            embeds = self.model.prepare_inputs_embeds(**inputs)
        return self.decode_answers(embeds, inputs.attention_mask)[0]


# --- token budgets (docs/tokens.md) -----------------------------------------------------------
# fusion: the same definition and scoring as transformers' port (deepseek_vl_hf.select_grid_tokens):
# SigLIP and SAM reach the aligner as (n_images, T, C) on one shared T-token grid; each unmasked
# one is scored by the L2 norm of its tokens there.  Upstream's prepare_inputs_embeds builds the
# full prompt embeddings (the tower answers once, from the features already scored); the pruned
# image positions are cut out and the rest keep their original position ids.  transformers 4.x's
# generate() does not carry given position ids past the prefill, so the fusion stage decodes with
# its own greedy loop (greedy_at_positions; the llm stage and unpruned runs keep generate()).
# llm: LlmPruner on language_model.model.layers; the visual positions are images_seq_mask's.


def visual_positions(inputs: Any) -> list[int]:
    """Prompt positions that hold image tokens (``images_seq_mask``), batch size 1."""
    from vlmeval_encred.tokens import TokenError

    if inputs.input_ids.shape[0] != 1:
        raise TokenError("token budgets run one sample at a time (batch size 1)")
    if not bool(inputs.images_emb_mask.all()):
        raise TokenError("fusion stage: every image must fill all of its num_image_tokens slots "
                         "(images_emb_mask has unused slots)")
    return inputs.images_seq_mask[0].nonzero().flatten().tolist()


def fusion_token_embeds(wrapper: Any, inputs: Any) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """The fusion stage: (kept prompt embeddings (1, S', d), their original positions (S',), the report)."""
    from vlmeval_encred.model_wrappers.deepseek_vl_hf.modeling import select_grid_tokens
    from vlmeval_encred.tokens import splice_positions

    model = wrapper.model
    visual = visual_positions(inputs)
    masked = set(wrapper.encred_report.spec.masked) if wrapper.encred_report else set()
    names = {_BRANCHES[i.index]: i.name for i in wrapper.adapter.encoders(model)}
    with torch.inference_mode():
        high, low = model.vision_model(inputs.pixel_values.flatten(0, 1))  # the variant's tower (zeros if masked)
        sel = select_grid_tokens({names[w]: t for w, t in (("low", low), ("high", high)) if names[w] not in masked},
                                 wrapper.tokens, visual)
        with _fixed_fusion(model, high, low, ()):
            embeds = model.prepare_inputs_embeds(
                input_ids=inputs.input_ids.clone(), pixel_values=inputs.pixel_values,
                images_seq_mask=inputs.images_seq_mask, images_emb_mask=inputs.images_emb_mask)
    idx = torch.tensor(splice_positions(embeds.shape[1], visual, sel.kept), device=embeds.device)
    report = {"stage": "fusion", "visual": visual, "kept": sel.kept, "weights": sel.weights}
    return embeds[:, idx], idx, report


def greedy_at_positions(lm: Any, embeds: torch.Tensor, positions: torch.Tensor, eos: Sequence[int],
                        max_new_tokens: int, logits: list[torch.Tensor] | None = None) -> list[int]:
    """Greedy ids (EOS included when produced) for one prompt whose tokens sit at ``positions``.

    The forwards ``generate(inputs_embeds=..., do_sample=False)`` runs (prefill, then one cached
    token per step, last-position logits only), except that the prompt's position ids are the given
    original ones and generated tokens continue after the last of them (the prompt's last token is
    text, never pruned).  ``logits``: if given, each step's float32 logits are appended."""
    from vlmeval_encred.sweep.decoding import _kw_names, _out_cache

    cache_kw, keep_kw = _kw_names(type(lm))
    extra = {keep_kw: 1} if keep_kw else {}
    dev = embeds.device
    n, nxt = embeds.shape[1], int(positions[-1]) + 1
    ids: list[int] = []
    with torch.inference_mode():
        out = lm(inputs_embeds=embeds, position_ids=positions.view(1, -1).to(dev), use_cache=True,
                 attention_mask=torch.ones((1, n), dtype=torch.long, device=dev), **extra)
        for step in range(max_new_tokens):
            last = out.logits[:, -1].float()
            if logits is not None:
                logits.append(last)
            tok = int(last.argmax(-1))
            ids.append(tok)
            if tok in eos or step == max_new_tokens - 1:
                break
            out = lm(inputs_embeds=lm.get_input_embeddings()(torch.tensor([[tok]], device=dev)),
                     position_ids=torch.tensor([[nxt + step]], device=dev), use_cache=True,
                     attention_mask=torch.ones((1, n + step + 1), dtype=torch.long, device=dev),
                     **{cache_kw: _out_cache(out)}, **extra)
    return ids


def generate_with_tokens(wrapper: Any, inputs: Any) -> str:
    """``generate_inner`` with the wrapper's token budget; sets ``wrapper.token_report``."""
    if wrapper.tokens.stage == "llm":
        visual = visual_positions(inputs)
        with torch.inference_mode():
            embeds = wrapper.model.prepare_inputs_embeds(**inputs)
        wrapper.pruner.arm(visual, embeds.shape[1])
        try:
            answer = wrapper.decode_answers(embeds, inputs.attention_mask)[0]
        finally:
            wrapper.pruner.disarm()
        wrapper.token_report = {"stage": "llm", "layer": wrapper.tokens.layer, "visual": visual,
                                "kept": list(wrapper.pruner.kept_visual or visual)}
        return answer
    cfg, why = wrapper.greedy_settings()
    if why is not None:
        from vlmeval_encred.tokens import TokenError

        raise TokenError(f"the fusion token stage of DeepSeek-VL decodes greedily; this wrapper's generation "
                         f"settings are not plain greedy ({why})")
    embeds, positions, wrapper.token_report = fusion_token_embeds(wrapper, inputs)
    ids = greedy_at_positions(wrapper.model.language_model, embeds, positions, [wrapper.tokenizer.eos_token_id],
                              int(wrapper.kwargs["max_new_tokens"]))
    return wrapper.finish_answers([ids])[0]


# --- encred sweep support: share encoder outputs across every subset of a sample ---------------
# :class:`~vlmeval_encred.sweep.protocol.SweepSupport` for ``EncredDeepSeekVL``.
#
# * ``prepare``: the wrapper's own ``build_inputs`` (what ``generate_inner`` calls).
# * ``encode``: each kept ``CLIPVisionTower`` once, as ``HybridVisionTower.forward`` runs it
#   (``run_branch``): the tensors that masking replaces by zeros.
# * ``fuse_and_generate``: per subset, upstream's own ``prepare_inputs_embeds`` with the tower
#   answering from the precomputed features (zeros for a masked one) and, under ``drop``, the
#   masked branch's up-projection swapped for a ``ZeroBranch`` -- exactly what a variant of that
#   mask runs (``fuse``: one row per subset, decoded by ``sweep.decoding.decode``: the shared
#   template prefix once, finished rows dropped); ``fuse_and_generate`` is ``decode([fuse(...)])[0]``
#   under plain greedy settings, else one ``generate`` over all subsets (same prompt: no padding),
#   rows cut after their first EOS as a batch of one stops there.


@contextlib.contextmanager
def _fixed_fusion(model: Any, high: torch.Tensor, low: torch.Tensor, dropped: Sequence[str]) -> Iterator[None]:
    """Within the block, ``model.vision_model`` returns ``(high, low)`` and ``dropped`` branches are ZeroBranch."""
    tower = model.vision_model
    had = tower.__dict__.get("forward")
    swapped = {}
    tower.forward = lambda images: (high, low)
    try:
        for w in dropped:
            if not isinstance(_aligner_in(model, w), ZeroBranch):
                swapped[w] = drop_branch(model, w)
        yield
    finally:
        for w, module in swapped.items():
            setattr(model.aligner, f"{w}_up_proj", module)
        if had is None:
            del tower.forward
        else:
            tower.forward = had


class DeepSeekVLSweep:
    """SweepSupport of the original DeepSeek-VL family, modes ``zero`` and ``drop``."""

    def prepare(self, wrapper: Any, message: list[dict[str, Any]], dataset: str | None) -> Any:
        return wrapper.build_inputs(message)

    def encode(self, wrapper: Any, inputs: Any, encoders: Sequence[str]) -> dict[str, torch.Tensor]:
        branches = {i.name: _BRANCHES[i.index] for i in wrapper.adapter.encoders(wrapper.model)}
        tower = _tower(wrapper.model)
        images = inputs.pixel_values.flatten(0, 1)  # (b, n, c, h, w) -> (b n, c, h, w), as upstream
        with torch.inference_mode():
            return {name: run_branch(tower, branches[name], images) for name in encoders}

    @staticmethod
    def _embeds(wrapper: Any, inputs: Any, features_per_subset: list[dict[str, Any]], mask_mode: str) -> torch.Tensor:
        """Upstream's ``prepare_inputs_embeds`` once per subset, as that subset's variant runs it: (S, T, d)."""
        if mask_mode not in HybridVisionTowerAdapter.modes:
            raise MaskError(f"DeepSeek-VL supports mask modes {', '.join(HybridVisionTowerAdapter.modes)}, "
                            f"not {mask_mode!r}")
        model = wrapper.model
        infos = {i.name: i for i in wrapper.adapter.encoders(model)}
        n_img = inputs.pixel_values.shape[0] * inputs.pixel_values.shape[1]
        embeds = []
        with torch.inference_mode():
            for feats in features_per_subset:
                parts, dropped = {}, []
                for name, info in infos.items():
                    w = _BRANCHES[info.index]
                    t = feats.get(name)
                    if t is None:
                        ref = _aligner_in(model, w).weight
                        t = torch.zeros((n_img, *info.output_shape), dtype=ref.dtype, device=ref.device)
                        if mask_mode == "drop":
                            dropped.append(w)
                    parts[w] = t
                with _fixed_fusion(model, parts["high"], parts["low"], dropped):
                    embeds.append(model.prepare_inputs_embeds(
                        input_ids=inputs.input_ids.clone(), pixel_values=inputs.pixel_values,
                        images_seq_mask=inputs.images_seq_mask, images_emb_mask=inputs.images_emb_mask))
        return torch.cat(embeds, dim=0)

    def fuse(self, wrapper: Any, inputs: Any, features_per_subset: list[dict[str, Any]], mask_mode: str) -> Any:
        from vlmeval_encred.sweep.decoding import DecodeRequest

        _, why = wrapper.greedy_settings()
        if why is not None:
            raise MaskError(f"{type(wrapper).__name__}: generation is not plain greedy ({why}); "
                            "the shared-prefix decoder would not reproduce it")
        lm = wrapper.model.language_model
        return DecodeRequest(lm=lm, embeds=self._embeds(wrapper, inputs, features_per_subset, mask_mode),
                             embed_tokens=lm.get_input_embeddings(), eos_ids=[wrapper.tokenizer.eos_token_id],
                             max_new_tokens=int(wrapper.kwargs["max_new_tokens"]), finish=wrapper.finish_answers)

    def fuse_and_generate(self, wrapper: Any, inputs: Any, features_per_subset: list[dict[str, Any]],
                          mask_mode: str) -> list[str]:
        from vlmeval_encred.sweep.decoding import decode

        if wrapper.greedy_settings()[1] is None:
            return decode([self.fuse(wrapper, inputs, features_per_subset, mask_mode)])[0]
        # Not plain greedy (sampling, beams, a repetition penalty...): the shared-prefix decoder
        # implements argmax only, so generate() decodes all subsets as one batch (same prompt:
        # no padding) with the wrapper's settings.
        embeds = self._embeds(wrapper, inputs, features_per_subset, mask_mode)
        return wrapper.decode_answers(embeds, inputs.attention_mask.repeat(embeds.shape[0], 1))


EncredDeepSeekVL.sweep_support = DeepSeekVLSweep()
