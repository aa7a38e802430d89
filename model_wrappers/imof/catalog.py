"""I-MoF (the MMVP repository's LLaVA-1.5 fork): base model, upstream repositories, self-test.

Two upstream repositories: the MMVP fork (its ``LLaVA/llava`` package) and DINOv2 (torch.hub).
"""

from vlmeval_encred.registry import BaseModelSpec, register_base
from vlmeval_encred.families import provide
from vlmeval_encred.upstream import UpstreamRepo, register_source

register_source(UpstreamRepo("mmvp", "https://github.com/tsb0601/MMVP", "763500597e65c3446f09047837ceda76f4e264bf",
                             package="llava", import_root="LLaVA", used_by="imof"))
register_source(UpstreamRepo("dinov2", "https://github.com/facebookresearch/dinov2",
                             "b8931f7bf91576930313be2c6d6af376033b35f0", package="dinov2", used_by="imof"))
provide("selftest", "imof", "vlmeval_encred.model_wrappers.imof.selftest:SELFTEST")

register_base(BaseModelSpec(
    name="imof_13b", family="imof", checkpoint="MMVP/MoF_Models", encoders=("clip", "dinov2"),
    wrapper="vlmeval_encred.model_wrappers.imof.modeling:EncredIMoF", modes=("zero", "drop"),
    requires={"transformers": ">=4.37,<4.45"}, recipe="imof", token_stages=("fusion", "llm"),
    description="I-MoF (MMVP LLaVA-1.5-13B fork): CLIP and DINOv2 tokens interleaved, own projectors"))
