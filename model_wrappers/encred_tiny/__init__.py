"""The CPU demo model (``vlmeval_encred.demo.model``) as a VLMEvalKit model: three planted towers.

Files: catalog.py (base, ``demo`` hook), modeling.py (adapter, wrapper ``EncredTiny``, sweep), costdata.yaml.

Importing this package imports nothing else; names of ``modeling`` (the adapter, the
VLMEvalKit wrapper, the sweep support) are forwarded on first use, so
``from vlmeval_encred.model_wrappers.encred_tiny import EncredTiny`` keeps working.
"""


def __getattr__(name: str):
    # Submodule names (asked for while they are being imported) and dunders are not forwarded.
    if name.startswith("__") or name in ("catalog", "modeling", "selftest", "tiny", "compat"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(__name__ + ".modeling"), name)
