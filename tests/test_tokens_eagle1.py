"""Token-budget variants of Eagle-1 (model_wrappers/eagle1/tokens.py, docs/tokens.md) on upstream's
real EAGLE classes (tiny random model with a 4-layer LLaMA, offline), env ``eagle1``.

What is real: EAGLE's ``EagleLlamaForCausalLM`` (its ``generate``,
``prepare_inputs_labels_for_multimodal`` and channel-concatenation fusion of all five towers),
``load_pretrained_model``, VLMEvalKit's ``Eagle.generate_inner``, transformers 4.44's LLaMA.
Mocked, because no GPU exists here: the CUDA load and input moves go to the CPU and the model
runs in float32 (the ``on_cpu`` fixture of tests/test_eagle1_realcode.py).

Checked: keep100 equals the unpruned variant bit for bit (lm_head outputs of every step and the
answers, both stages); the LLM's sequence shrinks by the pruned count (forward pre-hooks count
the tokens each decoder layer receives; the later layers' KV cache is shorter); pruned positions
never reach layers past the pruning point (the position ids those layers receive); the kept set
is the documented one recomputed independently (numpy norms and SVD effective ranks of the
fusion's channel blocks; transformers' own eager attention weights for the llm stage).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from test_eagle1_realcode import _is_cuda, image_file, on_cpu  # noqa: F401  (fixtures, reused)

pytestmark = [pytest.mark.envs("eagle1"), pytest.mark.realcode("eagle")]

X5 = ("clip", "convnext", "sam", "eva02", "pix2struct")
LAYERS = 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny X5 checkpoint whose LLaMA has 4 decoder layers (so K = 2 leaves two after the cut)."""
    from conftest import need_sources

    need_sources("eagle")
    from vlmeval_encred.model_wrappers.eagle1.selftest import TinySizes, build_checkpoint, tiny_upstream

    sizes = TinySizes(llm_layers=LAYERS)
    work = tmp_path_factory.mktemp("eagle1_tokens")
    with tiny_upstream(work, sizes):
        yield build_checkpoint(work / "Eagle-X5-tiny", sizes=sizes)


def _load(tiny, on_cpu, name, **kw):
    from vlmeval_encred.model_wrappers.eagle1 import EncredEagle
    from vlmeval_encred.registry import parse_entry_name

    on_cpu.fp32 = True
    args = {**parse_entry_name(name).kwargs(), **kw}
    args.pop("model_path", None)
    return EncredEagle(model_path=str(tiny), max_new_tokens=5, **args)


def _message(image_file, text="What colour is the image ? A red B green"):
    return [{"type": "image", "value": str(image_file)}, {"type": "text", "value": text}]


