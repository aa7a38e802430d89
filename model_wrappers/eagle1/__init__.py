"""Eagle-1 (NVlabs EAGLE: Eagle-X4 / Eagle-X5): towers concatenated along channels, 1024 tokens each.

Files: catalog.py (bases, upstream ``eagle``, self-tests ``eagle1`` and ``eagle1_x4``), modeling.py (adapter, wrapper ``EncredEagle``, sweep), tokens.py (token budgets), selftest.py (tiny models from upstream's own classes), recipe.txt, costdata.yaml.

Importing this package imports nothing else; names of ``modeling`` (the adapter, the
VLMEvalKit wrapper, the sweep support) are forwarded on first use, so
``from vlmeval_encred.model_wrappers.eagle1 import EncredEagle`` keeps working.
"""


from vlmeval_encred.families import forward_to_modeling

__getattr__ = forward_to_modeling(__name__)
