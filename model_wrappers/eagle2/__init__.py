"""Eagle2-9B (nvidia/Eagle2-9B remote code): SigLIP and ConvNeXt concatenated along channels, pixel shuffle, NVIDIA's tiling.

Files: catalog.py (base), modeling.py (adapter, wrapper ``EncredEagle2``, tiling, sweep), recipe.txt, costdata.yaml.

Importing this package imports nothing else; names of ``modeling`` (the adapter, the
VLMEvalKit wrapper, the sweep support) are forwarded on first use, so
``from vlmeval_encred.model_wrappers.eagle2 import EncredEagle2`` keeps working.
"""


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    from . import modeling

    return getattr(modeling, name)
