"""Token-budget variants of I-MoF (docs/tokens.md) on the MMVP fork's real classes (environment ``imof``).

The model is the fork's own ``LlavaLlamaForCausalLM`` with its ``CLIPVisionTower`` and
``DINOVisionTower`` (DINOv2 from the registered dinov2 clone's hub code), loaded through
VLMEvalKit's ``supported_VLM`` from a tiny random checkpoint (model_wrappers/imof/selftest.py):
56 px images, so 16 tokens per tower (32 interleaved), and 4 LLM layers, so the llm stage's
default K = 2 leaves two layers after the pruning point.  Replaced because they cannot exist
here: the 13B weights, the CLIP checkpoint behind the fork's hub id and DINOv2's pretrained
weights (random tiny ones instead).

Checked: keep100 equals the unpruned model bit for bit (sequences and every step's logits, both
stages); the LLM's sequence really shrinks (forward pre-hooks count the tokens each decoder layer
receives; the llm stage's KV cache too); pruned positions never reach the layers past the pruning
point (the position ids they receive); the kept set is the documented one, recomputed
independently (numpy: effective ranks, DINOv2's last-block [CLS] attention, the budget split;
transformers' eager attention: CLIP's [CLS] attention and the LLM's last-token attention).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from test_tokens import _erank_np, _layer_probe
from vlmeval_encred.model_wrappers.imof import IMAGE_TOKEN_INDEX
from vlmeval_encred.model_wrappers.imof import selftest as rc

pytestmark = [pytest.mark.envs("imof"), pytest.mark.realcode("mmvp", "dinov2")]

SIZES = rc.TinySizes(image=56, llm_layers=4)
N = SIZES.tokens  # 16 tokens per tower
NEW_TOKENS = 4


@pytest.fixture(scope="module", autouse=True)
def fork():
    from vlmeval_encred.model_wrappers.imof.compat import import_fork

    from conftest import need_sources

    need_sources("mmvp", "dinov2")
    return import_fork()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("imof_tokens")


@pytest.fixture(scope="module")
def load(workdir):
    """name (and mask_mode) -> the VLMEvalKit entry loaded on the CPU in float32, loaded once."""
    from vlmeval.config import supported_VLM

    ck = rc.save_tiny_checkpoint(workdir / "MoF_tiny56", SIZES)
    loaded: dict[tuple[str, str], object] = {}
    with rc.tiny_environment(workdir, SIZES):
        def get(name: str, mode: str = "zero"):
            if (name, mode) not in loaded:
                loaded[(name, mode)] = supported_VLM[name](model_path=str(ck), device="cpu", dtype="float32",
                                                           mask_mode=mode, max_new_tokens=NEW_TOKENS)
            return loaded[(name, mode)]
        yield get


@pytest.fixture(scope="module")
def msg(workdir):
    from PIL import Image

    path = workdir / "img.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(path)
    return [{"type": "image", "value": str(path)}, {"type": "text", "value": "Which option? A. cat B. dog"}]


def _generate(w, inputs, tokens: bool):
    """generate() with every step's logits, through the budget or the plain fork."""
    from vlmeval_encred.model_wrappers.imof.modeling import generate_with_tokens

    extra = dict(return_dict_in_generate=True, output_logits=True)
    if tokens:
        return generate_with_tokens(w, inputs, **extra)
    with torch.inference_mode():
        return w.model.generate(inputs["input_ids"], images=inputs["images"], **w.gen_kwargs, **extra)


def _probe(w, fn):
    seen, handles = _layer_probe(w.model.get_model().layers)
    try:
        return fn(), seen
    finally:
        for h in handles:
            h.remove()


def _image_start(inputs) -> int:
    return int((inputs["input_ids"][0] == IMAGE_TOKEN_INDEX).nonzero()[0])


