"""Token budgets (docs/tokens.md) on the original DeepSeek-VL package's real classes.

Runs in the ``deepseek_vl`` environment against upstream's own ``MultiModalityCausalLM``
(HybridVisionTower with upstream's SAM and SigLIP, the hybrid-split aligner, a transformers
``LlamaForCausalLM``), tiny and random (model_wrappers/deepseek_vl/selftest.py: 576 image tokens
per image as in the 7B, a 2-layer language model, so the llm stage prunes after K = 1), fp32 on
the CPU.  Nothing is mocked.  Checked, for both stages:

* keep100 equals the unpruned model bit for bit (every step's logits, the answer);
* the language model's sequence really shrinks by the pruned count (forward pre-hooks on the
  decoder layers count the tokens each receives);
* pruned positions never reach the layers past the pruning point (the position ids they get);
* the kept set equals an independent recomputation of the documented score (numpy SVD effective
  ranks and norms for the fusion stage; transformers' eager attention weights for the llm stage).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import real_selftest

pytestmark = [pytest.mark.envs("deepseek_vl"), pytest.mark.realcode("deepseek_vl")]

NEW_TOKENS = 5


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    real_selftest("deepseek_vl")  # imports the real package (not run here without its source)
    from vlmeval_encred.model_wrappers.deepseek_vl.selftest import build_tiny_checkpoint

    return str(build_tiny_checkpoint(tmp_path_factory.mktemp("dsvl-tokens") / "ckpt"))


@pytest.fixture(scope="module")
def message(tmp_path_factory) -> list[dict]:
    from vlmeval_encred.model_wrappers.deepseek_vl.selftest import PROMPT, test_image

    png = test_image(tmp_path_factory.mktemp("img") / "a.png")
    return [dict(type="image", value=png), dict(type="text", value=PROMPT)]


def _wrapper(ckpt: str, **kw):
    from vlmeval_encred.model_wrappers.deepseek_vl import EncredDeepSeekVL

    return EncredDeepSeekVL(ckpt, torch_dtype="float32", device="cpu", max_new_tokens=NEW_TOKENS,
                            encred_base="deepseek_vl_7b_orig", **kw)


def _reference_generate(w, inputs):
    """The unpruned variant's own decoding (``generate`` on upstream's embeddings), with logits."""
    with torch.inference_mode():
        embeds = w.model.prepare_inputs_embeds(**inputs)
        return w.model.language_model.generate(
            inputs_embeds=embeds, attention_mask=inputs.attention_mask, pad_token_id=w.tokenizer.eos_token_id,
            bos_token_id=w.tokenizer.bos_token_id, eos_token_id=w.tokenizer.eos_token_id,
            return_dict_in_generate=True, output_logits=True, **w.kwargs)


def _layer_probe(layers):
    """Per forward call of each decoder layer: (tokens received, position ids received)."""
    seen = {i: [] for i in range(len(layers))}

    def hook(i):
        def f(_m, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            pos = kwargs.get("position_ids")
            seen[i].append((h.shape[1], None if pos is None else pos[0].tolist()))
        return f

    return seen, [layer.register_forward_pre_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]


def _erank(x: np.ndarray) -> float:
    s = np.linalg.svd(x.astype(np.float64), compute_uv=False)
    p = s[s > 1e-12 * s.max()] / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def _reference_fusion(feats: dict[str, np.ndarray], keep: int) -> list[int]:
    """docs/tokens.md's fusion score written out: L2 norms normalised per encoder, effective-rank
    weights, top k (ties: lower position), ascending."""
    ranks = {e: _erank(f) for e, f in feats.items()}
    t = next(iter(feats.values())).shape[0]
    imp = np.zeros(t)
    for e, f in feats.items():
        norms = np.sqrt((f.astype(np.float64) ** 2).sum(axis=1))
        imp += ranks[e] / sum(ranks.values()) * norms / norms.sum()
    k = max(1, math.ceil(t * keep / 100))
    return sorted(sorted(range(t), key=lambda i: (-imp[i], i))[:k])


@pytest.mark.parametrize("mask,mode", [((), "zero"), (("sam",), "drop")])
def test_keep100_is_bit_identical_in_both_stages(ckpt, message, mask, mode):
    from vlmeval_encred.model_wrappers.deepseek_vl.modeling import (fusion_token_embeds, greedy_at_positions,
                                                                    visual_positions)

    plain = _wrapper(ckpt, mask=mask, mask_mode=mode)
    inputs = plain.build_inputs(message)
    ref = _reference_generate(plain, inputs)
    answer = plain.generate_inner(message)

    w = _wrapper(ckpt, mask=mask, mask_mode=mode, tokens={"keep": 100})
    embeds, positions, report = fusion_token_embeds(w, inputs)
    assert report["kept"] == report["visual"] and positions.tolist() == list(range(inputs.input_ids.shape[1]))
    logits: list[torch.Tensor] = []
    ids = greedy_at_positions(w.model.language_model, embeds, positions, [w.tokenizer.eos_token_id],
                              NEW_TOKENS, logits=logits)
    assert ids == ref.sequences[0].tolist()
    assert len(logits) == len(ref.logits) and all(torch.equal(a, b.float()) for a, b in zip(logits, ref.logits))
    assert w.generate_inner(message) == answer

    w = _wrapper(ckpt, mask=mask, mask_mode=mode, tokens={"keep": 100, "stage": "llm", "layer": 1})
    w.pruner.arm(visual_positions(inputs), inputs.input_ids.shape[1])
    try:
        got = _reference_generate(w, inputs)
    finally:
        w.pruner.disarm()
    assert torch.equal(got.sequences, ref.sequences)
    assert all(torch.equal(a, b) for a, b in zip(got.logits, ref.logits))
    assert w.generate_inner(message) == answer and w.token_report["kept"] == w.token_report["visual"]


@pytest.mark.parametrize("mask,mode,live", [((), "zero", ("siglip", "sam")), (("sam",), "drop", ("siglip",))])
def test_fusion_stage_shrinks_the_sequence_and_keeps_the_documented_set(ckpt, message, mask, mode, live):
    w = _wrapper(ckpt, mask=mask, mask_mode=mode, tokens={"keep": 25})
    s = w.build_inputs(message).input_ids.shape[1]
    seen, handles = _layer_probe(w.model.language_model.model.layers)
    try:
        answer = w.generate_inner(message)
    finally:
        for h in handles:
            h.remove()
    assert isinstance(answer, str)
    visual, kept = w.token_report["visual"], w.token_report["kept"]
    pruned = len(visual) - len(kept)
    assert len(visual) == 576 and len(kept) == 144
    keep_pos = [p for p in range(s) if p not in set(visual) - set(kept)]
    for i in seen:
        assert seen[i][0] == (s - pruned, keep_pos)  # prefill: the kept tokens at their original positions
        assert [c for c in seen[i][1:]] == [(1, [s + j]) for j in range(len(seen[i]) - 1)]  # then one per step
    # Independent reference: the towers of an unmasked model on the same pixels, numpy scoring.
    full = _wrapper(ckpt)
    inputs = full.build_inputs(message)
    with torch.inference_mode():
        high, low = full.model.vision_model(inputs.pixel_values.flatten(0, 1))
    feats = {"siglip": low[0].numpy(), "sam": high[0].numpy()}
    ref = _reference_fusion({e: feats[e] for e in live}, 25)
    assert kept == [visual[j] for j in ref]
    if mask:  # the masked encoder takes no part: scoring it too would choose other tokens
        assert ref != _reference_fusion(feats, 25)


def test_llm_stage_prunes_after_layer_k_with_the_attention_ranking(ckpt, message):
    w = _wrapper(ckpt, tokens={"keep": 25, "stage": "llm", "layer": 1})
    lm = w.model.language_model
    inputs = w.build_inputs(message)
    s = inputs.input_ids.shape[1]
    seen, handles = _layer_probe(lm.model.layers)
    try:
        w.generate_inner(message)
    finally:
        for h in handles:
            h.remove()
    visual, kept = w.token_report["visual"], w.token_report["kept"]
    pruned = len(visual) - len(kept)
    assert len(kept) == 144 and pruned == 432
    keep_pos = [p for p in range(s) if p not in set(visual) - set(kept)]
    assert seen[0][0] == (s, list(range(s)))  # layer 0 (up to K) sees the whole prompt
    assert seen[1][0] == (s - pruned, keep_pos)  # past K: only kept tokens, at their original positions
    assert all(n == 1 for n, _ in seen[1][1:])
    # Independent reference: transformers' eager attention weights of layer K-1 = 0.
    with torch.inference_mode():
        embeds = w.model.prepare_inputs_embeds(**inputs)
    w.pruner.remove()
    lm.config._attn_implementation = "eager"
    try:
        with torch.inference_mode():
            att = lm(inputs_embeds=embeds, output_attentions=True).attentions[0]
    finally:
        lm.config._attn_implementation = "sdpa"
    score = att[0, :, s - 1, visual].double().mean(0)
    ref = sorted(visual[i] for i in sorted(range(len(visual)), key=lambda i: (-float(score[i]), i))[:len(kept)])
    assert kept == ref


def test_refusals_are_clear(ckpt):
    from vlmeval_encred.registry import RegistryError, parse_entry_name
    from vlmeval_encred.tokens import TokenError

    with pytest.raises(TokenError, match="K=2 must be between 1 and 1"):
        _wrapper(ckpt, tokens={"keep": 25, "stage": "llm"})  # the base's default K=2; this LM has 2 layers
    with pytest.raises(TokenError, match="every encoder is masked"):
        _wrapper(ckpt, tokens={"keep": 25}, mask=("siglip", "sam"))
    assert _wrapper(ckpt, tokens={"keep": 50, "stage": "llm", "layer": 1}, mask=("siglip", "sam")).pruner
    for name in ("deepseek_vl_7b_orig_mask_sam_keep50", "deepseek_vl_7b_orig_drop_keep25_llm"):
        assert parse_entry_name(name).tokens is not None
    with pytest.raises(RegistryError, match="no encoder is left to score tokens"):
        parse_entry_name("deepseek_vl_7b_orig_mask_siglip_sam_keep25")
    sampled = _wrapper(ckpt, tokens={"keep": 25}, do_sample=True, temperature=0.7)
    with pytest.raises(TokenError, match=r"not plain greedy \(do_sample=True\)"):
        sampled.generate_inner([dict(type="image", value=_png(ckpt)), dict(type="text", value="Why?")])


def _png(ckpt: str) -> str:
    from vlmeval_encred.model_wrappers.deepseek_vl.selftest import test_image

    return test_image(Path(ckpt).parent / "refusal.png")
