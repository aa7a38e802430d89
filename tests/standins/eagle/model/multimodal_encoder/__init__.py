"""Stand-in of ``eagle/model/multimodal_encoder/__init__.py``."""