def test_keep100_is_bit_identical_in_both_stages(load, msg):
    full = load("imof_13b")
    inputs = full.build_inputs(msg)
    ref = _generate(full, inputs, tokens=False)
    for name in ("imof_13b_keep100", "imof_13b_keep100_llm"):
        w = load(name)
        got = _generate(w, w.build_inputs(msg), tokens=True)
        assert torch.equal(got.sequences, ref.sequences), name
        assert len(got.logits) == NEW_TOKENS and all(torch.equal(a, b) for a, b in zip(got.logits, ref.logits)), name
        assert w.token_report["kept"] == w.token_report["visual"] and len(w.token_report["visual"]) == 2 * N
        assert w.generate_inner(msg) == full.generate_inner(msg)


# --- fusion: an independent recomputation of the documented grouped selection ------------------

def _clip_reference(w, images) -> tuple[np.ndarray, np.ndarray]:
    """CLIP features at the fusion point and the [CLS]->patch attention (transformers' eager
    attention weights) of the layer that produces them (hidden_states[-2]: layer L-2)."""
    tower = w.model.get_model().vision_tower
    assert tower.select_layer == -2 and tower.select_feature == "patch"
    with torch.no_grad():
        out = tower.vision_tower(images, output_hidden_states=True, output_attentions=True)
    layer = len(tower.vision_tower.vision_model.encoder.layers) - 2
    att = out.attentions[layer][0, :, 0, 1:].double().mean(0)
    return out.hidden_states[-2][0, 1:].double().numpy(), att.numpy()


