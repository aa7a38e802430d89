"""Stand-in of ``eagle/model/__init__.py``."""

from .language_model.eagle_llama import EagleConfig, EagleLlamaForCausalLM  # noqa: F401
