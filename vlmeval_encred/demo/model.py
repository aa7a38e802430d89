"""A tiny three-encoder MLLM, fused the way Eagle fuses, with a real transformers causal LM.

Encoders (short names are stable: they become VLMEvalKit model names):

``lowres``  conv net on a 16x16 RGB thumbnail: sees colour, coarse layout and counts,
            but a 6x10-pixel digit is a 1.5x2.5-pixel smudge to it.
``hires``   patch encoder (4x4 patches) on the full 64x64 image *binarised* to an ink
            map: resolves small glyphs and layout, but is colour-blind by construction.
``colour``  pooled hue histogram (saturation-weighted) through an MLP: sees which
            colours are present and nothing about where.

Fusion (Eagle-1 style): every tower's feature map is brought to a common 4x4 token
grid (adaptive average pooling; a pooled 1x1 map is broadcast), the per-token
features are concatenated along channels (B, 16, 32+64+32), and an ``mlp2x_gelu``
projector maps them to the LM width.  The 16 visual embeddings replace the
``<image>`` placeholders of the prompt, and a ``LlamaForCausalLM`` built from a
config generates the answer letter.  The tokenizer is a word-level
``tokenizers`` model built offline and wrapped as ``PreTrainedTokenizerFast``.

Masking hooks (used by the demo family's wrapper, the one whose catalog says ``provide("demo", ...)``):
``zeroed`` towers are not run and contribute zeros of their exact (T, C_i) shape at
the concatenation; ``dropped`` towers are left out of the concatenation and
the projector's first Linear has lost their input columns, which gives the same
outputs as ``zeroed`` (zero inputs times those columns are exactly zero).

Checkpoint directory layout (what :func:`load_pretrained` reads, and what a user's
own trained checkpoint of this architecture must look like): ``config.json``,
``model.safetensors`` (any float dtype; the shipped one is fp16) and the
tokenizer files written by ``PreTrainedTokenizerFast.save_pretrained``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "encred-tiny/1"
PACKAGE_CHECKPOINT = Path(__file__).with_name("checkpoint")
CHECKPOINT_SCHEME = "encred-demo:"
"""``encred-demo:default`` names the checkpoint shipped in this package."""

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", IMAGE_TOKEN)
ANSWER_CUE = "Answer:"


class CheckpointError(FileNotFoundError):
    """A demo checkpoint directory is missing files or does not match the architecture."""


# ---------------------------------------------------------------------------------------------
# configuration


@dataclass
class TowerConfig:
    name: str
    kind: str
    """``lowres_conv`` | ``hires_patch`` | ``colour_hist``."""
    channels: int
    input_size: int = 0
    bins: int = 0


@dataclass
class EncredTinyConfig:
    """Everything needed to rebuild the architecture; saved as ``config.json``."""

    towers: list[TowerConfig] = field(default_factory=lambda: [
        TowerConfig("lowres", "lowres_conv", channels=32, input_size=16),
        TowerConfig("hires", "hires_patch", channels=64, input_size=64),
        TowerConfig("colour", "colour_hist", channels=32, bins=12),
    ])
    image_size: int = 64
    grid: int = 4
    projector: str = "mlp2x_gelu"
    text_config: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT

    @property
    def n_image_tokens(self) -> int:
        return self.grid * self.grid

    @property
    def encoder_names(self) -> list[str]:
        return [t.name for t in self.towers]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "EncredTinyConfig":
        if d.get("format") != FORMAT:
            raise CheckpointError(f"{source}: format {d.get('format')!r} is not {FORMAT!r} "
                                  "(not a vlmeval-encred demo checkpoint)")
        d = dict(d)
        d["towers"] = [TowerConfig(**t) for t in d["towers"]]
        return cls(**d)


def default_text_config(vocab_size: int, pad_id: int, bos_id: int, eos_id: int) -> dict[str, Any]:
    return dict(vocab_size=vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=160,
                rms_norm_eps=1e-5, tie_word_embeddings=False, pad_token_id=pad_id,
                bos_token_id=bos_id, eos_token_id=eos_id)


# ---------------------------------------------------------------------------------------------
# tokenizer


def vocabulary() -> list[str]:
    """Every word the demo prompts use (VLMEvalKit's MCQ prompt plus our questions)."""
    from . import data

    words: list[str] = list(SPECIAL_TOKENS)
    text = " ".join(q for qs in data.QUESTIONS.values() for q in qs)
    text += " Question: Options: Hint: Please select the correct answer from the options above. "
    text += ANSWER_CUE + " " + " ".join(data.LETTERS) + " " + " ".join(data.COLOURS)
    text += " " + " ".join(data.DIGITS) + " " + " ".join(data.COUNTS) + " " + " ".join(data.SHAPES)
    import re

    for w in re.findall(r"\w+", text):
        if w not in words:
            words.append(w)
    return words


def build_tokenizer():
    """Word-level tokenizer built offline (no download), as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # Punctuation carries nothing here ("A. red" -> "A red"); dropping it keeps sequences short.
    tok.normalizer = normalizers.Replace(Regex(r"[^\w\s<>/]"), " ")
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>",
                                   additional_special_tokens=[IMAGE_TOKEN])


def mcq_prompt(question: str, options: Sequence[str], letters: str | None = None) -> str:
    """The text VLMEvalKit's ``ImageMCQDataset.build_prompt`` produces (no hint).

    Training uses it so that the model sees at training time exactly what
    VLMEvalKit sends at evaluation; the VLMEvalKit test checks the accuracy.
    """
    from .data import LETTERS

    letters = letters or LETTERS
    text = f"Question: {question}\nOptions:\n"
    for k, v in zip(letters, options):
        text += f"{k}. {v}\n"
    return text + "Please select the correct answer from the options above. \n"


def sample_message(sample: Any) -> list[dict[str, Any]]:
    """The VLMEvalKit message a demo question becomes (its image, then :func:`mcq_prompt`): what the
    in-process checks pass to a wrapper's ``generate_inner``, as VLMEvalKit's MCQ dataset would."""
    return [{"type": "image", "value": sample.image},
            {"type": "text", "value": mcq_prompt(sample.question, sample.options)}]


# ---------------------------------------------------------------------------------------------
# towers


class LowResConv(nn.Module):
    """Conv net on an area-downsampled RGB thumbnail; returns a (B, C, h, w) map."""

    def __init__(self, cfg: TowerConfig) -> None:
        super().__init__()
        self.input_size = cfg.input_size
        self.net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.GELU(),
                                 nn.Conv2d(32, cfg.channels, 3, padding=1), nn.GELU())

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(pixels, size=(self.input_size, self.input_size), mode="area")
        return self.net(x * 2 - 1)


class HiResPatch(nn.Module):
    """Patch encoder on the full-resolution binarised ink map (colour-blind by design).

    4x4 patches -> 16x16 map -> 3x3 convs.  Half the channels are average-pooled
    to the 4x4 grid (where things are, how many); the other half are max-pooled over
    the whole image and given to every token (which glyph is present), so a small
    glyph's features are not diluted by the empty patches around it.
    """

    def __init__(self, cfg: TowerConfig) -> None:
        super().__init__()
        if cfg.channels % 2:
            raise CheckpointError(f"tower {cfg.name!r}: hires_patch needs an even channel count")
        half = cfg.channels // 2
        self.net = nn.Sequential(nn.Conv2d(1, 32, 4, stride=4), nn.GELU(),
                                 nn.Conv2d(32, 48, 3, padding=1), nn.GELU())
        self.local = nn.Sequential(nn.Conv2d(48, half, 1), nn.GELU())
        self.glyph = nn.Sequential(nn.Conv2d(48, half, 3, padding=1), nn.GELU())

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        ink = (pixels.amin(dim=1, keepdim=True) < 0.5).to(pixels.dtype)
        x = self.net(ink)
        local = F.avg_pool2d(self.local(x), 4)
        glyph = self.glyph(x).amax(dim=(2, 3), keepdim=True).expand_as(local)
        return torch.cat([local, glyph], dim=1)


class ColourHist(nn.Module):
    """Saturation-weighted, normalised hue histogram of the whole image: a (B, C, 1, 1) map."""

    def __init__(self, cfg: TowerConfig) -> None:
        super().__init__()
        self.bins = cfg.bins
        self.mlp = nn.Sequential(nn.Linear(cfg.bins, 64), nn.GELU(), nn.Linear(64, cfg.channels),
                                 nn.GELU())

    def hue_histogram(self, pixels: torch.Tensor) -> torch.Tensor:
        r, g, b = pixels[:, 0], pixels[:, 1], pixels[:, 2]
        mx, mn = pixels.amax(1), pixels.amin(1)
        sat = mx - mn
        d = sat.clamp_min(1e-6)
        h = torch.where(mx == r, ((g - b) / d) % 6, torch.where(mx == g, (b - r) / d + 2, (r - g) / d + 4))
        h = h / 6.0  # [0, 1)
        centres = torch.arange(self.bins, dtype=pixels.dtype, device=pixels.device) / self.bins
        dist = (h.unsqueeze(1) - centres.view(1, -1, 1, 1)).abs()
        dist = torch.minimum(dist, 1 - dist) * self.bins
        w = (1 - dist).clamp_min(0) * sat.unsqueeze(1)  # (B, bins, H, W)
        hist = w.sum(dim=(2, 3))
        # Normalised: which hues, not how much coloured area (area would be a count cue).
        return hist / (sat.sum(dim=(1, 2)).unsqueeze(1) + 1e-3)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.hue_histogram(pixels))[:, :, None, None]


TOWER_KINDS: dict[str, type[nn.Module]] = {
    "lowres_conv": LowResConv, "hires_patch": HiResPatch, "colour_hist": ColourHist,
}


def to_grid(fmap: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, C, h, w) -> (B, grid*grid, C): the common token grid of the fusion."""
    if fmap.shape[-2:] == (1, 1):
        fmap = fmap.expand(-1, -1, grid, grid)
    elif fmap.shape[-2:] != (grid, grid):
        fmap = F.adaptive_avg_pool2d(fmap, grid)
    return fmap.flatten(2).transpose(1, 2)


# ---------------------------------------------------------------------------------------------
# the model


class EncredTinyModel(nn.Module):
    """Towers -> common grid -> channel concat -> mlp2x_gelu -> LlamaForCausalLM."""

    def __init__(self, config: EncredTinyConfig) -> None:
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM

        self.config = config
        self.encoder_names: list[str] = config.encoder_names
        self.tower_channels: dict[str, int] = {t.name: t.channels for t in config.towers}
        self.towers = nn.ModuleDict({t.name: TOWER_KINDS[t.kind](t) for t in config.towers})
        width = int(config.text_config["hidden_size"])
        if config.projector != "mlp2x_gelu":
            raise CheckpointError(f"projector {config.projector!r} is not supported (mlp2x_gelu only)")
        self.projector = nn.Sequential(nn.Linear(sum(self.tower_channels.values()), width), nn.GELU(),
                                       nn.Linear(width, width))
        lm_cfg = LlamaConfig(**config.text_config)
        lm_cfg._attn_implementation = "sdpa"
        self.language_model = LlamaForCausalLM(lm_cfg)
        self.zeroed: set[str] = set()
        self.dropped: set[str] = set()

    # -- vision ---------------------------------------------------------------------------------
    def fusion_inputs(self, pixels: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """The channel concatenation (B, T, sum C_i) that the projector reads.

        ``keep`` (B, n_encoders) of 0/1 is the training-time encoder dropout; it
        uses the same zero semantics as masking.  Masked towers are never run.
        """
        grid, parts = self.config.grid, []
        for i, name in enumerate(self.encoder_names):
            if name in self.dropped:
                continue
            if name in self.zeroed:
                parts.append(pixels.new_zeros(pixels.shape[0], grid * grid, self.tower_channels[name]))
                continue
            feats = to_grid(self.towers[name](pixels), grid)
            if keep is not None:
                feats = feats * keep[:, i, None, None].to(feats.dtype)
            parts.append(feats)
        if not parts:  # every tower dropped: the projector has no input columns left
            return pixels.new_zeros(pixels.shape[0], grid * grid, 0)
        return torch.cat(parts, dim=-1)

    def image_embeddings(self, pixels: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        x = self.fusion_inputs(pixels, keep)
        return self.projector(x)  # with every tower dropped, x has 0 channels: bias only

    # -- text -----------------------------------------------------------------------------------
    def build_inputs(self, tokenizer, prompt: str) -> list[int]:
        """Token ids of ``<s> <image>*T prompt Answer:``."""
        image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        ids = tokenizer(prompt + " " + ANSWER_CUE, add_special_tokens=False)["input_ids"]
        return [tokenizer.bos_token_id] + [image_id] * self.config.n_image_tokens + ids

    def embed(self, input_ids: torch.Tensor, pixels: torch.Tensor,
              keep: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with the visual embeddings spliced in after ``<s>``."""
        emb = self.language_model.get_input_embeddings()(input_ids)
        img = self.image_embeddings(pixels, keep).to(emb.dtype)
        t = self.config.n_image_tokens
        return torch.cat([emb[:, :1], img, emb[:, 1 + t:]], dim=1)

    def forward(self, input_ids: torch.Tensor, pixels: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, keep: torch.Tensor | None = None):
        return self.language_model(inputs_embeds=self.embed(input_ids, pixels, keep),
                                   attention_mask=attention_mask, labels=labels)

    @torch.inference_mode()
    def generate_answer(self, tokenizer, pixels: torch.Tensor, prompt: str, max_new_tokens: int = 2) -> str:
        """Greedy decoding for one image (argmax each step, stop at ``</s>``)."""
        ids = torch.tensor([self.build_inputs(tokenizer, prompt)], device=pixels.device)
        embeds = self.embed(ids, pixels)
        out: list[int] = []
        emb_layer = self.language_model.get_input_embeddings()
        for _ in range(max_new_tokens):
            logits = self.language_model(inputs_embeds=embeds).logits[0, -1]
            nxt = int(torch.argmax(logits))
            if nxt == tokenizer.eos_token_id:
                break
            out.append(nxt)
            embeds = torch.cat([embeds, emb_layer(torch.tensor([[nxt]], device=pixels.device))], dim=1)
        return tokenizer.decode(out, skip_special_tokens=True).strip()

    # -- save -----------------------------------------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike, tokenizer=None, dtype: torch.dtype = torch.float16) -> Path:
        """Write config, weights (``dtype``) and tokenizer; each file atomically."""
        from safetensors.torch import save_file

        if self.zeroed or self.dropped:
            raise ValueError("refusing to save a masked model: masks are applied at load time")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to(dtype).contiguous() for k, v in self.state_dict().items()}
        tmp = path / f".{WEIGHTS_NAME}.tmp"
        save_file(state, str(tmp), metadata={"format": FORMAT})
        os.chmod(tmp, 0o644)  # safetensors creates it private; it is package data
        os.replace(tmp, path / WEIGHTS_NAME)
        tmp = path / f".{CONFIG_NAME}.tmp"
        tmp.write_text(json.dumps(self.config.to_dict(), indent=1) + "\n")
        os.replace(tmp, path / CONFIG_NAME)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(path))
        return path


def build_model(seed: int = 0) -> tuple[EncredTinyModel, Any]:
    """A freshly initialised model and its tokenizer (deterministic for a seed)."""
    tok = build_tokenizer()
    torch.manual_seed(seed)
    cfg = EncredTinyConfig(text_config=default_text_config(len(tok), tok.pad_token_id, tok.bos_token_id,
                                                           tok.eos_token_id))
    return EncredTinyModel(cfg), tok


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """``encred-demo:default`` -> the packaged checkpoint; anything else is a directory."""
    s = str(path)
    if s.startswith(CHECKPOINT_SCHEME):
        name = s[len(CHECKPOINT_SCHEME):]
        if name != "default":
            raise CheckpointError(f"unknown packaged demo checkpoint {s!r}; the only one is "
                                  f"'{CHECKPOINT_SCHEME}default'")
        return PACKAGE_CHECKPOINT
    return Path(s).expanduser()


def load_pretrained(path: str | os.PathLike, dtype: torch.dtype = torch.float32,
                    device: str = "cpu") -> tuple[EncredTinyModel, Any]:
    """Load a demo-architecture checkpoint directory (the packaged one or a user's)."""
    from safetensors.torch import load_file
    from transformers import PreTrainedTokenizerFast

    d = resolve_checkpoint(path)
    missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME, "tokenizer.json") if not (d / n).is_file()]
    if missing:
        hint = (" (train it with `python -m vlmeval_encred.demo.train --out "
                f"{PACKAGE_CHECKPOINT}`)" if d == PACKAGE_CHECKPOINT else "")
        raise CheckpointError(f"demo checkpoint {d} lacks {', '.join(missing)}{hint}")
    cfg = EncredTinyConfig.from_dict(json.loads((d / CONFIG_NAME).read_text()), str(d / CONFIG_NAME))
    model = EncredTinyModel(cfg)
    state = load_file(str(d / WEIGHTS_NAME))
    own = model.state_dict()
    bad = sorted(set(own) ^ set(state))
    if bad:
        raise CheckpointError(f"{d / WEIGHTS_NAME} does not match {d / CONFIG_NAME}: "
                              f"mismatched keys {bad[:6]}{' ...' if len(bad) > 6 else ''}")
    shapes = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if shapes:
        raise CheckpointError(f"{d / WEIGHTS_NAME}: wrong shapes for {shapes[:6]}")
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()})
    model.to(device=device, dtype=dtype).eval()
    tok = PreTrainedTokenizerFast.from_pretrained(str(d))
    return model, tok


def pixels_from_image(image, size: int = 64) -> torch.Tensor:
    """PIL image or path -> (1, 3, size, size) float tensor in [0, 1]."""
    import numpy as np
    from PIL import Image

    img = image if isinstance(image, Image.Image) else Image.open(image)
    img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())
    return arr.permute(2, 0, 1).unsqueeze(0).float() / 255.0


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["EncredTinyConfig", "EncredTinyModel", "TowerConfig", "build_model", "build_tokenizer",
           "load_pretrained", "resolve_checkpoint", "mcq_prompt", "pixels_from_image", "CheckpointError",
           "PACKAGE_CHECKPOINT"]
