"""Eagle2-9B (nvidia/Eagle2-9B remote code): SigLIP and ConvNeXt concatenated along channels, pixel shuffle, NVIDIA's tiling.

Files: catalog.py (base), modeling.py (adapter, wrapper ``EncredEagle2``, tiling, sweep), recipe.txt, costdata.yaml.

Importing this package imports nothing else; names of ``modeling`` (the adapter, the
VLMEvalKit wrapper, the sweep support) are forwarded on first use, so
``from vlmeval_encred.model_wrappers.eagle2 import EncredEagle2`` keeps working.
"""


from vlmeval_encred.families import forward_to_modeling

__getattr__ = forward_to_modeling(__name__)
