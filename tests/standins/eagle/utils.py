"""Stand-in of ``eagle/utils.py``: only ``disable_torch_init``, which VLMEvalKit imports.

Upstream replaces ``reset_parameters`` of Linear and LayerNorm by a no-op for
fast loading; the stand-in does the same (it is never called by VLMEvalKit's
wrapper, only imported).
"""

from __future__ import annotations


def disable_torch_init() -> None:
    """Skip torch's default initialisation of Linear/LayerNorm (weights come from the checkpoint)."""
    import torch

    setattr(torch.nn.Linear, "reset_parameters", lambda self: None)
    setattr(torch.nn.LayerNorm, "reset_parameters", lambda self: None)
