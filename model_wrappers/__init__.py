"""One module per model family (installed as ``vlmeval_encred.model_wrappers``).

``catalog`` declares the base models; each family module holds that family's
:class:`~vlmeval_encred.masking.EncoderAdapter` and VLMEvalKit wrapper.
Importing this package imports nothing else.
"""
