"""Tiny stand-ins of nvidia/Eagle2-9B remote code (modeling files shipped with the checkpoint)."""
