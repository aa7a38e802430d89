"""Token-budget variants (issue 19, docs/tokens.md): grammar, selection, and exactness on
the demo model and on transformers' real DeepseekVLHybrid classes (tiny random sizes).

Exactness claims checked here:

* keep100 equals the unpruned model bit for bit (logits of every generated step);
* the LLM's sequence really shrinks: forward pre-hooks count the tokens each decoder layer
  receives (and the KV cache of the later layers holds only kept tokens);
* pruned positions never reach the layers past the pruning point (the position ids those
  layers receive are exactly the kept ones);
* the kept set is the one the documented score selects, recomputed independently: numpy SVD
  + norms for the fusion stage, transformers' own eager attention weights for the llm stage.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from vlmeval_encred.registry import BaseModelSpec, RegistryError, bases, entries, parse_entry_name
from vlmeval_encred.tokens import (TokenError, TokenSpec, adaptive_fraction, fusion_select, grouped_select,
                                   split_budget)


# --- grammar ------------------------------------------------------------------------------

def test_names_parse_and_round_trip():
    for name, keep, stage, layer, masked in [
            ("encred_tiny_keep25", 25, "fusion", None, ()),
            ("encred_tiny_mask_hires_keep50", 50, "fusion", None, ("hires",)),
            ("encred_tiny_keep25_llm", 25, "llm", 1, ()),
            ("encred_tiny_keep10_llm2", 10, "llm", 2, ()),
            ("encred_tiny_keep100", 100, "fusion", None, ()),
            ("deepseek_vl_7b_hf_mask_sam_keep75_llm", 75, "llm", 2, ("sam",)),
            ("encred_tiny_mask_lowres_hires_colour_keep50_llm", 50, "llm", 1, ("lowres", "hires", "colour"))]:
        e = parse_entry_name(name)
        assert (e.tokens.keep, e.tokens.stage, e.tokens.layer, e.masked) == (keep, stage, layer, masked)
        assert e.name == name
        assert e.kwargs()["tokens"] == e.tokens.as_kwargs()
    assert "tokens" not in parse_entry_name("encred_tiny_mask_hires").kwargs()


@pytest.mark.parametrize("name,fragment", [
    ("encred_tiny_keep25_fusion", "use 'encred_tiny_keep25'"),
    ("encred_tiny_keep25_llm1", "use 'encred_tiny_keep25_llm'"),
    ("encred_tiny_keep050", "use 'encred_tiny_keep50'"),
    ("encred_tiny_keep0", "1..100"),
    ("encred_tiny_keep101", "1..100"),
    ("encred_tiny_keep25_foo", "unknown token stage 'foo'"),
    ("encred_tiny_keep25_mask_hires", "e.g. 'encred_tiny_mask_hires_keep25'"),
    ("encred_tiny_mask_hirs_keep25", "did you mean 'hires'"),
    ("encred_tiny_mask_lowres_hires_colour_keep25", "no encoder is left to score tokens"),
])
def test_invalid_names_say_why(name, fragment):
    with pytest.raises(RegistryError) as exc:
        parse_entry_name(name)
    assert fragment in str(exc.value)
    assert name in str(exc.value)


def test_a_family_without_the_stage_is_named(monkeypatch):
    """A base whose family implements no token stage (registered for this test only, so the
    test does not depend on which real families have implemented theirs)."""
    from vlmeval_encred import registry

    registry._ensure_catalog()
    spec = BaseModelSpec(name="zz_untokened", family="zz_family", encoders=("a", "b"), checkpoint="c",
                         wrapper="m:C")
    monkeypatch.setitem(registry._BASES, spec.name, spec)
    for name, fragment in [("zz_untokened_keep25", "not yet implemented for family zz_family"),
                           ("zz_untokened_mask_a_keep25_llm", "llm token stage is not yet implemented for family zz_family")]:
        with pytest.raises(RegistryError) as exc:
            parse_entry_name(name)
        assert fragment in str(exc.value) and name in str(exc.value)


def test_registered_token_entries_and_mask_lattice_unchanged():
    for b in bases():
        lattice = entries(base=b.name)
        assert len(lattice) == 2 ** len(b.encoders) and all(e.tokens is None for e in lattice)
        with_tokens = entries(base=b.name, tokens=True)
        tok = [e for e in with_tokens if e.tokens is not None]
        if not b.token_stages:
            assert tok == []
            continue
        n_sub = 2 ** len(b.encoders)
        per_stage = {"fusion": n_sub - 1, "llm": n_sub}  # fusion needs an unmasked encoder
        assert len(tok) == 3 * sum(per_stage[s] for s in b.token_stages)
        assert {e.tokens.keep for e in tok} == {25, 50, 75}
        for e in tok:
            assert parse_entry_name(e.name) == e


def test_spec_rejects_names_that_would_clash_with_the_grammar():
    kw = dict(family="x", checkpoint="c", wrapper="m:C")
    with pytest.raises(RegistryError, match="reserved"):
        BaseModelSpec(name="zz_base", encoders=("keep25", "b"), **kw)
    with pytest.raises(RegistryError, match="_keep"):
        BaseModelSpec(name="zz_keep3", encoders=("a",), **kw)
    with pytest.raises(RegistryError, match="token stages"):
        BaseModelSpec(name="zz_base", encoders=("a",), token_stages=("pool",), **kw)


def test_budget_split_and_adaptive_formulas():
    assert [TokenSpec(k).budget(576) for k in (25, 50, 75, 100, 1)] == [144, 288, 432, 576, 6]
    assert TokenSpec(25).budget(3) == 1 and TokenSpec(1).budget(16) == 1
    assert split_budget(10, [0.5, 0.3, 0.2], [100, 100, 100]) == [5, 3, 2]
    assert split_budget(10, [0.45, 0.35, 0.2], [100, 100, 100]) == [5, 3, 2]  # remainders .5 .5 0: first wins
    assert split_budget(10, [0.9, 0.1], [4, 100]) == [4, 6]  # a capped group's share goes to the other
    assert sum(split_budget(7, [1, 1, 1], [2, 2, 2])) == 6
    assert adaptive_fraction(50, [1, 1, 1, 1]) == pytest.approx(0.75)  # uniform: h = 1
    assert adaptive_fraction(50, [1, 0, 0, 0]) == pytest.approx(0.25)  # one token: h = 0
    with pytest.raises(TokenError):
        TokenSpec(25, "fusion", adaptive=True)
    with pytest.raises(TokenError):
        TokenSpec(0)


def _erank_np(x):
    s = np.linalg.svd(np.asarray(x, dtype=np.float64), compute_uv=False)
    p = s[s > 1e-12 * s.max()] / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def _reference_fusion(feats: dict, keep: int) -> list[int]:
    """The documented fusion score, written out with numpy loops."""
    names = list(feats)
    ranks = {e: _erank_np(feats[e]) for e in names}
    w = {e: ranks[e] / sum(ranks.values()) for e in names}
    t = next(iter(feats.values())).shape[0]
    imp = []
    for i in range(t):
        tot = 0.0
        for e in names:
            norms = [math.sqrt(sum(float(v) ** 2 for v in row)) for row in feats[e]]
            tot += w[e] * norms[i] / sum(norms)
        imp.append(tot)
    k = max(1, math.ceil(t * keep / 100))
    return sorted(sorted(range(t), key=lambda i: (-imp[i], i))[:k])


def test_fusion_selection_matches_an_independent_computation():
    g = torch.Generator().manual_seed(0)
    feats = {"a": torch.randn(20, 8, generator=g), "b": torch.randn(20, 3, generator=g) * 5,
             "c": torch.randn(20, 1, generator=g).expand(20, 6).clone()}
    for keep in (10, 25, 50, 75, 100):
        sel = fusion_select(feats, TokenSpec(keep))
        assert sel.kept.tolist() == _reference_fusion({k: v.numpy() for k, v in feats.items()}, keep)
    grouped = grouped_select({"a": feats["a"], "b": feats["b"][:12]}, TokenSpec(25))
    assert sum(len(v) for v in grouped.values()) == math.ceil(32 * 0.25)
    with pytest.raises(TokenError):
        fusion_select({}, TokenSpec(25))


def test_vlmevalkit_dict_builds_unregistered_budgets_on_demand():
    from vlmeval_encred.vlmeval_plugin import _MARK, GuardedModels, UnknownModelName

    class Fake:
        pass

    base = functools.partial(Fake, **parse_entry_name("encred_tiny").kwargs())
    setattr(base, _MARK, True)
    d = GuardedModels({"encred_tiny": base})
    assert "encred_tiny_mask_hires_keep10_llm" in d
    b = d["encred_tiny_keep33"]
    assert b.keywords["tokens"] == {"keep": 33, "stage": "fusion"} and getattr(b, _MARK)
    assert "encred_tiny_keep33" in dict(d)
    assert "encred_tiny_keep33_fusion" not in d
    with pytest.raises(UnknownModelName, match="use 'encred_tiny_keep33'"):
        d["encred_tiny_keep33_fusion"]


# --- demo model (encred_tiny) ----------------------------------------------------------------

def _layer_probe(layers):
    """Per forward call of each layer: (tokens received, position ids received)."""
    seen = {i: [] for i in range(len(layers))}

    def hook(i):
        def f(_m, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            pe = kwargs.get("position_ids")
            seen[i].append((h.shape[1], None if pe is None else pe[0].tolist()))
        return f

    handles = [layer.register_forward_pre_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    return seen, handles


@pytest.fixture(scope="module")
def demo():
    from vlmeval_encred.demo import data
    from vlmeval_encred.demo.model import sample_message
    from vlmeval_encred.model_wrappers.encred_tiny.modeling import EncredTiny

    def load(name):
        return EncredTiny(**parse_entry_name(name).kwargs())

    samples = data.generate("OCR", 4) + data.generate("Vision", 4)
    msgs = [sample_message(s) for s in samples]
    return load, msgs


def _demo_logits(w, msg):
    """Prefill logits of the demo wrapper with its budget applied (the answer's first step)."""
    from vlmeval_encred.model_wrappers.encred_tiny.modeling import fusion_features

    m, tok = w.model, w.tokenizer
    pixels, prompt = w.model_inputs(m, msg)
    ids = torch.tensor([m.build_inputs(tok, prompt)])
    with torch.inference_mode():
        if w.tokens is None:
            return m.language_model(inputs_embeds=m.embed(ids, pixels)).logits
        if w.tokens.stage == "llm":
            w.pruner.arm(range(1, 17), ids.shape[1])
            try:
                return m.language_model(inputs_embeds=m.embed(ids, pixels)).logits
            finally:
                w.pruner.disarm()
        cat, feats = fusion_features(m, pixels)
        sel = fusion_select({n: f[0] for n, f in feats.items()}, w.tokens)
        emb = m.language_model.get_input_embeddings()(ids)
        img = m.projector(cat)
        e = torch.cat([emb[:, :1], img[:, sel.kept], emb[:, 17:]], 1)
        pos = torch.tensor([[0] + [1 + k for k in sel.kept.tolist()] + list(range(17, ids.shape[1]))])
        return m.language_model(inputs_embeds=e, position_ids=pos, attention_mask=torch.ones_like(pos)).logits


def test_demo_keep100_is_bit_identical(demo):
    load, msgs = demo
    full = load("encred_tiny")
    for name in ("encred_tiny_keep100", "encred_tiny_keep100_llm"):
        w = load(name)
        for msg in msgs:
            assert torch.equal(_demo_logits(w, msg), _demo_logits(full, msg))
            assert w.generate_inner(msg) == full.generate_inner(msg)
            assert w.token_report["kept"] == list(range(16))


def test_demo_fusion_sequence_shrinks_and_kept_set_is_the_documented_one(demo):
    from vlmeval_encred.demo.model import to_grid

    load, msgs = demo
    w = load("encred_tiny_mask_colour_keep25")
    seen, handles = _layer_probe(w.model.language_model.model.layers)
    try:
        w.generate_inner(msgs[0])
    finally:
        for h in handles:
            h.remove()
    kept = w.token_report["kept"]
    assert len(kept) == 4
    pixels, prompt = w.model_inputs(w.model, msgs[0])
    s = len(w.model.build_inputs(w.tokenizer, prompt))
    with torch.inference_mode():
        feats = {n: to_grid(w.model.towers[n](pixels), 4)[0].numpy() for n in ("lowres", "hires")}
    assert kept == _reference_fusion(feats, 25)
    expected_pos = [0] + [1 + k for k in kept] + list(range(17, s))
    for i in seen:  # every layer: the first forward is the prompt without the 12 pruned tokens
        n, pos = seen[i][0]
        assert n == s - 12 and pos == expected_pos


def test_demo_llm_stage_prunes_after_layer_k_with_the_attention_ranking(demo):
    load, msgs = demo
    w = load("encred_tiny_keep25_llm")  # K = 1 (the demo LM has 2 layers)
    lm = w.model.language_model
    seen, handles = _layer_probe(lm.model.layers)
    try:
        w.generate_inner(msgs[1])
    finally:
        for h in handles:
            h.remove()
    kept = w.token_report["kept"]
    pixels, prompt = w.model_inputs(w.model, msgs[1])
    ids = torch.tensor([w.model.build_inputs(w.tokenizer, prompt)])
    s = ids.shape[1]
    assert seen[0][0][0] == s and seen[1][0][0] == s - 12
    # The positions layer 1 sees: every text position and the kept visual ones, never a pruned one.
    assert seen[1][0][1] == [0] + [1 + k for k in kept] + list(range(17, s))
    # Independent reference: transformers' eager attention weights of layer K-1 = 0.
    lm.config._attn_implementation = "eager"
    try:
        with torch.inference_mode():
            att = lm(inputs_embeds=w.model.embed(ids, pixels), output_attentions=True).attentions[0]
    finally:
        lm.config._attn_implementation = "sdpa"
    score = att[0, :, s - 1, 1:17].double().mean(0)
    ref = sorted(sorted(range(16), key=lambda i: (-float(score[i]), i))[:4])
    assert kept == ref

    # The control hook (the demo's token check, at the llm stage): it is offered the scored selection,
    # its positions replace the scored ones after layer K, and layer K sees exactly those.
    offered = []
    w.token_select = lambda sel: offered.append(sel.kept.tolist()) or torch.tensor([0, 5, 10, 15])
    seen, handles = _layer_probe(lm.model.layers)
    try:
        w.generate_inner(msgs[1])
    finally:
        w.token_select = None
        for h in handles:
            h.remove()
    assert offered[0] == ref and w.token_report["kept"] == [0, 5, 10, 15]
    assert seen[1][0][1] == [0, 1, 6, 11, 16] + list(range(17, s))
    assert w.pruner.select is None  # the hook does not outlive the answer
    w.token_select = lambda sel: torch.tensor([0, 0, 1, 2])  # not 4 distinct positions: refused, said why
    try:
        with pytest.raises(TokenError, match="4 distinct indices into the 16 visual positions"):
            w.generate_inner(msgs[1])
    finally:
        w.token_select = None


# --- transformers' DeepseekVLHybrid (real classes, tiny random sizes) -----------------------

@pytest.fixture(scope="module")
def dsvl(tmp_path_factory):
    from vlmeval_encred.model_wrappers.deepseek_vl_hf.tiny import HybridSizes, build_deepseek_vl_hybrid

    path = tmp_path_factory.mktemp("dsvl4") / "ckpt"
    build_deepseek_vl_hybrid(path, HybridSizes(llm_layers=4))
    from PIL import Image

    img = tmp_path_factory.mktemp("img") / "a.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(img)
    msg = [{"type": "image", "value": str(img)}, {"type": "text", "value": "What colour is the image?"}]

    def load(tokens=None, mask=()):
        from vlmeval_encred.model_wrappers.deepseek_vl_hf import EncredDeepseekVLHybrid

        return EncredDeepseekVLHybrid(model_path=str(path), torch_dtype="float32", device="cpu", max_new_tokens=5,
                                      tokens=tokens, mask=mask)
    return load, msg, str(path)


def _generate_logits(w, inputs, **extra):
    out = w.model.generate(**inputs, **w.kwargs, return_dict_in_generate=True, output_logits=True, **extra)
    return out


def test_dsvl_keep100_is_bit_identical_in_both_stages(dsvl):
    from vlmeval_encred.model_wrappers.deepseek_vl_hf.modeling import fusion_token_inputs

    load, msg, _ = dsvl
    full = load()
    inputs = full.build_inputs(msg)
    with torch.inference_mode():
        ref = _generate_logits(full, inputs)
        w = load({"keep": 100, "stage": "fusion"})
        gen, _ = fusion_token_inputs(w, w.build_inputs(msg))
        got = _generate_logits(w, gen)
        assert torch.equal(got.sequences, ref.sequences)
        assert all(torch.equal(a, b) for a, b in zip(got.logits, ref.logits))
        w = load({"keep": 100, "stage": "llm", "layer": 2})
        w.pruner.arm((inputs["input_ids"][0] == w.model.config.image_token_id).nonzero().flatten().tolist(),
                     inputs["input_ids"].shape[1])
        try:
            got = _generate_logits(w, w.build_inputs(msg))
        finally:
            w.pruner.disarm()
        assert torch.equal(got.sequences, ref.sequences)
        assert all(torch.equal(a, b) for a, b in zip(got.logits, ref.logits))


def test_dsvl_llm_stage_shrinks_sequence_and_cache_and_keeps_the_attention_top_k(dsvl):
    from transformers import DeepseekVLHybridForConditionalGeneration

    load, msg, path = dsvl
    w = load({"keep": 25, "stage": "llm", "layer": 2})
    layers = w.model.model.language_model.layers
    inputs = w.build_inputs(msg)
    ids = inputs["input_ids"]
    s = ids.shape[1]
    visual = (ids[0] == w.model.config.image_token_id).nonzero().flatten().tolist()
    n_vis = len(visual)
    seen, handles = _layer_probe(layers)
    w.pruner.arm(visual, s)
    try:
        with torch.inference_mode():
            out = _generate_logits(w, inputs)
    finally:
        w.pruner.disarm()
        for h in handles:
            h.remove()
    kept = list(w.pruner.kept_visual)
    pruned = n_vis - len(kept)
    assert len(kept) == math.ceil(n_vis * 0.25) and pruned > 0
    assert [seen[i][0][0] for i in range(4)] == [s, s, s - pruned, s - pruned]
    keep_pos = [p for p in range(s) if p not in set(visual) - set(kept)]
    for i in (2, 3):
        assert seen[i][0][1] == keep_pos  # pruned positions never reach layers after K
        assert all(n == 1 for n, _ in seen[i][1:])  # cached decoding: one new token per step
    steps = out.sequences.shape[1] - s
    cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    lengths = [cache.layers[i].keys.shape[-2] for i in range(4)]
    assert lengths[:2] == [s + steps - 1] * 2 and lengths[2:] == [s - pruned + steps - 1] * 2
    # Independent reference for the kept set: transformers' eager attention of layer K-1 = 1.
    eager = DeepseekVLHybridForConditionalGeneration.from_pretrained(path, dtype=torch.float32,
                                                                     attn_implementation="eager").eval()
    with torch.inference_mode():
        att = eager(**inputs, output_attentions=True).attentions[1]
    score = att[0, :, s - 1, visual].double().mean(0)
    ref = sorted(visual[i] for i in sorted(range(n_vis), key=lambda i: (-float(score[i]), i))[:len(kept)])
    assert kept == ref
    # The cached generation equals a cache-less greedy recomputation through the same pruning.
    seq = ids
    w.pruner.arm(visual, s)
    try:
        with torch.inference_mode():
            for _ in range(steps):
                logits = w.model(input_ids=seq, pixel_values=inputs["pixel_values"],
                                 high_res_pixel_values=inputs["high_res_pixel_values"], use_cache=False).logits
                seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], 1)
    finally:
        w.pruner.disarm()
    assert torch.equal(seq, out.sequences)


