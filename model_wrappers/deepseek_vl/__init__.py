"""DeepSeek-VL 7B through the original ``deepseek_vl`` package (HybridVisionTower: SigLIP low-res + SAM high-res).

Files: catalog.py (bases, upstream ``deepseek_vl``, self-test ``deepseek_vl``), modeling.py (adapter, wrapper ``EncredDeepSeekVL``, sweep), selftest.py, recipe.txt, costdata.yaml.

Importing this package imports nothing else; names of ``modeling`` (the adapter, the
VLMEvalKit wrapper, the sweep support) are forwarded on first use, so
``from vlmeval_encred.model_wrappers.deepseek_vl import EncredDeepSeekVL`` keeps working.
"""


def __getattr__(name: str):
    # Submodule names (asked for while they are being imported) and dunders are not forwarded.
    if name.startswith("__") or name in ("catalog", "modeling", "selftest", "tiny", "compat"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(__name__ + ".modeling"), name)
