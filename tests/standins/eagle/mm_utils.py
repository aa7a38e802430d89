"""Stand-in of ``eagle/mm_utils.py``: image preprocessing and prompt tokenisation.

Same function names and contracts as upstream: ``process_images`` (``pad``:
square with the processor's mean colour, then the processor; otherwise the
processor on the list), ``tokenizer_image_token`` (``<image>`` becomes
``IMAGE_TOKEN_INDEX``; a leading BOS kept once), ``get_model_name_from_path``,
``KeywordsStoppingCriteria``.  The ``anyres`` path is not implemented
(Eagle-X4/X5 checkpoints use ``pad``).
"""

from __future__ import annotations

import torch
from PIL import Image
from transformers import StoppingCriteria

from eagle.constants import IMAGE_TOKEN_INDEX


def expand2square(pil_img: Image.Image, background_color: tuple[int, ...]) -> Image.Image:
    """Pad the shorter side so the image is square, content centred."""
    w, h = pil_img.size
    if w == h:
        return pil_img
    side = max(w, h)
    out = Image.new(pil_img.mode, (side, side), background_color)
    out.paste(pil_img, ((side - w) // 2, (side - h) // 2))
    return out


def process_images(images, image_processor, model_cfg):
    """PIL images -> a (N, 3, S, S) tensor as the model's vision tower expects."""
    aspect = getattr(model_cfg, "image_aspect_ratio", None)
    if aspect == "anyres":
        raise NotImplementedError("stand-in: image_aspect_ratio='anyres' is not mirrored")
    if aspect != "pad":
        return image_processor(images, return_tensors="pt")["pixel_values"]
    fill = tuple(int(c * 255) for c in image_processor.image_mean)
    tensors = [image_processor.preprocess(expand2square(im, fill), return_tensors="pt")["pixel_values"][0]
               for im in images]
    if all(t.shape == tensors[0].shape for t in tensors):
        return torch.stack(tensors, dim=0)
    return tensors


def tokenizer_image_token(prompt, tokenizer, image_token_index=IMAGE_TOKEN_INDEX, return_tensors=None):
    """Tokenise around each ``<image>``, putting ``image_token_index`` in its place."""
    chunks = [tokenizer(c).input_ids for c in prompt.split("<image>")]
    ids: list[int] = []
    skip = 0
    if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id:
        skip = 1
        ids.append(chunks[0][0])
    for i, chunk in enumerate(chunks):
        if i:
            ids.append(image_token_index)
        ids.extend(chunk[skip:])
    if return_tensors is None:
        return ids
    if return_tensors == "pt":
        return torch.tensor(ids, dtype=torch.long)
    raise ValueError(f"Unsupported tensor type: {return_tensors}")


def get_model_name_from_path(model_path: str) -> str:
    parts = model_path.strip("/").split("/")
    if parts[-1].startswith("checkpoint-"):
        return parts[-2] + "_" + parts[-1]
    return parts[-1]


class KeywordsStoppingCriteria(StoppingCriteria):
    """Stop when every sequence ends with one of ``keywords``."""

    def __init__(self, keywords, tokenizer, input_ids):
        self.keywords = keywords
        self.tokenizer = tokenizer
        self.start_len = input_ids.shape[1]
        self.keyword_ids = []
        self.max_keyword_len = 0
        for kw in keywords:
            ids = tokenizer(kw).input_ids
            if len(ids) > 1 and ids[0] == tokenizer.bos_token_id:
                ids = ids[1:]
            self.max_keyword_len = max(self.max_keyword_len, len(ids))
            self.keyword_ids.append(torch.tensor(ids))

    def call_for_batch(self, output_ids, scores, **kwargs) -> bool:
        for kw in self.keyword_ids:
            kw = kw.to(output_ids.device)
            if torch.equal(output_ids[0, -kw.shape[0]:], kw):
                return True
        offset = min(output_ids.shape[1] - self.start_len, self.max_keyword_len)
        text = self.tokenizer.batch_decode(output_ids[:, -offset:], skip_special_tokens=True)[0]
        return any(kw in text for kw in self.keywords)

    def __call__(self, output_ids, scores, **kwargs) -> bool:
        return all(self.call_for_batch(output_ids[i].unsqueeze(0), scores) for i in range(output_ids.shape[0]))
