"""The model families, one folder each (installed as ``vlmeval_encred.model_wrappers``).

``model_wrappers/<family>/`` holds everything about one family: ``catalog.py`` (its base
models, upstream repositories and hooks), ``modeling.py`` (adapter, VLMEvalKit wrapper,
sweep support), and where the family has them ``selftest.py``, ``recipe.txt``,
``costdata.yaml``, ``tiny.py``, ``compat.py``.  The core finds the folders by scanning this
package (:mod:`vlmeval_encred.families`); see docs/plugin.md, "Adding a family".
Importing this package imports nothing else.
"""
