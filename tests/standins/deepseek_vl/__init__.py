"""Tiny stand-in for the ``deepseek_vl`` package of github.com/deepseek-ai/DeepSeek-VL (tests only).

The real package is not pip-installable.  This mirrors the module paths, class
names, attribute names and forward contracts that vlmeval-encred and
VLMEvalKit's ``DeepSeekVL`` wrapper touch, with tiny towers instead of SAM-B and
SigLIP-L, so the masking code can be tested on the CPU.  It is written for this
project (no upstream code is copied).  Tests can tell it from the real package
by ``deepseek_vl.ENCRED_STANDIN``.
"""

ENCRED_STANDIN = True
