"""Mirrors ``deepseek_vl/models/__init__.py``: the processor and the model class."""

from .modeling_vlm import MultiModalityCausalLM
from .processing_vlm import VLChatProcessor

__all__ = ["MultiModalityCausalLM", "VLChatProcessor"]
