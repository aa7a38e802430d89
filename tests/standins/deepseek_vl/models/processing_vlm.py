"""Mirrors ``deepseek_vl/models/processing_vlm.py``: ``VLChatProcessor`` and its batched output.

Contract kept: ``VLChatProcessor.from_pretrained(path)``, ``.tokenizer``,
``.num_image_tokens``, ``.image_tag`` (``<image_placeholder>``), the DeepSeek
conversation format (system prompt, ``User: ...``, ``Assistant:``), and
``__call__(conversations=..., images=..., force_batchify=True)`` returning
``BatchedVLChatProcessorOutput`` (``input_ids``, ``attention_mask``,
``pixel_values`` ``(B, n_images, 3, H, W)``, ``images_seq_mask``,
``images_emb_mask``) whose ``.to(device, dtype=torch.bfloat16)`` casts pixels
like upstream.  Simplified: a square resize instead of upstream's padding
image processor; the settings live in ``standin_processor.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

_CONFIG = "standin_processor.json"


@dataclass
class BatchedVLChatProcessorOutput:
    sft_format: list[str]
    input_ids: torch.Tensor
    pixel_values: torch.Tensor
    attention_mask: torch.Tensor
    images_seq_mask: torch.Tensor
    images_emb_mask: torch.Tensor

    def keys(self):
        return self.__dict__.keys()

    def __getitem__(self, item: str) -> Any:
        return self.__dict__[item]

    def to(self, device, dtype=torch.bfloat16) -> "BatchedVLChatProcessorOutput":
        for name in ("input_ids", "attention_mask", "images_seq_mask", "images_emb_mask"):
            setattr(self, name, getattr(self, name).to(device))
        self.pixel_values = self.pixel_values.to(device=device, dtype=dtype)
        return self


class VLChatProcessor:
    system_prompt = "You are a helpful language and vision assistant."

    def __init__(self, tokenizer, image_size: int, num_image_tokens: int, image_tag: str = "<image_placeholder>",
                 image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5)) -> None:
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.num_image_tokens = num_image_tokens
        self.image_tag = image_tag
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)

    @classmethod
    def from_pretrained(cls, path: str, **kwargs: Any) -> "VLChatProcessor":
        from transformers import AutoTokenizer

        with open(os.path.join(path, _CONFIG)) as fh:
            cfg = json.load(fh)
        return cls(AutoTokenizer.from_pretrained(path), **cfg)

    def save_pretrained(self, path: str) -> None:
        self.tokenizer.save_pretrained(path)
        with open(os.path.join(path, _CONFIG), "w") as fh:
            json.dump(dict(image_size=self.image_size, num_image_tokens=self.num_image_tokens,
                           image_tag=self.image_tag, image_mean=self.image_mean, image_std=self.image_std), fh)

    @property
    def image_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.image_tag)

    def sft_prompt(self, conversations: list[dict]) -> str:
        parts = [self.system_prompt, "\n\n"]
        for m in conversations:
            if m["role"] == "User":
                parts += ["User: ", m["content"].strip(), "\n\n"]
            else:
                parts += ["Assistant:", (" " + m["content"].strip()) if m["content"] else ""]
        return "".join(parts).strip()

    def _pixels(self, images: list[Image.Image]) -> torch.Tensor:
        import numpy as np

        out = []
        for im in images:
            a = np.asarray(im.convert("RGB").resize((self.image_size, self.image_size), Image.BICUBIC),
                           dtype=np.float32) / 255.0
            t = torch.from_numpy(a).permute(2, 0, 1)
            out.append((t - torch.tensor(self.image_mean)[:, None, None]) / torch.tensor(self.image_std)[:, None, None])
        return torch.stack(out) if out else torch.zeros(0, 3, self.image_size, self.image_size)

    def __call__(self, *, prompt: str | None = None, conversations: list[dict] | None = None,
                 images: list[Image.Image] | None = None, force_batchify: bool = True,
                 **kwargs: Any) -> BatchedVLChatProcessorOutput:
        text = prompt if prompt is not None else self.sft_prompt(conversations or [])
        ids = torch.tensor([self.tokenizer.bos_token_id] + self.tokenizer.encode(text, add_special_tokens=False))
        pieces, n_img = [], 0
        for tok in ids.tolist():
            if tok == self.image_id:
                pieces += [self.image_id] * self.num_image_tokens
                n_img += 1
            else:
                pieces.append(tok)
        input_ids = torch.tensor([pieces])
        pixels = self._pixels(images or [])
        if pixels.shape[0] != n_img:
            raise ValueError(f"stand-in VLChatProcessor: {n_img} image tags but {pixels.shape[0]} images")
        n = max(1, n_img)
        pixel_values = torch.zeros(1, n, 3, self.image_size, self.image_size)
        pixel_values[0, :n_img] = pixels
        emb_mask = torch.zeros(1, n, self.num_image_tokens, dtype=torch.bool)
        emb_mask[0, :n_img] = True
        return BatchedVLChatProcessorOutput(
            sft_format=[text], input_ids=input_ids, pixel_values=pixel_values,
            attention_mask=torch.ones_like(input_ids), images_seq_mask=input_ids == self.image_id,
            images_emb_mask=emb_mask)
