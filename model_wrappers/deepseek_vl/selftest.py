"""Real-code self-test of the original DeepSeek-VL family (github.com/deepseek-ai/DeepSeek-VL).

The model is upstream's own ``MultiModalityCausalLM`` built from a config
(``HybridVisionTower`` with upstream's SAM and SigLIP code, the
``low_high_hybrid_split_mlp_gelu`` ``MlpProjector``, a ``LlamaForCausalLM``),
saved with ``save_pretrained`` next to an upstream ``VLChatProcessor`` and loaded
back through ``AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True)``
-- the loader VLMEvalKit and our wrapper use.  Random weights, offline.

Tiny geometry: upstream's tower builders take their widths and depths from two
tables keyed by ``model_name`` (``sam.SAM_MODEL_CONFIG``,
``siglip_vit.SigLIP_MODEL_CONFIG``); SAM-B and SigLIP-L from those tables are
~100 M parameters, too slow for the CPU checks.  :func:`register_tiny_towers`
adds one small row to each table in this process (names starting ``sam_`` /
``siglip_`` as upstream's dispatch requires); every class and forward stays
upstream's.  Upstream's SAM resamples to a fixed 96x96 grid before two
stride-2 downsamples, so both towers give 576 tokens per image, as in the 7B.

Parameters that upstream initialises to zero (SAM's position embeddings and
relative positions, the ``hd_alpha_downsamples`` gate) get small random values,
so that every path of the towers carries signal into the checks.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from vlmeval_encred.realcode.checks import RealCodeSelfTest

BASE = "deepseek_vl_7b_orig"
TINY_SAM = "sam_encredtiny_downsample"
TINY_SIGLIP = "siglip_encredtiny_patch4_96"
_SAM_ROW = dict(width=32, layers=2, heads=2, patch_size=16, global_attn_indexes=[1], prompt_embed_dim=16,
                downsample_channels=(32, 64))
_SIGLIP_ROW = dict(image_size=96, patch_size=4, width=64, layers=2, heads=4, mlp_ratio=4, global_pool="map",
                   use_checkpoint=False)
IMAGE_SIZE = 128          # processor and SAM input (1024 in the 7B)
LOW_SIZE = 96             # SigLIP input after HybridVisionTower.resize (384 in the 7B)
CHANNELS = 64             # both towers' output width = the aligner's input_dim (1024 in the 7B)
NUM_IMAGE_TOKENS = 576    # 24x24, as in the 7B
HIGH_CFG = dict(model_name=TINY_SAM, select_feature="same", image_size=IMAGE_SIZE, select_layer=-1,
                output_dim=CHANNELS, pixel_mean=(0.48145466, 0.4578275, 0.40821073),
                pixel_std=(0.26862954, 0.26130258, 0.27577711))
LOW_CFG = dict(model_name=TINY_SIGLIP, select_feature="same", image_size=LOW_SIZE, select_layer=-1,
               output_dim=CHANNELS, pixel_mean=(0.5, 0.5, 0.5), pixel_std=(0.5, 0.5, 0.5))
PROMPT = "Which bar is taller?"


def _is_standin(module: Any) -> bool:
    return bool(getattr(module, "ENCRED_STANDIN", False))


def import_real_package() -> str:
    """Import the *real* ``deepseek_vl`` (installed, else the upstream copy); one line saying which.

    Fails first, and clearly, on a transformers it cannot run under (the catalog's ``requires``
    for :data:`BASE`).  A test stand-in already imported is forgotten; the real code wins."""
    import importlib.metadata as md

    from vlmeval_encred import upstream
    from vlmeval_encred.recipes import check_requires
    from vlmeval_encred.registry import get_base

    spec = get_base(BASE)
    check_requires(spec.requires, what="the deepseek_vl package (DeepSeek-VL, original code)", recipe=spec.recipe)
    if _is_standin(sys.modules.get("deepseek_vl")):
        upstream.forget_modules("deepseek_vl")
    found = importlib.util.find_spec("deepseek_vl")
    if found is not None and "standins" not in str(found.origin):
        import deepseek_vl  # an installed package (pip install -e <checkout>)
    else:
        root = str(upstream.import_root("deepseek_vl"))  # UpstreamNotFound says how to provide one
        upstream.forget_modules("deepseek_vl")
        if root in sys.path:
            sys.path.remove(root)
        sys.path.insert(0, root)
        import deepseek_vl
    if _is_standin(deepseek_vl):
        raise ImportError("only the test stand-in of deepseek_vl is importable, not the real package")
    import deepseek_vl.models  # noqa: F401  (registers the configs with transformers' Auto classes)

    register_tiny_towers()
    return (f"deepseek_vl from {Path(deepseek_vl.__file__).parent}; "
            f"transformers {md.version('transformers')}, timm {md.version('timm')}")


def register_tiny_towers() -> None:
    """Add the tiny SAM and SigLIP rows to upstream's tower tables (idempotent, this process only)."""
    from deepseek_vl.models import sam, siglip_vit

    sam.SAM_MODEL_CONFIG.setdefault(TINY_SAM, dict(_SAM_ROW))
    siglip_vit.SigLIP_MODEL_CONFIG.setdefault(TINY_SIGLIP, dict(_SIGLIP_ROW))


