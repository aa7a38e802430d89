"""vlmeval-encred: what does each vision encoder of a multi-encoder MLLM contribute?

This package is imported by the start-up hook (``vlmeval_encred_hook.pth``)
only when VLMEvalKit itself is imported, so this module must stay free of
heavy imports: no torch, no vlmeval, no pandas at package import time.
"""

__version__ = "0.1.0"

ENV_DISABLE = "VLMEVAL_ENCRED_DISABLE"
"""Set to 1/true/yes to switch the VLMEvalKit registration hook off."""
