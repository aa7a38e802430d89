"""Stand-in of ``eagle/model/language_model/__init__.py``."""
