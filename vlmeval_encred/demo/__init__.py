"""The CPU demo: a synthetic benchmark and a tiny trained multi-encoder model with known answers.

``data`` generates three multiple-choice datasets in VLMEvalKit's TSV format,
``model`` defines the three-encoder model (and its from-directory loader),
``train`` trains it, and ``checkpoint/`` holds the shipped weights.  Nothing here
imports VLMEvalKit; the wrapper VLMEvalKit runs belongs to the family whose catalog
offers it as ``provide("demo", ...)`` (:mod:`vlmeval_encred.families`), and ``encred demo``
drives everything.  See docs/demo.md.
"""
