"""Stand-in of ``eagle/model/multimodal_projector/__init__.py``."""
