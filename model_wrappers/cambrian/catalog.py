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

_CAMBRIAN = "vlmeval_encred.model_wrappers.cambrian.modeling:EncredCambrian"
for _name, _ckpt, _conv in [("cambrian1_phi3_3b", "nyu-visionx/cambrian-phi3-3b", "phi3"),
                            ("cambrian1_8b", "nyu-visionx/cambrian-8b", "llama_3"),
                            ("cambrian1_13b", "nyu-visionx/cambrian-13b", "vicuna_v1"),
                            ("cambrian1_34b", "nyu-visionx/cambrian-34b", "chatml_direct")]:
    register_base(BaseModelSpec(
        name=_name, family="cambrian", checkpoint=_ckpt, encoders=("siglip", "clip", "dinov2", "convnext"),
        wrapper=_CAMBRIAN, modes=("zero", "zero_context", "drop"), loader={"conv_mode": _conv},
        requires={"transformers": ">=4.37,<4.38"}, recipe="cambrian",
        description="Cambrian-1: Spatial Vision Aggregator over four towers (connector and in-LLM)"))
