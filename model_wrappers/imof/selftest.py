"""Real-code self-test of the I-MoF adapter: a tiny random model from the MMVP fork's own classes.

Everything the adapter touches is upstream's: the fork's ``LlavaLlamaForCausalLM``
(interleaving ``prepare_inputs_labels_for_multimodal_withdino``, both projectors
from its ``build_vision_projector``), its ``CLIPVisionTower`` and
``DINOVisionTower``, and DINOv2 from the real hub code
(``facebookresearch/dinov2`` snapshot, ``torch.hub.load(..., source='local')``).
Only sizes are small.  What cannot exist here and is replaced:

* the CLIP checkpoint behind the fork's hub id: a random tiny ``CLIPVisionModel``
  saved into a throw-away hub cache under the work folder (offline);
* DINOv2's pretrained weights: the hub entry ``dinov2_vitl14`` is built with
  ``pretrained=False`` and cut to :attr:`TinySizes.dino_depth` blocks after building.
  Its width stays 1024 because the fork hard-codes ``DINOVisionTower.hidden_size``
  = 1024, which also fixes the tiny CLIP's width (both projectors read
  ``mm_hidden_size``).

Image side 28 px with patch 14: 4 tokens per tower, 8 interleaved.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from vlmeval_encred.realcode.checks import RealCodeSelfTest

CLIP_ID = "openai/clip-vit-large-patch14-336"
"""The fork's CLIP tower id in the MoF checkpoint config (``mm_vision_tower``)."""
_FAKE_REVISION = "0" * 40
FORK_REQUIRES = {"transformers": ">=4.31,<4.45"}
"""Where the fork's own code is verified: 4.31.0 (its pin) and 4.44.2 (recipe ``imof``).  The
catalog entry asks for >=4.37 because VLMEvalKit itself does not import under 4.31."""


