"""I-MoF (the MMVP repository's LLaVA-1.5 fork): CLIP and DINOv2 tokens interleaved, one projector each.

Files: catalog.py (base, upstreams ``mmvp`` and ``dinov2``, self-test ``imof``), modeling.py (adapter, wrapper ``EncredIMoF``, sweep), compat.py (the fork under transformers 4.44), selftest.py, recipe.txt, costdata.yaml.

Importing this package imports nothing else; names of ``modeling`` (the adapter, the
VLMEvalKit wrapper, the sweep support) are forwarded on first use, so
``from vlmeval_encred.model_wrappers.imof import ADAPTER`` keeps working.
"""


def __getattr__(name: str):
    # Submodule names (asked for while they are being imported) and dunders are not forwarded.
    if name.startswith("__") or name in ("catalog", "modeling", "selftest", "tiny", "compat"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(__name__ + ".modeling"), name)
