"""Stand-in of ``eagle/model/multimodal_encoder/vision_models/__init__.py``."""
