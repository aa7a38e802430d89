"""Eagle2-9B (nvidia/Eagle2-9B remote code): SigLIP and ConvNeXt concatenated along channels, pixel shuffle, NVIDIA's tiling.

Files: catalog.py (base), modeling.py (adapter, wrapper ``EncredEagle2``, tiling, sweep), recipe.txt, costdata.yaml.

Importing this package imports nothing else; names of ``modeling`` (the adapter, the
VLMEvalKit wrapper, the sweep support) are forwarded on first use, so
``from vlmeval_encred.model_wrappers.eagle2 import EncredEagle2`` keeps working.
"""


def __getattr__(name: str):
    # Submodule names (asked for while they are being imported) and dunders are not forwarded.
    if name.startswith("__") or name in ("catalog", "modeling", "selftest", "tiny", "compat"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(__name__ + ".modeling"), name)