def test_dsvl_fusion_stage_shrinks_the_input_and_keeps_the_documented_set(dsvl):
    load, msg, _ = dsvl
    for mask, live in (((), ("siglip", "sam")), (("sam",), ("siglip",))):
        w = load({"keep": 25, "stage": "fusion"}, mask=mask)
        inner = w.model.model
        inputs = w.build_inputs(msg)
        s = inputs["input_ids"].shape[1]
        seen, handles = _layer_probe(inner.language_model.layers)
        try:
            w.generate_inner(msg)
        finally:
            for h in handles:
                h.remove()
        visual, kept = w.token_report["visual"], w.token_report["kept"]
        pruned = len(visual) - len(kept)
        assert len(kept) == math.ceil(len(visual) / 4)
        keep_pos = [p for p in range(s) if p not in set(visual) - set(kept)]
        for i in range(4):
            assert seen[i][0] == (s - pruned, keep_pos)
        with torch.inference_mode():
            low = inner.get_low_res_image_features(inputs["pixel_values"]).last_hidden_state[0].numpy()
            high = inner.get_high_res_image_features(inputs["high_res_pixel_values"]).last_hidden_state[0].numpy()
        feats = {"siglip": low, "sam": high}
        ref = _reference_fusion({e: feats[e] for e in live}, 25)
        assert kept == [visual[j] for j in ref]


