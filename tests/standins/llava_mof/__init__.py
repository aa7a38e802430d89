"""Tiny stand-ins of the MMVP repository's LLaVA fork (github tsb0601/MMVP, LLaVA/llava); see each module."""