def tiny_tokenizer() -> Any:
    """A ``LlamaTokenizerFast`` (what ``VLChatProcessor`` requires) over the package's offline BPE."""
    from transformers import LlamaTokenizerFast

    from vlmeval_encred.model_wrappers.deepseek_vl_hf.tiny import build_tokenizer

    base = build_tokenizer()
    return LlamaTokenizerFast(tokenizer_object=base.backend_tokenizer, bos_token=base.bos_token,
                              eos_token=base.eos_token, pad_token=base.pad_token,
                              additional_special_tokens=["<image_placeholder>"], legacy=True)


def build_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """Save a tiny random upstream ``MultiModalityCausalLM`` and ``VLChatProcessor`` at ``path``.

    Written into a temporary folder beside ``path`` and renamed into place, so a crash never
    leaves a half-written checkpoint; an existing complete one is reused."""
    import torch
    from deepseek_vl.models import MultiModalityCausalLM, VLChatProcessor, VLMImageProcessor
    from deepseek_vl.models.modeling_vlm import MultiModalityConfig

    path = Path(path)
    if (path / "config.json").exists() and (path / "processor_config.json").exists():
        return path
    register_tiny_towers()
    tok = tiny_tokenizer()
    cfg = MultiModalityConfig(
        vision_config=dict(cls="HybridVisionTower",
                           params=dict(high_res_cfg=HIGH_CFG, low_res_cfg=LOW_CFG, concat_type="tuple")),
        aligner_config=dict(cls="MlpProjector", params=dict(projector_type="low_high_hybrid_split_mlp_gelu",
                                                            input_dim=CHANNELS, n_embed=64, depth=2)),
        language_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=4, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                             max_position_embeddings=2048))
    torch.manual_seed(seed)
    model = MultiModalityCausalLM(cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if not torch.count_nonzero(p):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    processor = VLChatProcessor(VLMImageProcessor(image_size=IMAGE_SIZE, image_mean=(0.5, 0.5, 0.5),
                                                  image_std=(0.5, 0.5, 0.5), do_normalize=False),
                                tok, num_image_tokens=NUM_IMAGE_TOKENS)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(str(tmp))
        try:
            os.replace(tmp, path)
        except OSError:  # another builder finished first
            if not (path / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def test_image(path: Path) -> str:
    """A fixed non-square RGB image (exercises the processor's padding to a square)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(7)
    arr = rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)
    arr[20:, :28] = (220, 40, 40)
    Image.fromarray(arr).save(path)
    return str(path)


def conversation(image: str, prompt: str = PROMPT) -> list[dict[str, Any]]:
    return [dict(role="User", content="<image_placeholder>" + prompt, images=[image]),
            dict(role="Assistant", content="")]


class DeepSeekVLSelfTest(RealCodeSelfTest):
    family = "deepseek_vl"
    recipe = "deepseek_vl"
    upstream = ("deepseek_vl",)
    modes = ("zero", "drop")
    drop_equals_zero = False

    def __init__(self) -> None:
        self.checkpoint: Path | None = None
        self.processor: Any = None
        self.batch: Any = None

    def import_upstream(self) -> str:
        return import_real_package()

    def build(self, workdir: Path) -> Any:
        import torch
        from deepseek_vl.models import VLChatProcessor
        from deepseek_vl.utils.io import load_pil_images
        from transformers import AutoModelForCausalLM

        self.checkpoint = build_tiny_checkpoint(Path(workdir) / "deepseek_vl_tiny")
        self.processor = VLChatProcessor.from_pretrained(str(self.checkpoint))
        conv = conversation(test_image(Path(workdir) / "deepseek_vl_tiny.png"))
        self.batch = self.processor(conversations=conv, images=load_pil_images(conv), force_batchify=True)
        self.batch = self.batch.to("cpu", dtype=torch.float32)
        model = AutoModelForCausalLM.from_pretrained(str(self.checkpoint), trust_remote_code=True)
        return model.float().eval()

    def adapter(self) -> Any:
        from .modeling import HybridVisionTowerAdapter

        return HybridVisionTowerAdapter(self.processor.num_image_tokens)

    def encoders(self, model: Any) -> list[str]:
        return self.adapter().names(model)

    def tower_modules(self, model: Any) -> dict[str, Any]:
        return {i.name: i.module for i in self.adapter().encoders(model)}

    def mask(self, model: Any, masked: tuple[str, ...], mode: str) -> Any:
        from vlmeval_encred.masking import MaskSpec

        return self.adapter().apply(model, MaskSpec(masked, mode), "deepseek_vl tiny (real classes)")

    def run(self, model: Any) -> Any:
        import torch

        b = self.batch
        with torch.no_grad():
            emb = model.prepare_inputs_embeds(input_ids=b.input_ids.clone(), pixel_values=b.pixel_values,
                                              images_seq_mask=b.images_seq_mask, images_emb_mask=b.images_emb_mask)
            return model.language_model(inputs_embeds=emb, attention_mask=b.attention_mask).logits

    def _branch_modules(self, model: Any, masked: tuple[str, ...]) -> list[str]:
        """'low'/'high' for each masked encoder name."""
        return [("low", "high")[i.index] for i in self.adapter().encoders(model) if i.name in masked]

    def run_then_zero(self, model: Any, masked: tuple[str, ...]) -> Any:
        """The authors' procedure: run every tower, zero the masked towers' outputs (forward hooks)."""
        import torch

        for which in self._branch_modules(model, masked):
            getattr(model.vision_model, f"vision_tower_{which}").register_forward_hook(
                lambda _m, _i, out: torch.zeros_like(out))
        return self.run(model)

    def run_then_drop(self, model: Any, masked: tuple[str, ...]) -> Any:
        """Zero at the concatenation: run everything, zero the masked branch's up-projection output."""
        import torch

        for which in self._branch_modules(model, masked):
            getattr(model.aligner, f"{which}_up_proj").register_forward_hook(
                lambda _m, _i, out: torch.zeros_like(out))
        return self.run(model)

    def run_without_branch(self, model: Any, masked: tuple[str, ...]) -> Any:
        """The aligner rebuilt without the masked branches: only the kept halves are concatenated and
        the first Linear after the concatenation keeps only their input columns.  (Not a mask the
        wrapper offers -- the reference that says what ``drop`` means.)"""
        import torch

        dropped = set(self._branch_modules(model, masked))
        aligner = model.aligner
        layers = list(aligner.layers)
        first = next(i for i, m in enumerate(layers) if isinstance(m, torch.nn.Linear))
        half = aligner.high_up_proj.out_features

        def hook(_m, args, _out):
            high, low = args[0]
            parts, cols = [], []
            for which, x, sl in (("high", high, slice(0, half)), ("low", low, slice(half, 2 * half))):
                if which not in dropped:
                    parts.append(getattr(aligner, f"{which}_up_proj")(x))
                    cols.append(torch.arange(2 * half)[sl])
            if not parts:  # no branch left: the first Linear sees nothing but its bias
                x = layers[first].bias.expand(*high.shape[:-1], -1)
            else:
                x = torch.cat(parts, dim=-1)
                for m in layers[:first]:
                    x = m(x)
                lin = layers[first]
                x = torch.nn.functional.linear(x, lin.weight[:, torch.cat(cols)], lin.bias)
            for m in layers[first + 1:]:
                x = m(x)
            return x

        aligner.register_forward_hook(hook)
        return self.run(model)


SELFTEST = DeepSeekVLSelfTest()
