"""Token budgets (docs/tokens.md) for Cambrian-1: both stages are refused, and why.

The visual tokens Cambrian-1's LLM receives are the SVA's query grid (h rows of w queries
and a newline token).  Its LLM runs the SVA again after some decoder layers; each of those
reads the hidden states at the fixed positions ``config.image_position + [0, h (w + 1))`` as
that grid.  The realcode test below shows it on upstream's own classes (tiny config, in-LLM
SVA after layers 0 and 2 of 4): in the prompt forward exactly the query positions of the
grid are rewritten after exactly those layers, and a sequence one visual token shorter (what
either stage would give those layers) gets a newline token rewritten as if it were a query.
"""

from __future__ import annotations

import pytest

from vlmeval_encred.registry import RegistryError, bases, entries, parse_entry_name

CAMBRIAN = [b.name for b in bases("cambrian")]


@pytest.mark.envs("base", "cambrian")
@pytest.mark.parametrize("suffix,stage", [("_keep50", "fusion"), ("_mask_clip_keep25", "fusion"),
                                          ("_keep25_llm", "llm"), ("_keep75_llm3", "llm")])
def test_every_cambrian_base_refuses_both_stages_with_the_reason(suffix, stage):
    from vlmeval_encred.model_wrappers.cambrian.catalog import TOKEN_REFUSALS

    assert len(CAMBRIAN) == 4
    for base in CAMBRIAN:
        with pytest.raises(RegistryError) as err:
            parse_entry_name(base + suffix)
        assert f"the {stage} token stage is not defined for family cambrian" in str(err.value)
        assert TOKEN_REFUSALS[stage] in str(err.value)
    assert not [e for b in CAMBRIAN for e in entries(base=b, tokens=True) if e.tokens is not None]


@pytest.mark.envs("base", "cambrian")
def test_the_wrapper_refuses_a_tokens_keyword_with_the_reason():
    """A VLMEvalKit config can pass ``tokens=...`` to the wrapper without a registry name."""
    from vlmeval_encred.model_wrappers.cambrian.catalog import TOKEN_REFUSALS
    from vlmeval_encred.model_wrappers.cambrian.modeling import refuse_tokens
    from vlmeval_encred.tokens import TokenError

    refuse_tokens({"max_new_tokens": 4})  # no budget: nothing to refuse
    with pytest.raises(TokenError, match="fusion token stage is not defined for family cambrian") as err:
        refuse_tokens({"tokens": {"keep": 25}, "encred_base": "cambrian1_8b"})
    assert TOKEN_REFUSALS["fusion"] in str(err.value)
    with pytest.raises(TokenError, match="llm token stage is not defined"):
        refuse_tokens({"tokens": {"keep": 50, "stage": "llm", "layer": 3}})


def _sva_rewrites(model, embeds, sva):
    """Per decoder layer: the sequence positions whose hidden state changes between the layer's
    output and the next layer's input (what the in-LLM SVA after that layer rewrote), in one
    prompt forward with the SVA inputs set as upstream's generate() sets them."""
    import torch

    from vlmeval_encred.model_wrappers.cambrian.modeling import _SVA_ATTRS

    layers = model.get_model().layers
    after, before = {}, {}
    hooks = [layer.register_forward_hook(lambda m, a, out, i=i: after.__setitem__(i, out[0].clone()))
             for i, layer in enumerate(layers)]
    hooks += [layer.register_forward_pre_hook(lambda m, a, kw, i=i: before.__setitem__(i, (a[0] if a else kw["hidden_states"]).clone()),
                                              with_kwargs=True) for i, layer in enumerate(layers)]
    for name, value in zip(_SVA_ATTRS, sva):
        setattr(model, name, value)
    try:
        with torch.inference_mode():
            model(inputs_embeds=embeds, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
        for name in _SVA_ATTRS:
            delattr(model, name)
    return {i: set((before[i + 1] != after[i]).any(-1)[0].nonzero()[:, 0].tolist()) for i in range(len(layers) - 1)}


@pytest.mark.envs("cambrian")
@pytest.mark.realcode("cambrian")
def test_the_in_llm_sva_reads_the_query_grid_at_fixed_positions(tmp_path):
    import torch

    from conftest import real_selftest

    selftest = real_selftest("cambrian")
    model = selftest.build(tmp_path)
    cfg = model.config
    assert cfg.connector_only is False  # as in upstream's 8b/13b/34b training scripts
    ids, images, sizes = selftest.inputs()
    with torch.inference_mode():
        out = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, images, image_sizes=sizes)
    embeds, sva = out[4], out[6:10]
    (h, w), = out[8]
    ip = cfg.image_position
    assert h < w  # the wide image's grid lost rows when unpadded: the span depends on the image
    grid = {ip + r * (w + 1) + c for r in range(h) for c in range(w)}
    newlines = [ip + r * (w + 1) + w for r in range(h)]
    sva_layers = {cfg.start_of_vision_sampler_layers + j * cfg.stride_of_vision_sampler_layers
                  for j in range(cfg.num_of_vision_sampler_layers)}
    assert sva_layers == {0, 2}

    full = _sva_rewrites(model, embeds, sva)
    for i, changed in full.items():
        assert changed == (grid if i in sva_layers else set()), i

    # One visual token removed (the second query), as a pruned prompt would reach those layers:
    # the rows shift left, row 0's newline token lands in a query slot and is rewritten.
    cut = ip + 1
    short = torch.cat([embeds[:, :cut], embeds[:, cut + 1:]], 1)
    original = {p: (p if p < cut else p + 1) for p in range(short.shape[1])}
    for i in sva_layers:
        rewritten = {original[p] for p in _sva_rewrites(model, short, sva)[i]}
        assert newlines[0] in rewritten and rewritten != grid - {cut}
