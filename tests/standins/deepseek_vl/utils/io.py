"""Mirrors ``deepseek_vl/utils/io.py``: ``load_pil_images`` as VLMEvalKit's DeepSeekVL calls it."""

from __future__ import annotations

from PIL import Image


def load_pil_images(conversations: list[dict]) -> list[Image.Image]:
    """RGB images of every message's ``images`` paths, in conversation order."""
    out = []
    for message in conversations:
        for path in message.get("images", []):
            with Image.open(path) as im:
                out.append(im.convert("RGB"))
    return out
