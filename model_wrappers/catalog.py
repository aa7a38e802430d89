"""The base models this package registers with VLMEvalKit: one ``register_base`` call each.

Adding a checkpoint of a supported family is one entry here.  Encoder short
names are listed in the order the checkpoint's own config lists its towers;
the family adapter re-reads that order from the loaded model and refuses to
run if they disagree.
"""

from vlmeval_encred.registry import BaseModelSpec, register_base

_EAGLE1 = "vlmeval_encred.model_wrappers.eagle1:EncredEagle"
_EAGLE_X5 = ("clip", "convnext", "sam", "eva02", "pix2struct")
# Eagle-X4 towers per the authors' shape table; verified against mm_vision_tower at load time.
_EAGLE_X4 = ("clip", "convnext", "pix2struct", "eva02")

for _name, _ckpt, _encs in [
    ("eagle_x5", "NVEagle/Eagle-X5-7B", _EAGLE_X5),
    ("eagle_x5_13b", "NVEagle/Eagle-X5-13B", _EAGLE_X5),
    ("eagle_x4_8b_plus", "NVEagle/Eagle-X4-8B-Plus", _EAGLE_X4),
    ("eagle_x4_13b_plus", "NVEagle/Eagle-X4-13B-Plus", _EAGLE_X4),
]:
    register_base(BaseModelSpec(
        name=_name, family="eagle1", checkpoint=_ckpt, encoders=_encs, wrapper=_EAGLE1,
        modes=("zero", "drop"), description="Eagle-1: channel concatenation of 1024-token towers"))

register_base(BaseModelSpec(
    name="deepseek_vl_7b_hf", family="deepseek_vl_hf",
    checkpoint="deepseek-community/deepseek-vl-7b-chat", encoders=("siglip", "sam"),
    wrapper="vlmeval_encred.model_wrappers.deepseek_vl_hf:EncredDeepseekVLHybrid",
    description="DeepSeek-VL 7B via transformers' DeepseekVLHybridForConditionalGeneration"))

register_base(BaseModelSpec(
    name="deepseek_vl_7b_orig", family="deepseek_vl",
    checkpoint="deepseek-ai/deepseek-vl-7b-chat", encoders=("siglip", "sam"),
    wrapper="vlmeval_encred.model_wrappers.deepseek_vl:EncredDeepSeekVL",
    description="DeepSeek-VL 7B via the original deepseek_vl package (HybridVisionTower)"))

# A tiny randomly initialised DeepseekVLHybrid, built offline on first use into the
# cache (see vlmeval_encred.tiny_models): the CPU smoke model of the test suite.
register_base(BaseModelSpec(
    name="deepseek_vl_tiny_random", family="deepseek_vl_hf",
    checkpoint="encred-tiny:deepseek-vl-hybrid", encoders=("siglip", "sam"),
    wrapper="vlmeval_encred.model_wrappers.deepseek_vl_hf:EncredDeepseekVLHybrid",
    loader={"max_new_tokens": 8, "torch_dtype": "float32", "device": "cpu"},
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
    description="I-MoF (MMVP LLaVA-1.5-13B fork): CLIP and DINOv2 tokens interleaved, own projectors"))

register_base(BaseModelSpec(
    name="eagle2_9b", family="eagle2", checkpoint="nvidia/Eagle2-9B", encoders=("siglip", "convnext"),
    wrapper="vlmeval_encred.model_wrappers.eagle2:EncredEagle2", modes=("zero",),
    description="Eagle2-9B: SigLIP and ConvNeXt channel concat, pixel shuffle, LayerNorm-first MLP"))

# The CPU demo model: three towers whose roles are planted by construction (see docs/demo.md);
# weights ship inside the package and load through the same from-directory loader as any checkpoint.
register_base(BaseModelSpec(
    name="encred_tiny", family="encred_tiny", checkpoint="encred-demo:default",
    encoders=("lowres", "hires", "colour"),
    wrapper="vlmeval_encred.model_wrappers.encred_tiny:EncredTiny",
    loader={"max_new_tokens": 2}, modes=("zero", "drop"),
    description="CPU demo: low-res conv, high-res ink-map patch encoder, colour histogram (trained, 2 MB)"))
