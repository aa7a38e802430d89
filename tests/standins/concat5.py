"""A CPU-sized five-encoder channel-concatenation model with Eagle-X5-like cost proportions.

Not an upstream model: a synthetic stand-in for the sweep tests and
benchmarks/sweep_speed.py.  Five patch-MLP "towers" (named as Eagle-X5's) see
the image at their own resolution; each output is pooled to a 4x4 grid and the
outputs are concatenated along channels (Eagle-1's fusion), projected by an
MLP and put between a fixed chat-template text (``SYSTEM``, as Eagle's
``vicuna_v1`` template puts its system sentence before the image) and the
question of a tiny random Llama (transformers); per-variant runs decode greedily
with ``generate``, the sweep through ``fuse`` and :func:`vlmeval_encred.sweep.decoding.decode`
(shared template prefix computed once, finished rows dropped).  Tower widths/depths/resolutions are chosen so the
towers' shares of the vision FLOPs are roughly Eagle-X5's (SAM and EVA-02 at
1024 px dominate, CLIP at 448 is cheapest) and vision is about 40% of a
sample's FLOPs; weights use a large init so answers depend on the image and
differ between subsets (a random model that always says the same thing would
make exactness tests vacuous).

``register()`` adds base ``concat5_standin`` to the registry and to
``vlmeval.config.supported_VLM`` (importing this module imports vlmeval).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn
from vlmeval.vlm.base import BaseModel

from vlmeval_encred.masking import EncoderAdapter, EncoderInfo, MaskSpec, count_params
from vlmeval_encred.wrapper import EncredMixin

GRID = 4
SYSTEM = "Describe the chart. Please select the correct answer. USER:"
"""Template text before the image: identical for every subset and sample (the shared prefix)."""
# name: (input side, patch, width, depth) -- see the module docstring for the proportions.
TOWERS: dict[str, tuple[int, int, int, int]] = {
    "clip": (32, 4, 48, 1),
    "convnext": (64, 8, 96, 2),
    "sam": (64, 4, 64, 2),
    "eva02": (64, 4, 56, 2),
    "pix2struct": (48, 4, 56, 1),
}


class Tower(nn.Module):
    def __init__(self, side: int, patch: int, width: int, depth: int) -> None:
        super().__init__()
        self.side, self.patch = side, patch
        self.embed = nn.Linear(3 * patch * patch, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
                                    for _ in range(depth))

    def forward(self, image: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, GRID*GRID, width)
        x = nn.functional.interpolate(image, size=(self.side, self.side), mode="bilinear", align_corners=False)
        p = self.patch
        b = x.shape[0]
        x = x.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).reshape(b, -1, 3 * p * p)
        x = self.embed(x)
        for blk in self.blocks:
            x = x + blk(x)
        g = self.side // p
        x = x.transpose(1, 2).reshape(b, -1, g, g)
        x = nn.functional.adaptive_avg_pool2d(x, GRID)
        return x.flatten(2).transpose(1, 2)


class Concat5(nn.Module):
    def __init__(self, hidden: int = 64, seed: int = 0) -> None:
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM

        from vlmeval_encred.model_wrappers.deepseek_vl_hf.tiny import build_tokenizer

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.tokenizer = build_tokenizer()
            self.towers = nn.ModuleDict({n: Tower(*spec) for n, spec in TOWERS.items()})
            width = sum(spec[2] for spec in TOWERS.values())
            self.projector = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, hidden))
            cfg = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=4, vocab_size=len(self.tokenizer),
                              max_position_embeddings=512, initializer_range=0.3,
                              bos_token_id=self.tokenizer.bos_token_id, eos_token_id=self.tokenizer.eos_token_id,
                              pad_token_id=self.tokenizer.pad_token_id)
            self.llm = LlamaForCausalLM(cfg).eval()
            for mod in list(self.towers.values()) + [self.projector]:
                for prm in mod.parameters():
                    nn.init.normal_(prm, std=0.3)
        self.shapes = {n: (GRID * GRID, spec[2]) for n, spec in TOWERS.items()}


class Concat5Adapter(EncoderAdapter):
    family = "concat5_standin"
    modes = ("zero",)

    def encoders(self, model: Concat5) -> list[EncoderInfo]:
        return [EncoderInfo(n, i, model.shapes[n], model.towers[n] if n in model.towers else None,
                            count_params(model.towers[n]) if n in model.towers else 0)
                for i, n in enumerate(TOWERS)]

    def install(self, model: Concat5, spec: MaskSpec, infos: list[EncoderInfo]) -> None:
        pass  # the wrapper feeds zeros for every name missing from model.towers

    def release(self, model: Concat5, spec: MaskSpec, infos: list[EncoderInfo]) -> int:
        freed = 0
        for n in spec.masked:
            freed += count_params(model.towers[n])
            del model.towers[n]
        return freed


class Concat5Standin(EncredMixin, BaseModel):
    """VLMEvalKit wrapper of :class:`Concat5`; greedy, fp32, CPU."""

    INTERLEAVE = False
    adapter = Concat5Adapter()

    def __init__(self, model_path: str = "standin", max_new_tokens: int = 6, **kwargs: Any) -> None:
        spec, base = self.pop_encred_kwargs(kwargs)
        super().__init__()
        self.model = Concat5()
        self.tokenizer = self.model.tokenizer
        self.apply_mask(self.model, spec, base or "concat5_standin")
        self.kwargs = self.generation_kwargs(dict(max_new_tokens=max_new_tokens,
                                                  pad_token_id=self.tokenizer.pad_token_id), kwargs)

    # shared by generate_inner and the sweep
    def build_inputs(self, message: list[dict[str, Any]], dataset: str | None = None) -> dict[str, torch.Tensor]:
        from PIL import Image

        prompt, image_path = self.message_to_promptimg(message, dataset)
        import numpy as np

        with Image.open(image_path) as im:
            arr = torch.from_numpy(np.asarray(im.convert("RGB").resize((64, 64)), dtype=np.float32).copy())
        image = arr.reshape(64, 64, 3).permute(2, 0, 1).unsqueeze(0) / 255.0
        ids = self.tokenizer(prompt, return_tensors="pt").input_ids
        prefix = torch.tensor([[self.tokenizer.bos_token_id]
                               + self.tokenizer(SYSTEM, add_special_tokens=False).input_ids])
        return {"image": image, "prefix_ids": prefix, "input_ids": ids}

    def encode(self, inputs: dict[str, torch.Tensor], names: Sequence[str]) -> dict[str, torch.Tensor]:
        return {n: self.model.towers[n](inputs["image"]) for n in names}

    def fuse(self, feats: dict[str, torch.Tensor | None]) -> torch.Tensor:
        parts = [feats.get(n) if feats.get(n) is not None else torch.zeros(1, *self.model.shapes[n])
                 for n in TOWERS]
        return self.model.projector(torch.cat(parts, dim=-1))

    def embeds(self, inputs: dict[str, torch.Tensor], visual: torch.Tensor) -> torch.Tensor:
        """[template prefix, image tokens, question] for each row of ``visual``."""
        s = visual.shape[0]
        emb = self.model.llm.get_input_embeddings()
        return torch.cat([emb(inputs["prefix_ids"]).expand(s, -1, -1), visual,
                          emb(inputs["input_ids"]).expand(s, -1, -1)], dim=1)

    def decode(self, rows: list[list[int]]) -> list[str]:
        eos = self.tokenizer.eos_token_id
        texts = []
        for row in rows:
            row = row[:row.index(eos) + 1] if eos in row else row
            texts.append(self.tokenizer.decode(row, skip_special_tokens=True).strip())
        return texts

    def generate_batch(self, inputs: dict[str, torch.Tensor], visual: torch.Tensor) -> list[str]:
        embeds = self.embeds(inputs, visual)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long)
        out = self.model.llm.generate(inputs_embeds=embeds, attention_mask=mask, **self.kwargs)
        return self.decode(out.tolist())

    def generate_inner(self, message: list[dict[str, Any]], dataset: str | None = None) -> str:
        with torch.inference_mode():
            inputs = self.build_inputs(message, dataset)
            feats = self.encode(inputs, list(self.model.towers))
            return self.generate_batch(inputs, self.fuse(feats))[0]


class Concat5Sweep:
    """SweepSupport of the stand-in: the same three steps generate_inner takes, batched over subsets.

    ``fuse`` returns the subsets' rows as a :class:`~vlmeval_encred.sweep.decoding.DecodeRequest`
    (the engine decodes them, with other samples' rows under ``--decode-batch-tokens``);
    ``fuse_and_generate`` decodes that request alone.  ``shared_decoding=False``: one ``generate``
    over all subsets instead (the former path, kept for the benchmarks' "before" arm)."""

    shared_decoding = True

    def prepare(self, wrapper: Concat5Standin, message: list[dict[str, Any]], dataset: str | None) -> Any:
        return wrapper.build_inputs(message, dataset)

    def encode(self, wrapper: Concat5Standin, inputs: Any, encoders: Sequence[str]) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            return wrapper.encode(inputs, encoders)

    def fuse(self, wrapper: Concat5Standin, inputs: Any, features_per_subset: list[dict[str, Any]],
             mask_mode: str) -> Any:
        """The subsets' [template, image tokens, question] rows, for the engine to decode."""
        from vlmeval_encred.sweep.decoding import DecodeRequest

        with torch.inference_mode():
            visual = torch.cat([wrapper.fuse(f) for f in features_per_subset], dim=0)
            llm = wrapper.model.llm
            return DecodeRequest(lm=llm, embeds=wrapper.embeds(inputs, visual), embed_tokens=llm.get_input_embeddings(),
                                 eos_ids=[wrapper.tokenizer.eos_token_id],
                                 max_new_tokens=wrapper.kwargs["max_new_tokens"], finish=wrapper.decode)

    def fuse_and_generate(self, wrapper: Concat5Standin, inputs: Any, features_per_subset: list[dict[str, Any]],
                          mask_mode: str) -> list[str]:
        from vlmeval_encred.sweep.decoding import decode

        if not self.shared_decoding:
            with torch.inference_mode():
                return wrapper.generate_batch(inputs, torch.cat([wrapper.fuse(f) for f in features_per_subset], 0))
        return decode([self.fuse(wrapper, inputs, features_per_subset, mask_mode)])[0]


Concat5Standin.sweep_support = Concat5Sweep()

BASE_NAME = "concat5_standin"


def register() -> None:
    from vlmeval_encred.registry import BaseModelSpec, register_base

    register_base(BaseModelSpec(name=BASE_NAME, family="concat5_standin", checkpoint="standin",
                                encoders=tuple(TOWERS), wrapper="standins.concat5:Concat5Standin",
                                loader={"max_new_tokens": 6}, description="CPU stand-in (tests/benchmarks)"))
    import sys

    config = sys.modules.get("vlmeval.config")
    if config is not None and hasattr(config, "supported_VLM"):  # imported already: add the new entries
        from vlmeval_encred.vlmeval_plugin import after_config

        after_config(config)