def test_dsvl_refusals_are_clear(dsvl):
    load, _, _ = dsvl
    with pytest.raises(TokenError, match="K=4 must be between 1 and 3"):
        load({"keep": 25, "stage": "llm", "layer": 4})
    with pytest.raises(TokenError, match="every encoder is masked"):
        load({"keep": 25, "stage": "fusion"}, mask=("siglip", "sam"))


def test_vlmevalkit_supported_vlm_has_token_budgets():
    import os

    if os.environ.get("VLMEVAL_ENCRED_DISABLE"):
        pytest.skip("VLMEVAL_ENCRED_DISABLE is set: the start-up hook is off in this process")
    import vlmeval.config as config

    from vlmeval_encred.vlmeval_plugin import UnknownModelName

    sv = config.supported_VLM
    for name in ("encred_tiny_keep25", "encred_tiny_mask_colour_keep50_llm", "deepseek_vl_tiny_random_keep75"):
        assert dict.__contains__(sv, name)  # registered up front
    assert not dict.__contains__(sv, "encred_tiny_keep10_llm")
    assert "encred_tiny_keep10_llm" in sv  # registered on first lookup
    assert sv["encred_tiny_keep10_llm"].keywords["tokens"] == {"keep": 10, "stage": "llm", "layer": 1}
    with pytest.raises(UnknownModelName, match="no encoder is left to score tokens"):
        sv["encred_tiny_mask_lowres_hires_colour_keep25"]
