"""Eagle2's base model (nvidia/Eagle2-9B, remote code from the Hub) and the upstream repository that
holds NVIDIA's vision code of it (the chat model itself is in no public repository).

Tiling as in NVIDIA's Eagle2 VLMEvalKit wrapper (Eagle2Chat.set_max_num / generate_v2):
area-aware tile choice, max_num by dataset (first row whose names occur in the dataset name,
else 6), images doubled (bilinear) before tiling except on the listed datasets.
"""

from vlmeval_encred.families import provide
from vlmeval_encred.registry import BaseModelSpec, register_base
from vlmeval_encred.upstream import UpstreamRepo, register_source

# NVIDIA's vision code of Eagle2-9B (multi-backbone tower, SigLIP and ConvNeXt towers, config class) as
# kept under Eagle2_5/eaglevl/model/multimodal_encoder.
register_source(UpstreamRepo("eagle2", "https://github.com/NVlabs/Eagle", "783f656d127ee498137b5ff52603ce36c292d317",
                             package="eaglevl", import_root="Eagle2_5", used_by="eagle2"))
provide("selftest", "eagle2", "vlmeval_encred.model_wrappers.eagle2.selftest:SELFTEST")

_EAGLE2_TILING = {
    "tiling": "nvidia", "max_num": 6,
    "max_num_by_dataset": [
        [12, ["ChartQA_TEST", "MMMU_DEV_VAL", "MMMU_Pro", "MMMUPro", "MMMU_TEST", "MME-RealWorld", "VCR_EN",
              "VCR_ZH", "OCRVQA"]],
        [18, ["DocVQA_VAL", "DocVQA_TEST", "DUDE", "MMLongBench_DOC", "SLIDEVQA"]],
        [24, ["InfoVQA_VAL", "InfoVQA_TEST", "OCRBench", "HRBench4K", "HRBench8K"]],
    ],
    "no_upscale_datasets": ["MathVista_MINI", "AI2D_TEST", "InfoVQA_VAL", "InfoVQA_TEST", "Video-MME"],
}
register_base(BaseModelSpec(
    name="eagle2_9b", family="eagle2", checkpoint="nvidia/Eagle2-9B", encoders=("siglip", "convnext"),
    wrapper="vlmeval_encred.model_wrappers.eagle2.modeling:EncredEagle2", modes=("zero",), loader=_EAGLE2_TILING,
    requires={"transformers": ">=4.37.2,<=4.39.2"}, recipe="eagle2",
    token_stages=("fusion", "llm"),  # per tile; docs/tokens.md (K default 2 of Qwen2.5-7B's 28 layers)
    description="Eagle2-9B: SigLIP and ConvNeXt channel concat, pixel shuffle, LayerNorm-first MLP"))
