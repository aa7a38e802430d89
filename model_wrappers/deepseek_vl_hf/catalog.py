"""DeepSeek-VL through transformers' DeepseekVLHybrid: base models and the tiny CPU smoke checkpoint.

No recipe: this family runs in the base environment (transformers 5.x).
"""

from vlmeval_encred.registry import BaseModelSpec, register_base
from vlmeval_encred.families import provide

# transformers' DeepseekVLHybrid: 4.57 returns bare tensors from get_*_image_features (the adapter
# needs 5.x's model outputs); `encred sweep` passes mm_encoder_outputs to generate(), first in 5.18.
_HF_DSVL = {"transformers": ">=5.18"}
_WRAPPER = "vlmeval_encred.model_wrappers.deepseek_vl_hf.modeling:EncredDeepseekVLHybrid"
register_base(BaseModelSpec(
    name="deepseek_vl_7b_hf", family="deepseek_vl_hf",
    checkpoint="deepseek-community/deepseek-vl-7b-chat", encoders=("siglip", "sam"),
    wrapper=_WRAPPER, requires=_HF_DSVL, token_stages=("fusion", "llm"),
    description="DeepSeek-VL 7B via transformers' DeepseekVLHybridForConditionalGeneration"))

# A tiny randomly initialised DeepseekVLHybrid, built offline on first use into the cache
# (tiny.py, through vlmeval_encred.tiny_models): the CPU smoke model of the test suite.
provide("tiny", "deepseek-vl-hybrid", "vlmeval_encred.model_wrappers.deepseek_vl_hf.tiny:RECIPE")
register_base(BaseModelSpec(
    name="deepseek_vl_tiny_random", family="deepseek_vl_hf",
    checkpoint="encred-tiny:deepseek-vl-hybrid", encoders=("siglip", "sam"),
    wrapper=_WRAPPER,
    loader={"max_new_tokens": 8, "torch_dtype": "float32", "device": "cpu"}, requires=_HF_DSVL,
    token_stages=("fusion", "llm"), llm_layer=1,  # its language model has 2 decoder layers
    description="Random tiny DeepseekVLHybrid (CPU smoke tests only; answers are noise)"))
