"""DeepSeek-VL through the original deepseek_vl package: base models, upstream repository, self-test.

Two masking points (docs/masking.md): `zero` (the tower's output before its aligner branch,
the authors' description) and `drop` (the branch removed at the concatenation).  Each has its
own base so both are plain VLMEvalKit names and a report never mixes them in one CUR.
"""

from vlmeval_encred.registry import BaseModelSpec, register_base
from vlmeval_encred.families import provide
from vlmeval_encred.upstream import UpstreamRepo, register_source

register_source(UpstreamRepo("deepseek_vl", "https://github.com/deepseek-ai/DeepSeek-VL",
                             "681bffb4519856ad27cc17531aacde31ddf6f1a7", package="deepseek_vl", used_by="deepseek_vl"))
provide("selftest", "deepseek_vl", "vlmeval_encred.model_wrappers.deepseek_vl.selftest:SELFTEST")

for _name, _modes, _what in [("deepseek_vl_7b_orig", ("zero", "drop"), "zero before the aligner branch"),
                             ("deepseek_vl_7b_orig_drop", ("drop", "zero"), "aligner branch removed")]:
    register_base(BaseModelSpec(
        name=_name, family="deepseek_vl",
        checkpoint="deepseek-ai/deepseek-vl-7b-chat", encoders=("siglip", "sam"),
        wrapper="vlmeval_encred.model_wrappers.deepseek_vl.modeling:EncredDeepSeekVL", modes=_modes,
        # its pyproject asks >=4.38.2; under 5.x its config classes fail to import
        requires={"transformers": ">=4.38.2,<5"}, recipe="deepseek_vl", token_stages=("fusion", "llm"),
        description=f"DeepSeek-VL 7B via the original deepseek_vl package (HybridVisionTower); mask: {_what}"))