@dataclass(frozen=True)
class TinySizes:
    image: int = 28
    patch: int = 14
    width: int = 1024           # fixed by the fork (DINOVisionTower.hidden_size)
    clip_layers: int = 2
    clip_heads: int = 4
    clip_ffn: int = 64
    dino_depth: int = 1
    llm_hidden: int = 32
    llm_layers: int = 2
    llm_heads: int = 4
    llm_ffn: int = 64
    vocab: int = 120
    seed: int = 0

    @property
    def tokens(self) -> int:
        return (self.image // self.patch) ** 2


def write_fake_clip_repo(cache: Path, sizes: TinySizes = TinySizes()) -> Path:
    """A hub-cache layout for :data:`CLIP_ID` holding a random tiny CLIP vision model and processor."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    repo = cache / ("models--" + CLIP_ID.replace("/", "--"))
    snap = repo / "snapshots" / _FAKE_REVISION
    if (snap / "model.safetensors").is_file():
        return cache
    snap.mkdir(parents=True, exist_ok=True)
    cfg = CLIPVisionConfig(hidden_size=sizes.width, intermediate_size=sizes.clip_ffn,
                           num_hidden_layers=sizes.clip_layers, num_attention_heads=sizes.clip_heads,
                           image_size=sizes.image, patch_size=sizes.patch, projection_dim=16)
    with torch.random.fork_rng():
        torch.manual_seed(sizes.seed + 1)
        CLIPVisionModel(cfg).save_pretrained(snap)
    CLIPImageProcessor(size={"shortest_edge": sizes.image},
                       crop_size={"height": sizes.image, "width": sizes.image}).save_pretrained(snap)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(_FAKE_REVISION)
    return cache


@contextlib.contextmanager
def tiny_dinov2_hub(sizes: TinySizes = TinySizes()) -> Iterator[None]:
    """``torch.hub.load('facebookresearch/dinov2', name)`` -> the snapshot's hub entry, random, cut to depth.

    Seeded in a forked RNG, so every load gives the same weights."""
    import torch

    from vlmeval_encred import upstream

    hub_dir = str(upstream.source_dir("dinov2"))
    original = torch.hub.load

    def load(repo_or_dir: str, model: str, *args: Any, **kwargs: Any) -> Any:
        if "dinov2" not in str(repo_or_dir):
            return original(repo_or_dir, model, *args, **kwargs)
        with torch.random.fork_rng():
            torch.manual_seed(sizes.seed + 2)
            net = original(hub_dir, model, *args, source="local", pretrained=False, **kwargs)
        net.blocks = net.blocks[:sizes.dino_depth]
        return net

    torch.hub.load = load
    try:
        yield
    finally:
        torch.hub.load = original


@contextlib.contextmanager
def tiny_environment(workdir: Path, sizes: TinySizes = TinySizes()) -> Iterator[Path]:
    """The fake CLIP hub repo and the tiny DINOv2 hub redirect, for building or loading a tiny I-MoF."""
    from .compat import offline_hub_cache

    cache = write_fake_clip_repo(Path(workdir) / "hub", sizes)
    with offline_hub_cache(str(cache)), tiny_dinov2_hub(sizes):
        yield cache


def tiny_config(sizes: TinySizes = TinySizes()) -> Any:
    from llava.model import LlavaConfig

    return LlavaConfig(
        vocab_size=sizes.vocab, hidden_size=sizes.llm_hidden, intermediate_size=sizes.llm_ffn,
        num_hidden_layers=sizes.llm_layers, num_attention_heads=sizes.llm_heads,
        num_key_value_heads=sizes.llm_heads, max_position_embeddings=256, pad_token_id=0,
        bos_token_id=1, eos_token_id=2, torch_dtype="float32",
        mm_vision_tower=CLIP_ID, mm_hidden_size=sizes.width, mm_projector_type="mlp2x_gelu",
        mm_vision_select_layer=-2, mm_vision_select_feature="patch", mm_use_im_start_end=False,
        mm_use_im_patch_token=False, image_aspect_ratio="pad", use_mm_proj=True)


def build_tiny(workdir: Path, sizes: TinySizes = TinySizes(), load_towers: bool = True) -> Any:
    """The fork's ``LlavaLlamaForCausalLM`` with both towers loaded the fork's way (``load_model``)."""
    import torch

    from .compat import import_fork

    import_fork()
    from llava.model import LlavaLlamaForCausalLM

    with tiny_environment(workdir, sizes):
        with torch.random.fork_rng():
            torch.manual_seed(sizes.seed)
            model = LlavaLlamaForCausalLM(tiny_config(sizes))
        if load_towers:
            with contextlib.redirect_stdout(io.StringIO()):  # CLIPVisionTower.load_model prints its state dict
                model.get_vision_tower().load_model()
                model.get_dino_vision_tower().load_model()
    return model.float().eval()


_CORPUS = ("USER: What is shown in the image? ASSISTANT: A red square on a white page. "
           "A chat between a curious user and an artificial intelligence assistant. "
           "The assistant gives helpful, detailed, and polite answers to the user's questions. "
           "Answer with the option's letter from the given choices directly. yes no left right "
           "Question: Which option is correct? A. cat B. dog C. bird D. fish Hint: count the colours.")


def build_tokenizer(dest: Path, vocab: int) -> Any:
    """A slow ``LlamaTokenizer`` (what the fork's builder asks for) on a sentencepiece model trained here."""
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_CORPUS.split(". ") * 8), model_writer=buf,
                                   vocab_size=vocab, model_type="bpe", byte_fallback=False,
                                   character_coverage=1.0, hard_vocab_limit=False, minloglevel=2,
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "tokenizer.model").write_bytes(buf.getvalue())
    tok = LlamaTokenizer(str(dest / "tokenizer.model"), legacy=True)
    tok.save_pretrained(dest)
    return tok


