"""Eagle-1's base models, upstream repository and self-tests (read by the registry's folder scan).

Adding a checkpoint of this family is one entry here.  Encoder short names are listed in the
order the checkpoint's own config lists its towers; the adapter (modeling.py) re-reads that
order from the loaded model and refuses to run if they disagree.
"""

from vlmeval_encred.registry import BaseModelSpec, register_base
from vlmeval_encred.families import provide
from vlmeval_encred.upstream import UpstreamRepo, register_source

register_source(UpstreamRepo("eagle", "https://github.com/NVlabs/EAGLE", "fef95f103b5e9899acbbe2c237e5b99147ab7e8e",
                             package="eagle", used_by="eagle1"))
# Two tower layouts, one self-test each (X5 and X4).
provide("selftest", "eagle1", "vlmeval_encred.model_wrappers.eagle1.selftest:SELFTEST")
provide("selftest", "eagle1_x4", "vlmeval_encred.model_wrappers.eagle1.selftest:SELFTEST_X4")

_EAGLE1 = "vlmeval_encred.model_wrappers.eagle1.modeling:EncredEagle"
_EAGLE_X5 = ("clip", "convnext", "sam", "eva02", "pix2struct")
# Eagle-X4: upstream's X4 scripts build mm_vision_tower "clip-448;convnext-1024;det-1024;pix2struct-1024"
# (det = EVA-02); tests/test_eagle1_catalog.py derives both orders from those scripts.
_EAGLE_X4 = ("clip", "convnext", "eva02", "pix2struct")
# EAGLE's towers need transformers 4.37-4.44 (HR-CLIP uses CLIPVisionModel.vision_model, gone in 5.x);
# upstream's requirements.txt pins 4.37.2.  Tested recipe: recipe.txt beside this file.
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
        requires=_EAGLE1_REQUIRES, recipe="eagle1",
        token_stages=("fusion", "llm")))  # tokens.py; llm_layer: the default K = 2 (32/40-layer LLaMAs)
