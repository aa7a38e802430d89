"""The CPU demo: a synthetic benchmark and a tiny trained multi-encoder model with known answers.

``data`` generates three multiple-choice datasets in VLMEvalKit's TSV format,
``model`` defines the three-encoder model (and its from-directory loader),
``train`` trains it, and ``checkpoint/`` holds the shipped weights.  Nothing here
imports VLMEvalKit; ``vlmeval_encred.model_wrappers.encred_tiny`` is the wrapper
VLMEvalKit runs, and ``encred demo`` drives everything.  See docs/demo.md.
"""
