"""Token-budget variants of Eagle2 (docs/tokens.md, Eagle2 row) on the real-class tiny model.

The model: NVIDIA's real vision code (NVlabs/Eagle, Eagle2_5/eaglevl: SigLIP and ConvNeXt towers,
multi-backbone tower, layout ``convnext_512_siglip_448``) inside the project's stand-in chat model
(pixel shuffle, ``mlp1``, ``chat``/``generate``: the remote code exists only inside the Hugging Face
checkpoint) around a real transformers ``Qwen2ForCausalLM`` of 4 decoder layers, all tiny, random,
float32 on the CPU (model_wrappers/eagle2/selftest.py).  Loading is the one thing replaced in the
VLMEvalKit wrapper (no 9B checkpoint here).  The test image gives several tiles (NVIDIA's tiling
for MMVP) of 4 visual tokens each after the pixel shuffle, so keep25 keeps 1 token per tile, keep50 2.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from test_eagle2 import GEN, QUESTIONS, _images, wrapper_class

pytestmark = [pytest.mark.envs("eagle2"), pytest.mark.realcode("eagle2")]

LAYERS = 4
TILE_TOKENS = 4


@pytest.fixture(scope="module")
def eagle2(tmp_path_factory):
    from conftest import real_selftest

    real_selftest("eagle2")  # the registered NVlabs/Eagle source (else: "not run here")
    from vlmeval_encred.model_wrappers.eagle2.selftest import build

    cls = wrapper_class("convnext_512_siglip_448", builder=lambda seed: build(seed, llm_layers=LAYERS))
    path = _images(tmp_path_factory.mktemp("img"))[0]  # 60 x 40: 2 x 2 tiles + thumbnail
    msg = [dict(type="image", value=path), dict(type="text", value=QUESTIONS[0])]

    def load(tokens=None, mask=()):
        return cls(encred_base="eagle2_9b", mask=mask, tokens=tokens, **GEN)

    return load, msg


def _probe(layers):
    """Per forward call of each decoder layer: (tokens received, position ids received)."""
    seen = {i: [] for i in range(len(layers))}

    def hook(i):
        def f(_m, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            pos = kwargs.get("position_ids")
            seen[i].append((h.shape[1], None if pos is None else pos[0].tolist()))
        return f

    return seen, [layer.register_forward_pre_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]


def _run(w, msg):
    """(answer, every forward's last-position logits, per-layer probe) of ``generate_inner``."""
    lm = w.model.language_model
    logits = []
    h = lm.register_forward_hook(lambda _m, _i, out: logits.append(out.logits[:, -1].clone()))
    seen, handles = _probe(lm.model.layers)
    try:
        answer = w.generate_inner(msg, dataset="MMVP")
    finally:
        for x in [h, *handles]:
            x.remove()
    return answer, logits, seen


def _prompt_embeds(w, msg):
    """The unpruned prompt's inputs_embeds, built by the remote code's generate (the per-variant path)."""
    from vlmeval_encred.model_wrappers.eagle2.modeling import Eagle2Sweep, _captured_embeds

    px, prompt = w.build_inputs(msg, "MMVP")
    ids, mask, _, _ = Eagle2Sweep._query(w.model, w.tokenizer, prompt, px.shape[0])
    with torch.inference_mode():
        return px, ids, _captured_embeds(w.model, pixel_values=px, input_ids=ids, attention_mask=mask)


def test_keep100_is_bit_identical_in_both_stages(eagle2):
    load, msg = eagle2
    ref_answer, ref_logits, _ = _run(load(), msg)
    assert len(ref_logits) > 1
    for tokens in ({"keep": 100}, {"keep": 100, "stage": "llm", "layer": 2}):
        w = load(tokens)
        answer, logits, _ = _run(w, msg)
        assert answer == ref_answer, tokens
        assert len(logits) == len(ref_logits) and all(torch.equal(a, b) for a, b in zip(logits, ref_logits)), tokens
        assert w.token_report["kept"] == w.token_report["visual"]


def _erank_np(x):
    s = np.linalg.svd(np.asarray(x, dtype=np.float64), compute_uv=False)
    p = s[s > 1e-12 * s.max()] / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def _reference_tile(feats: dict, keep: int) -> list[int]:
    """The documented fusion score of one tile, in numpy: L2 norms, effective-rank weights."""
    w = {e: _erank_np(f) for e, f in feats.items()}
    tot = sum(w.values())
    t = next(iter(feats.values())).shape[0]
    imp = np.zeros(t)
    for e, f in feats.items():
        norms = np.sqrt((np.asarray(f, dtype=np.float64) ** 2).sum(1))
        imp += w[e] / tot * norms / norms.sum()
    k = max(1, math.ceil(t * keep / 100))
    return sorted(sorted(range(t), key=lambda i: (-imp[i], i))[:k])


@pytest.mark.parametrize("mask", [(), ("convnext",), ("siglip",)], ids=lambda m: "+".join(m) or "none")
def test_fusion_stage_shrinks_the_sequence_and_keeps_the_documented_set(eagle2, mask):
    load, msg = eagle2
    w = load({"keep": 25}, mask=mask)
    x = {}
    h = w.model.mlp1.register_forward_pre_hook(lambda _m, a: x.__setitem__("in", a[0].detach().clone()))
    try:
        _, _, seen = _run(w, msg)
    finally:
        h.remove()
    r = w.token_report
    s, visual, kept = r["prompt_len"], r["visual"], r["kept"]
    tiles = len(visual) // TILE_TOKENS
    assert tiles > 1 and len(kept) == tiles * 1  # ceil(4 * 25 / 100) = 1 per tile
    pruned = len(visual) - len(kept)
    keep_pos = [p for p in range(s) if p not in set(visual) - set(kept)]
    for i in range(LAYERS):
        assert seen[i][0] == (s - pruned, keep_pos)  # every layer: the shorter prompt at original positions
        steps = seen[i][1:]
        assert all(n == 1 for n, _ in steps) and [p for _, p in steps] == [[s + j] for j in range(len(steps))]
    # independent recomputation: mlp1's input columns are [4 x siglip 8 | convnext 16] (tiny sizes)
    feats_all = {"siglip": x["in"][..., :32].numpy(), "convnext": x["in"][..., 32:].numpy()}
    for e in mask:
        assert (feats_all[e] == 0).all()
    live = [e for e in ("siglip", "convnext") if e not in mask]
    ref = []
    for t in range(tiles):
        ref += [visual[t * TILE_TOKENS + j] for j in _reference_tile({e: feats_all[e][t] for e in live}, 25)]
    assert kept == ref


def test_llm_stage_prunes_after_layer_k_by_eager_attention_per_tile(eagle2):
    load, msg = eagle2
    w = load({"keep": 50, "stage": "llm", "layer": 2})
    answer, _, seen = _run(w, msg)
    r = w.token_report
    s, visual, kept = r["prompt_len"], r["visual"], r["kept"]
    assert len(kept) == len(visual) // 2  # 2 of 4 per tile
    pruned = len(visual) - len(kept)
    keep_pos = [p for p in range(s) if p not in set(visual) - set(kept)]
    assert [seen[i][0][0] for i in range(LAYERS)] == [s, s, s - pruned, s - pruned]
    assert seen[0][0][1] == list(range(s))
    for i in (2, 3):
        assert seen[i][0][1] == keep_pos  # pruned positions never reach layers after K
        assert [p for _, p in seen[i][1:]] == [[s + j] for j in range(len(seen[i]) - 1)]
    # independent reference: transformers' eager attention weights of layer K-1 = 1 (unpruned prompt)
    _, ids, embeds = _prompt_embeds(w, msg)
    assert ids.shape[1] == s and (ids[0] == w.model.img_context_token_id).nonzero().flatten().tolist() == visual
    with torch.inference_mode():
        att = w.model.language_model(inputs_embeds=embeds, output_attentions=True).attentions[1]
    score = att[0, :, s - 1, visual].double().mean(0)
    ref = []
    for t in range(len(visual) // TILE_TOKENS):
        sc = score[t * TILE_TOKENS:(t + 1) * TILE_TOKENS]
        ref += sorted(visual[t * TILE_TOKENS + j] for j in sorted(range(TILE_TOKENS), key=lambda j: (-float(sc[j]), j))[:2])
    assert kept == ref
    # the pruned answer differs from the unpruned one somewhere in the logits (pruning is not vacuous)
    _, full_logits, _ = _run(load(), msg)
    _, logits, _ = _run(w, msg)
    assert not torch.equal(full_logits[0], logits[0])


def test_refusals_are_clear(eagle2):
    from vlmeval_encred.registry import parse_entry_name
    from vlmeval_encred.tokens import TokenError

    load, _ = eagle2
    with pytest.raises(TokenError, match="K=4 must be between 1 and 3"):
        load({"keep": 25, "stage": "llm", "layer": 4})
    with pytest.raises(TokenError, match="every encoder is masked"):
        load({"keep": 25}, mask=("siglip", "convnext"))
    e = parse_entry_name("eagle2_9b_mask_convnext_keep25_llm")
    assert e.kwargs()["tokens"] == {"keep": 25, "stage": "llm", "layer": 2}
    w = load({"keep": 25})
    with pytest.raises(ValueError, match="token-budget variant is run as an ordinary VLMEvalKit model"):
        w.sweep_support.prepare(w, [dict(type="text", value="x")], None)
