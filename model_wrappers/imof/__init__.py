"""I-MoF (the MMVP repository's LLaVA-1.5 fork): CLIP and DINOv2 tokens interleaved, one projector each.

Files: catalog.py (base, upstreams ``mmvp`` and ``dinov2``, self-test ``imof``), modeling.py (adapter, wrapper ``EncredIMoF``, sweep), compat.py (the fork under transformers 4.44), selftest.py, recipe.txt, costdata.yaml.

Importing this package imports nothing else; names of ``modeling`` (the adapter, the
VLMEvalKit wrapper, the sweep support) are forwarded on first use, so
``from vlmeval_encred.model_wrappers.imof import ADAPTER`` keeps working.
"""


from vlmeval_encred.families import forward_to_modeling

__getattr__ = forward_to_modeling(__name__)
