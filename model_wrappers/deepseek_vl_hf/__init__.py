"""DeepSeek-VL 7B through transformers' ``DeepseekVLHybridForConditionalGeneration`` (base environment).

Files: catalog.py (bases, ``tiny`` hook), modeling.py (adapter, wrapper ``EncredDeepseekVLHybrid``, sweep), tiny.py (the random tiny checkpoint ``encred-tiny:deepseek-vl-hybrid`` and its tokenizer), costdata.yaml.

Importing this package imports nothing else; names of ``modeling`` (the adapter, the
VLMEvalKit wrapper, the sweep support) are forwarded on first use, so
``from vlmeval_encred.model_wrappers.deepseek_vl_hf import EncredDeepseekVLHybrid`` keeps working.
"""


from vlmeval_encred.families import forward_to_modeling

__getattr__ = forward_to_modeling(__name__)
