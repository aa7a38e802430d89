"""Tiny stand-ins of the cambrian package (github cambrian-mllm/cambrian); see each module."""
