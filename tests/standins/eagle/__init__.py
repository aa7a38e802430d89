"""Tiny stand-in of the ``eagle`` package of github NVlabs/EAGLE (Eagle-1, ``eagle/__init__.py``).

Not shipped; used by tests/test_eagle1.py only.  Every module mirrors the
upstream file of the same path: same class, function and attribute names and
the same forward contracts (tensor shapes, layouts, which attribute a caller
reads), with tiny randomly initialised towers instead of the pretrained
CLIP-L/ConvNeXt-XXL/SAM-L/EVA-02-L/Pix2Struct-L, so that VLMEvalKit's own
``vlmeval.vlm.eagle_x.Eagle`` runs against it unchanged.  The code is written
anew; upstream is only mirrored in structure.

Deliberate differences (all outside what the masking adapter or VLMEvalKit
touch) are listed in each module's docstring.
"""

from .model import EagleLlamaForCausalLM  # noqa: F401  (upstream re-exports it here too)