def _dino_reference(w, images) -> tuple[np.ndarray, np.ndarray]:
    """DINOv2 features (x_prenorm's patches) and the last block's [CLS] attention, in numpy from
    that block's input, its norm1 and qkv weights."""
    net = w.model.get_model().dino_tower.vision_tower
    block = net.blocks[-1]
    seen = []
    h = block.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            feats = net.forward_features(images)["x_prenorm"][0, 1:]
    finally:
        h.remove()
    x = seen[-1][0].double().numpy()
    ln = block.norm1
    x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + ln.eps)
    x = x * ln.weight.double().numpy() + ln.bias.double().numpy()
    qkv = x @ block.attn.qkv.weight.double().numpy().T
    if block.attn.qkv.bias is not None:
        qkv = qkv + block.attn.qkv.bias.double().numpy()
    heads = block.attn.num_heads
    n, c = x.shape
    qkv = qkv.reshape(n, 3, heads, c // heads)
    q, k = qkv[0, 0], qkv[:, 1]  # (H, D), (n, H, D)
    logits = np.einsum("hd,nhd->hn", q, k) * (c // heads) ** -0.5
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return feats.double().numpy(), p.mean(0)[1:]


def _largest_remainder(k: int, weights: list[float]) -> list[int]:
    share = [k * w / sum(weights) for w in weights]
    out = [math.floor(s) for s in share]
    for i in sorted(range(len(share)), key=lambda i: (-(share[i] - out[i]), i))[:k - sum(out)]:
        out[i] += 1
    return out


def _reference_grouped(groups: dict[str, tuple[np.ndarray, np.ndarray]], keep: int) -> dict[str, list[int]]:
    """The documented grouped fusion selection: k over all groups, split by effective-rank
    weights, each group's best k_e by its score (ties: lower index)."""
    names = list(groups)
    ranks = [_erank_np(groups[e][0]) for e in names]
    total = sum(groups[e][0].shape[0] for e in names)
    ks = _largest_remainder(max(1, math.ceil(total * keep / 100)), ranks)
    return {e: sorted(sorted(range(len(groups[e][1])), key=lambda i: (-groups[e][1][i], i))[:k])
            for e, k in zip(names, ks)}


@pytest.mark.parametrize("name,mode,live,layout", [
    ("imof_13b_keep25", "zero", ("clip", "dinov2"), "interleaved"),
    ("imof_13b_mask_dinov2_keep50", "zero", ("clip",), "interleaved"),
    ("imof_13b_mask_clip_keep50", "drop", ("dinov2",), "single"),
])
def test_fusion_stage_shrinks_the_sequence_and_keeps_the_documented_set(load, msg, name, mode, live, layout):
    w = load(name, mode)
    inputs = w.build_inputs(msg)
    _, seen = _probe(w, lambda: w.generate_inner(msg))
    rep = w.token_report
    p = _image_start(inputs)
    n_img = 2 * N if layout == "interleaved" else N
    s = inputs["input_ids"].shape[1] - 1 + n_img
    visual, kept = rep["visual"], rep["kept"]
    pruned = len(visual) - len(kept)
    assert len(visual) == N * len(live) and len(kept) == math.ceil(len(visual) * w.tokens.keep / 100) and pruned > 0
    keep_pos = [q for q in range(s) if q not in set(visual) - set(kept)]
    for i in range(SIZES.llm_layers):  # every layer: the prompt without the pruned tokens, original positions
        assert seen[i][0] == (s - pruned, keep_pos), i
        assert [pos for _n, pos in seen[i][1:]] == [[s + j] for j in range(len(seen[i]) - 1)]  # answer continues at s
    assert rep["scored_by"] == {e: "cls_attention" for e in live}
    refs = {"clip": _clip_reference, "dinov2": _dino_reference}
    groups = {e: refs[e](w, inputs["images"]) for e in live}
    ref = _reference_grouped(groups, w.tokens.keep)
    slot = {"clip": 0, "dinov2": 1} if layout == "interleaved" else {live[0]: 0}
    step = 2 if layout == "interleaved" else 1
    assert kept == sorted(p + step * i + slot[e] for e in live for i in ref[e])


# --- llm ------------------------------------------------------------------------------------

def test_llm_stage_prunes_after_layer_k_with_the_attention_ranking(load, msg):
    w = load("imof_13b_keep25_llm")  # K = 2 of 4 layers
    assert w.tokens.layer == 2
    inputs = w.build_inputs(msg)
    out, seen = _probe(w, lambda: _generate(w, inputs, tokens=True))
    s = inputs["input_ids"].shape[1] - 1 + 2 * N
    p = _image_start(inputs)
    visual = list(range(p, p + 2 * N))
    kept = w.token_report["kept"]
    pruned = 2 * N - len(kept)
    assert w.token_report["visual"] == visual and len(kept) == math.ceil(2 * N / 4)
    keep_pos = [q for q in range(s) if q not in set(visual) - set(kept)]
    assert [seen[i][0][0] for i in range(4)] == [s, s, s - pruned, s - pruned]
    for i in (2, 3):
        assert seen[i][0][1] == keep_pos  # pruned positions never reach layers after K
        assert all(n == 1 for n, _ in seen[i][1:])
    steps = out.sequences.shape[1] - inputs["input_ids"].shape[1]
    cache = out.past_key_values  # the fork's generate under 4.44: legacy tuples (layer -> (keys, values))
    lengths = [(cache.key_cache[i] if hasattr(cache, "key_cache") else cache[i][0]).shape[-2] for i in range(4)]
    assert lengths == [s + steps - 1] * 2 + [s - pruned + steps - 1] * 2
    # Independent reference: eager attention weights of layer K-1 = 1 in the unpruned model.
    model = w.model
    with torch.inference_mode():
        _i, _m, _c, embeds, _l = model.prepare_inputs_labels_for_multimodal_withdino(
            inputs["input_ids"], None, None, None, inputs["images"])
        att = model.get_model()(inputs_embeds=embeds, output_attentions=True).attentions[1]
    score = att[0, :, s - 1, visual].double().mean(0)
    ref = sorted(visual[i] for i in sorted(range(2 * N), key=lambda i: (-float(score[i]), i))[:len(kept)])
    assert kept == ref


def test_refusals_are_clear(load):
    from vlmeval_encred.registry import RegistryError, parse_entry_name
    from vlmeval_encred.tokens import TokenError

    with pytest.raises(RegistryError, match="no encoder is left to score tokens"):
        parse_entry_name("imof_13b_mask_clip_dinov2_keep25")
    assert parse_entry_name("imof_13b_mask_clip_dinov2_keep25_llm").tokens.stage == "llm"
    with pytest.raises(TokenError, match="K=4 must be between 1 and 3"):
        load("imof_13b_keep25_llm4")
