"""DeepSeek-VL 7B through the original ``deepseek_vl`` package (HybridVisionTower: SigLIP low-res + SAM high-res).

Files: catalog.py (bases, upstream ``deepseek_vl``, self-test ``deepseek_vl``), modeling.py (adapter, wrapper ``EncredDeepSeekVL``, sweep), selftest.py, recipe.txt, costdata.yaml.

Importing this package imports nothing else; names of ``modeling`` (the adapter, the
VLMEvalKit wrapper, the sweep support) are forwarded on first use, so
``from vlmeval_encred.model_wrappers.deepseek_vl import EncredDeepSeekVL`` keeps working.
"""


from vlmeval_encred.families import forward_to_modeling

__getattr__ = forward_to_modeling(__name__)
