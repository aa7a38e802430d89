"""The CPU demo model: one base, and the `demo` hook that tells `encred demo` which base to run.

Three towers whose roles are planted by construction (see docs/demo.md); weights ship inside
the package and load through the same from-directory loader as any checkpoint.
"""

from vlmeval_encred.registry import BaseModelSpec, register_base
from vlmeval_encred.families import provide

_WRAPPER = "vlmeval_encred.model_wrappers.encred_tiny.modeling:EncredTiny"
provide("demo", "encred_tiny", _WRAPPER)
register_base(BaseModelSpec(
    name="encred_tiny", family="encred_tiny", checkpoint="encred-demo:default",
    encoders=("lowres", "hires", "colour"),
    wrapper=_WRAPPER,
    loader={"max_new_tokens": 2}, modes=("zero", "drop"),
    token_stages=("fusion", "llm"), llm_layer=1,  # its language model has 2 decoder layers
    description="CPU demo: low-res conv, high-res ink-map patch encoder, colour histogram (trained, 2 MB)"))
