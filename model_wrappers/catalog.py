"""The base models this package registers with VLMEvalKit: one ``register_base`` call each.

Adding a checkpoint of a supported family is one entry here.  Encoder short
names are listed in the order the checkpoint's own config lists its towers;
the family adapter re-reads that order from the loaded model and refuses to
run if they disagree.
"""

from vlmeval_encred.registry import BaseModelSpec, register_base
from vlmeval_encred.upstream import UpstreamRepo, register_source

# The upstream repositories the families' real code comes from (a user's clone, registered with
# `encred sources add NAME PATH`), and the commits our real-code tests pin.
register_source(UpstreamRepo("eagle", "https://github.com/NVlabs/EAGLE", "fef95f103b5e9899acbbe2c237e5b99147ab7e8e",
                             package="eagle", used_by="eagle1"))
register_source(UpstreamRepo("cambrian", "https://github.com/cambrian-mllm/cambrian",
                             "539ffc3254bba004e5d012b65c0ad6cb308897c5", package="cambrian", used_by="cambrian"))
register_source(UpstreamRepo("deepseek_vl", "https://github.com/deepseek-ai/DeepSeek-VL",
                             "681bffb4519856ad27cc17531aacde31ddf6f1a7", package="deepseek_vl", used_by="deepseek_vl"))
register_source(UpstreamRepo("mmvp", "https://github.com/tsb0601/MMVP", "763500597e65c3446f09047837ceda76f4e264bf",
                             package="llava", import_root="LLaVA", used_by="imof"))
# NVIDIA's vision code of Eagle2-9B (multi-backbone tower, SigLIP and ConvNeXt towers, config class) as
# kept under Eagle2_5/eaglevl/model/multimodal_encoder; the chat model itself is not in any public repository.
register_source(UpstreamRepo("eagle2", "https://github.com/NVlabs/Eagle", "783f656d127ee498137b5ff52603ce36c292d317",
                             package="eaglevl", import_root="Eagle2_5", used_by="eagle2"))
register_source(UpstreamRepo("dinov2", "https://github.com/facebookresearch/dinov2",
                             "b8931f7bf91576930313be2c6d6af376033b35f0", package="dinov2", used_by="imof"))

_EAGLE1 = "vlmeval_encred.model_wrappers.eagle1:EncredEagle"
_EAGLE_X5 = ("clip", "convnext", "sam", "eva02", "pix2struct")
# Eagle-X4: upstream's X4 scripts build mm_vision_tower "clip-448;convnext-1024;det-1024;pix2struct-1024"
# (det = EVA-02); tests/test_eagle1_catalog.py derives both orders from those scripts.
_EAGLE_X4 = ("clip", "convnext", "eva02", "pix2struct")
# EAGLE's towers need transformers 4.37-4.44 (HR-CLIP uses CLIPVisionModel.vision_model, gone in 5.x);
# upstream's requirements.txt pins 4.37.2.  Tested recipe: vlmeval_encred/recipes/eagle1.txt.
_EAGLE1_REQUIRES = {"transformers": ">=4.37,<4.45"}

for _name, _ckpt, _encs in [
    ("eagle_x5", "NVEagle/Eagle-X5-7B", _EAGLE_X5),
    ("eagle_x5_13b", "NVEagle/Eagle-X5-13B", _EAGLE_X5),
    ("eagle_x4_8b_plus", "NVEagle/Eagle-X4-8B-Plus", _EAGLE_X4),
    ("eagle_x4_13b_plus", "NVEagle/Eagle-X4-13B-Plus", _EAGLE_X4),
]:
    register_base(BaseModelSpec(
        name=_name, family="eagle1", checkpoint=_ckpt, encoders=_encs, wrapper=_EAGLE1,
        modes=("zero", "drop"), description="Eagle-1: channel concatenation of 1024-token towers",
        requires=_EAGLE1_REQUIRES, recipe="eagle1"))

# transformers' DeepseekVLHybrid: 4.57 returns bare tensors from get_*_image_features (the adapter
# needs 5.x's model outputs); `encred sweep` passes mm_encoder_outputs to generate(), first in 5.18.
_HF_DSVL = {"transformers": ">=5.18"}
register_base(BaseModelSpec(
    name="deepseek_vl_7b_hf", family="deepseek_vl_hf",
    checkpoint="deepseek-community/deepseek-vl-7b-chat", encoders=("siglip", "sam"),
    wrapper="vlmeval_encred.model_wrappers.deepseek_vl_hf:EncredDeepseekVLHybrid", requires=_HF_DSVL,
    description="DeepSeek-VL 7B via transformers' DeepseekVLHybridForConditionalGeneration"))

