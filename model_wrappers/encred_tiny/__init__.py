"""The CPU demo model (``vlmeval_encred.demo.model``) as a VLMEvalKit model: three planted towers.

Files: catalog.py (base, ``demo`` hook), modeling.py (adapter, wrapper ``EncredTiny``, sweep), costdata.yaml.

Importing this package imports nothing else; names of ``modeling`` (the adapter, the
VLMEvalKit wrapper, the sweep support) are forwarded on first use, so
``from vlmeval_encred.model_wrappers.encred_tiny import EncredTiny`` keeps working.
"""


from vlmeval_encred.families import forward_to_modeling

__getattr__ = forward_to_modeling(__name__)