def _probe(w):
    """Per decoder layer, per forward call: (tokens received, position ids received); the cache object."""
    layers = w.model.get_model().layers
    seen = {i: [] for i in range(len(layers))}
    cache = {}

    def hook(i):
        def f(_m, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            seen[i].append((h.shape[1], kwargs["position_ids"][0].tolist()))
            cache["kv"] = kwargs.get("past_key_value")
        return f

    return seen, cache, [layer.register_forward_pre_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]


def _run(w, msg):
    """(answer, lm_head output of every step) of one generate_inner."""
    steps = []
    h = w.model.lm_head.register_forward_hook(lambda _m, _a, out: steps.append(out[:, -1].clone()))
    try:
        return w.generate_inner(msg), steps
    finally:
        h.remove()


def _prompt(w, msg):
    """input_ids and image tensor exactly as VLMEvalKit's generate_inner passes them to generate."""
    from vlmeval_encred.model_wrappers.eagle1 import Eagle1Sweep

    tokens, w.tokens = w.tokens, None  # the sweep's capture refuses token variants; it is only read here
    try:
        got = Eagle1Sweep().prepare(w, msg, None)
    finally:
        w.tokens = tokens
    return got["input_ids"], got["images"]


def _unpruned_embeds(w, ids, images):
    """The unpruned spliced prompt through the class's own method (the instance's wrapper bypassed)."""
    model = w.model
    with torch.no_grad():
        return type(model).prepare_inputs_labels_for_multimodal(model, ids, None, None, None, None, images)[4]


def test_names_and_refusals():
    from vlmeval_encred.registry import RegistryError, entries, parse_entry_name

    e = parse_entry_name("eagle_x5_mask_sam_keep25_llm")
    assert e.tokens.stage == "llm" and e.tokens.layer == 2 and e.masked == ("sam",)
    assert parse_entry_name("eagle_x4_8b_plus_keep50").tokens.stage == "fusion"
    with pytest.raises(RegistryError, match="no encoder is left to score tokens"):
        parse_entry_name("eagle_x5_mask_" + "_".join(X5) + "_keep25")
    assert parse_entry_name("eagle_x5_mask_" + "_".join(X5) + "_keep25_llm").tokens.layer == 2
    names = {x.name for x in entries(base="eagle_x5", tokens=True)}
    assert {"eagle_x5_keep25", "eagle_x5_mask_clip_keep75", "eagle_x5_keep50_llm"} <= names


@pytest.mark.parametrize("stage", ["fusion", "llm"])
def test_keep100_is_bit_identical(tiny, on_cpu, image_file, stage):
    full = _load(tiny, on_cpu, "eagle_x5_mask_sam")
    w = _load(tiny, on_cpu, "eagle_x5_mask_sam_keep100" + ("_llm" if stage == "llm" else ""))
    msg = _message(image_file)
    want, want_steps = _run(full, msg)
    got, got_steps = _run(w, msg)
    assert got == want and len(got_steps) == len(want_steps) > 1
    assert all(torch.equal(a, b) for a, b in zip(got_steps, want_steps))
    assert w.token_report["kept"] == w.token_report["visual"] and len(w.token_report["visual"]) == 1024


def _reference_fusion(fused: np.ndarray, widths: list[tuple[str, int]], scored: set[str], keep: int) -> list[int]:
    """The documented fusion score with numpy: per-block row norms, SVD effective ranks, plain sort."""
    blocks, start = {}, 0
    for name, width in widths:
        if name in scored:
            blocks[name] = fused[:, start:start + width].astype(np.float64)
        start += width
    ranks = {}
    for name, x in blocks.items():
        s = np.linalg.svd(x, compute_uv=False)
        p = s[s > 1e-12 * s.max()] / s.sum()
        ranks[name] = float(np.exp(-(p * np.log(p)).sum()))
    imp = sum(ranks[n] / sum(ranks.values()) * np.linalg.norm(x, axis=1) / np.linalg.norm(x, axis=1).sum()
              for n, x in blocks.items())
    k = max(1, math.ceil(len(imp) * keep / 100))
    return sorted(sorted(range(len(imp)), key=lambda i: (-imp[i], i))[:k])


@pytest.mark.parametrize("mode", ["zero", "drop"])
def test_fusion_stage_shrinks_the_sequence_keeps_positions_and_the_documented_set(tiny, on_cpu, image_file, mode):
    w = _load(tiny, on_cpu, "eagle_x5_mask_sam_keep25", mask_mode=mode)
    msg = _message(image_file)
    ids, images = _prompt(w, msg)
    seen, _, handles = _probe(w)
    try:
        w.generate_inner(msg)
    finally:
        for h in handles:
            h.remove()
    rep = w.token_report
    kept, visual = rep["kept"], rep["visual"]
    assert len(visual) == 1024 and len(kept) == 256
    s = len(_unpruned_embeds(w, ids, images)[0])
    first = visual[0]
    # independent: the loaded fusion's concatenation, its blocks cut by the towers' widths
    with torch.no_grad():
        fused = w.model.get_vision_tower()(images)[0].numpy()
    widths = [(e.name, e.output_shape[1]) for e in w.encred_report.encoders
              if not (mode == "drop" and e.name == "sam")]
    assert fused.shape[1] == sum(c for _, c in widths)
    ref = _reference_fusion(fused, widths, set(X5) - {"sam"}, 25)
    assert kept == [first + j for j in ref]
    expected = list(range(first)) + kept + list(range(first + 1024, s))
    for i in seen:  # every layer: the prompt without the 768 pruned tokens, at original positions
        n, pos = seen[i][0]
        assert n == s - 768 and pos == expected
        assert [p for _, p in seen[i][1:]] == [[s + t] for t in range(len(seen[i]) - 1)]  # decoding continues
    assert w.token_state.table is None  # disarmed after the sample


def test_llm_stage_prunes_after_layer_k_with_the_eager_attention_ranking(tiny, on_cpu, image_file):
    w = _load(tiny, on_cpu, "eagle_x5_keep25_llm")  # K = 2 of 4 layers
    assert w.tokens.layer == 2
    msg = _message(image_file)
    ids, images = _prompt(w, msg)
    seen, cache, handles = _probe(w)
    try:
        w.generate_inner(msg)
    finally:
        for h in handles:
            h.remove()
    rep = w.token_report
    visual, kept = rep["visual"], rep["kept"]
    assert len(visual) == 1024 and len(kept) == 256
    embeds = _unpruned_embeds(w, ids, images)
    s = embeds.shape[1]
    keep_pos = [p for p in range(s) if p not in set(visual) - set(kept)]
    for i in (0, 1):
        assert seen[i][0] == (s, list(range(s)))
    for i in (2, 3):  # the pruned positions never reach the layers after K
        assert seen[i][0] == (s - 768, keep_pos)
    for i in seen:
        assert all(n == 1 for n, _ in seen[i][1:])
    kv = cache["kv"]
    assert kv.key_cache[2].shape[2] == kv.key_cache[3].shape[2] == kv.key_cache[0].shape[2] - 768
    # independent: transformers' own eager attention weights of layer K-1 (no pruner armed)
    with torch.no_grad():
        out = w.model(inputs_embeds=embeds, output_attentions=True)
    att = out.attentions[1][0, :, -1].float().mean(0).double()[visual]
    ref = sorted(sorted(range(len(visual)), key=lambda i: (-float(att[i]), i))[:256])
    assert kept == [visual[i] for i in ref]


def test_refusals_at_load_say_why(tiny, on_cpu):
    from vlmeval_encred.tokens import TokenError

    with pytest.raises(TokenError, match="every tower is masked"):
        _load(tiny, on_cpu, "eagle_x5", mask=X5, tokens={"keep": 25})
    with pytest.raises(TokenError, match="K=4 must be between 1 and 3"):
        _load(tiny, on_cpu, "eagle_x5", tokens={"keep": 25, "stage": "llm", "layer": 4})
