"""Cambrian-1's base models, upstream repository and self-test.

Tower order = the checkpoint's mm_vision_tower_aux_list, re-read and checked at load time by
modeling.py.  conv_mode: the template each checkpoint was trained with (upstream inference.py);
VLMEvalKit's Cambrian wrapper would give phi3-3b 'chatml_direct'.  Upstream pins transformers 4.37.
"""

from vlmeval_encred.registry import BaseModelSpec, register_base
from vlmeval_encred.families import provide
from vlmeval_encred.upstream import UpstreamRepo, register_source

register_source(UpstreamRepo("cambrian", "https://github.com/cambrian-mllm/cambrian",
                             "539ffc3254bba004e5d012b65c0ad6cb308897c5", package="cambrian", used_by="cambrian"))
provide("selftest", "cambrian", "vlmeval_encred.model_wrappers.cambrian.selftest:SELFTEST")

# Token budgets (docs/tokens.md): neither stage can be defined exactly.  Cambrian-1 runs the SVA
# again inside its LLM (upstream's training scripts for 8b/13b/34b: connector_only False, SVA after
# layers 0, 3, ..., 27 of 32 / 0, 4, ..., 36 of 40 / 0, 7, ..., 56 of 60), and those layers read
# the hidden states at fixed positions as the query grid (tests/test_tokens_cambrian.py shows it).
TOKEN_REFUSALS = {
    "fusion": "the visual tokens are the SVA's query grid, which the SVA layers inside the LLM read again at "
              "fixed positions (config.image_position + h x (w+1), one query per grid cell, each cross-attending "
              "its own window of every encoder): removing query tokens would shift text tokens into that grid",
    "llm": "the SVA layers inside the LLM (after every 3rd/4th/7th layer up to layer 27 of 32, 36 of 40, 56 of "
           "60) read the visual tokens at fixed positions of the sequence, so it cannot be shortened before the "
           "last of them; pruning after it would leave only the last 2-3 layers",
}

_CAMBRIAN = "vlmeval_encred.model_wrappers.cambrian.modeling:EncredCambrian"
for _name, _ckpt, _conv in [("cambrian1_phi3_3b", "nyu-visionx/cambrian-phi3-3b", "phi3"),
                            ("cambrian1_8b", "nyu-visionx/cambrian-8b", "llama_3"),
                            ("cambrian1_13b", "nyu-visionx/cambrian-13b", "vicuna_v1"),
                            ("cambrian1_34b", "nyu-visionx/cambrian-34b", "chatml_direct")]:
    register_base(BaseModelSpec(
        name=_name, family="cambrian", checkpoint=_ckpt, encoders=("siglip", "clip", "dinov2", "convnext"),
        wrapper=_CAMBRIAN, modes=("zero", "zero_context", "drop"), loader={"conv_mode": _conv},
        requires={"transformers": ">=4.37,<4.38"}, recipe="cambrian", token_refusals=TOKEN_REFUSALS,
        description="Cambrian-1: Spatial Vision Aggregator over four towers (connector and in-LLM)"))
