"""Cambrian-1 (cambrian-mllm/cambrian): four towers through the Spatial Vision Aggregator.

Files: catalog.py (bases, upstream ``cambrian``, self-test ``cambrian``), modeling.py (adapter, wrapper ``EncredCambrian``, sweep), selftest.py, tiny.py (a tiny Cambrian checkpoint and offline hub), recipe.txt, costdata.yaml.

Importing this package imports nothing else; names of ``modeling`` (the adapter, the
VLMEvalKit wrapper, the sweep support) are forwarded on first use, so
``from vlmeval_encred.model_wrappers.cambrian import ADAPTER`` keeps working.
"""


def __getattr__(name: str):
    # Submodule names (asked for while they are being imported) and dunders are not forwarded.
    if name.startswith("__") or name in ("catalog", "modeling", "selftest", "tiny", "compat"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(__name__ + ".modeling"), name)
