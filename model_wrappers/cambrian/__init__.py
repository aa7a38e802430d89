"""Cambrian-1 (cambrian-mllm/cambrian): four towers through the Spatial Vision Aggregator.

Files: catalog.py (bases, upstream ``cambrian``, self-test ``cambrian``), modeling.py (adapter, wrapper ``EncredCambrian``, sweep), selftest.py, tiny.py (a tiny Cambrian checkpoint and offline hub), recipe.txt, costdata.yaml.

Importing this package imports nothing else; names of ``modeling`` (the adapter, the
VLMEvalKit wrapper, the sweep support) are forwarded on first use, so
``from vlmeval_encred.model_wrappers.cambrian import ADAPTER`` keeps working.
"""


from vlmeval_encred.families import forward_to_modeling

__getattr__ = forward_to_modeling(__name__)