# Two masking points (docs/masking.md): `zero` (the tower's output before its aligner branch,
# the authors' description) and `drop` (the branch removed at the concatenation).  Each has its
# own base so both are plain VLMEvalKit names and a report never mixes them in one CUR.
for _name, _modes, _what in [("deepseek_vl_7b_orig", ("zero", "drop"), "zero before the aligner branch"),
                             ("deepseek_vl_7b_orig_drop", ("drop", "zero"), "aligner branch removed")]:
    register_base(BaseModelSpec(
        name=_name, family="deepseek_vl",
        checkpoint="deepseek-ai/deepseek-vl-7b-chat", encoders=("siglip", "sam"),
        wrapper="vlmeval_encred.model_wrappers.deepseek_vl:EncredDeepSeekVL", modes=_modes,
        # its pyproject asks >=4.38.2; under 5.x its config classes fail to import
        requires={"transformers": ">=4.38.2,<5"}, recipe="deepseek_vl",
        description=f"DeepSeek-VL 7B via the original deepseek_vl package (HybridVisionTower); mask: {_what}"))

# A tiny randomly initialised DeepseekVLHybrid, built offline on first use into the
# cache (see vlmeval_encred.tiny_models): the CPU smoke model of the test suite.
register_base(BaseModelSpec(
    name="deepseek_vl_tiny_random", family="deepseek_vl_hf",
    checkpoint="encred-tiny:deepseek-vl-hybrid", encoders=("siglip", "sam"),
    wrapper="vlmeval_encred.model_wrappers.deepseek_vl_hf:EncredDeepseekVLHybrid",
    loader={"max_new_tokens": 8, "torch_dtype": "float32", "device": "cpu"}, requires=_HF_DSVL,
    description="Random tiny DeepseekVLHybrid (CPU smoke tests only; answers are noise)"))

# Cambrian-1 (SVA connector); tower order = the checkpoint's mm_vision_tower_aux_list,
# re-read and checked at load time by model_wrappers/cambrian.py.
# conv_mode: the template each checkpoint was trained with (upstream inference.py); VLMEvalKit's
# Cambrian wrapper would give phi3-3b 'chatml_direct'.  Upstream pins transformers 4.37.
_CAMBRIAN = "vlmeval_encred.model_wrappers.cambrian:EncredCambrian"
for _name, _ckpt, _conv in [("cambrian1_phi3_3b", "nyu-visionx/cambrian-phi3-3b", "phi3"),
                            ("cambrian1_8b", "nyu-visionx/cambrian-8b", "llama_3"),
                            ("cambrian1_13b", "nyu-visionx/cambrian-13b", "vicuna_v1"),
                            ("cambrian1_34b", "nyu-visionx/cambrian-34b", "chatml_direct")]:
    register_base(BaseModelSpec(
        name=_name, family="cambrian", checkpoint=_ckpt, encoders=("siglip", "clip", "dinov2", "convnext"),
        wrapper=_CAMBRIAN, modes=("zero", "zero_context", "drop"), loader={"conv_mode": _conv},
        requires={"transformers": ">=4.37,<4.38"}, recipe="cambrian",
        description="Cambrian-1: Spatial Vision Aggregator over four towers (connector and in-LLM)"))

register_base(BaseModelSpec(
    name="imof_13b", family="imof", checkpoint="MMVP/MoF_Models", encoders=("clip", "dinov2"),
    wrapper="vlmeval_encred.model_wrappers.imof:EncredIMoF", modes=("zero", "drop"),
    requires={"transformers": ">=4.37,<4.45"}, recipe="imof",
    description="I-MoF (MMVP LLaVA-1.5-13B fork): CLIP and DINOv2 tokens interleaved, own projectors"))

# Eagle2: tiling as in NVIDIA's Eagle2 VLMEvalKit wrapper (Eagle2Chat.set_max_num / generate_v2):
# area-aware tile choice, max_num by dataset (first row whose names occur in the dataset name,
# else 6), images doubled (bilinear) before tiling except on the listed datasets.
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
    wrapper="vlmeval_encred.model_wrappers.eagle2:EncredEagle2", modes=("zero",), loader=_EAGLE2_TILING,
    requires={"transformers": ">=4.37.2,<=4.39.2"}, recipe="eagle2",
    description="Eagle2-9B: SigLIP and ConvNeXt channel concat, pixel shuffle, LayerNorm-first MLP"))

# The CPU demo model: three towers whose roles are planted by construction (see docs/demo.md);
# weights ship inside the package and load through the same from-directory loader as any checkpoint.
register_base(BaseModelSpec(
    name="encred_tiny", family="encred_tiny", checkpoint="encred-demo:default",
    encoders=("lowres", "hires", "colour"),
    wrapper="vlmeval_encred.model_wrappers.encred_tiny:EncredTiny",
    loader={"max_new_tokens": 2}, modes=("zero", "drop"),
    description="CPU demo: low-res conv, high-res ink-map patch encoder, colour histogram (trained, 2 MB)"))