def save_tiny_checkpoint(dest: Path, sizes: TinySizes = TinySizes()) -> Path:
    """A MoF-style checkpoint folder (LLM + both projectors + slow tokenizer; towers load by id/hub, as upstream).

    Load it with the fork's ``load_pretrained_model`` inside :func:`tiny_environment`."""
    dest = Path(dest)
    if (dest / "config.json").is_file():
        return dest
    tmp = dest.with_name(dest.name + ".partial")
    tok = build_tokenizer(tmp, sizes.vocab)
    model = build_tiny(dest.parent, sizes, load_towers=False)
    if len(tok) != sizes.vocab:
        model.resize_token_embeddings(len(tok))
    model.save_pretrained(tmp, safe_serialization=True)
    cfg = json.loads((tmp / "config.json").read_text())
    assert cfg["model_type"] == "llava" and cfg["mm_vision_tower"] == CLIP_ID
    tmp.rename(dest)
    return dest


class IMoFSelfTest(RealCodeSelfTest):
    family = "imof"
    recipe = "imof"
    upstream = ("mmvp", "dinov2")
    modes = ("zero", "drop")
    drop_equals_zero = False  # drop removes the masked tower's 576 tokens; zero keeps them

    def __init__(self, sizes: TinySizes = TinySizes(), new_tokens: int = 3) -> None:
        self.sizes = sizes
        self.new_tokens = new_tokens

    def import_upstream(self) -> str:
        import transformers

        from . import compat as llava_fork
        from vlmeval_encred.upstream import source_dir

        from vlmeval_encred.recipes import check_requires

        check_requires(FORK_REQUIRES, what="the MMVP fork (I-MoF)", recipe=self.recipe)
        llava = llava_fork.import_fork()
        source_dir("dinov2")
        return (f"MMVP fork llava from {Path(llava.__file__).parent}; transformers {transformers.__version__}; "
                f"skipped: {', '.join(llava_fork.skipped_registrations) or 'nothing'}")

    def build(self, workdir: Path) -> Any:
        return build_tiny(workdir, self.sizes)

    def encoders(self, model: Any) -> list[str]:
        from .modeling import ADAPTER

        return ADAPTER.names(model)

    def tower_modules(self, model: Any) -> dict[str, Any]:
        m = model.get_model()
        return {"clip": m.vision_tower, "dinov2": m.dino_tower}

    def mask(self, model: Any, masked: tuple[str, ...], mode: str) -> Any:
        from vlmeval_encred.masking import MaskSpec
        from .modeling import ADAPTER

        return ADAPTER.apply(model, MaskSpec(tuple(masked), mode), "imof-tiny")

    def inputs(self) -> tuple[Any, Any, Any]:
        """Two prompts of 7 ids with the image placeholder at position 3, their mask, two images."""
        import torch
        from llava.constants import IMAGE_TOKEN_INDEX

        g = torch.Generator().manual_seed(1)
        ids = torch.randint(3, self.sizes.vocab, (2, 7), generator=g)
        ids[:, 3] = IMAGE_TOKEN_INDEX
        images = torch.randn(2, 3, self.sizes.image, self.sizes.image, generator=g)
        return ids, torch.ones_like(ids), images

    def run(self, model: Any) -> Any:
        """Logits of one forward and a greedy ``generate`` (prefill + cached decode steps)."""
        import torch

        ids, attn, images = self.inputs()
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=attn, images=images).logits
            gen = model.generate(ids, attention_mask=attn, images=images, max_new_tokens=self.new_tokens,
                                 min_new_tokens=self.new_tokens, do_sample=False, use_cache=True, pad_token_id=0)
        return [logits, gen]

    def run_then_zero(self, model: Any, masked: tuple[str, ...]) -> Any:
        import torch

        towers = self.tower_modules(model)
        handles = [towers[m].register_forward_hook(lambda _m, _i, out: torch.zeros_like(out)) for m in masked]
        try:
            return self.run(model)
        finally:
            for h in handles:
                h.remove()


SELFTEST = IMoFSelfTest()
