"""The analytic formulas of :mod:`.costmodel` against torch's FlopCounterMode on the real classes.

Each tower / language model of ``costdata.yaml`` that has a transformers (or timm) class is
built on the ``meta`` device (no memory, no weights) from the same numbers and run once
under ``FlopCounterMode``; the counted FLOPs are compared with the formula's.  Eager
attention is used so that attention products are counted as matrix products; the counter
counts causal attention in full, so for language models the check compares the matrix
products outside attention (``aten.mm``/``addmm``) with ``2 x linear_params x n + head``.
Used by ``benchmarks/costmodel_check.py`` and ``tests/test_costmodel.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from . import costmodel as cm


@dataclass
class Check:
    name: str
    analytic: float
    counted: float
    what: str

    @property
    def ratio(self) -> float:
        return self.counted / self.analytic


def _count(fn: Callable[[], Any]) -> tuple[float, dict[str, float]]:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as c:
        fn()
    per_op = {str(k): float(v) for k, v in c.get_flop_counts().get("Global", {}).items()}
    return float(c.get_total_flops()), per_op


def _meta(build: Callable[[], Any]) -> Any:
    import torch

    with torch.device("meta"):
        return build().eval()


def llm_check(name: str, path: str | None = None, tokens: int = 128) -> Check:
    """A Llama-architecture model of ``llms[name]`` (Qwen2/Yi/Phi-3 share its matrix shapes)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    d = cm.load_data(path)["llms"][name]
    llm = cm.LLM(**{k: int(d[k]) for k in ("layers", "hidden", "intermediate", "heads", "kv_heads", "vocab")})
    cfg = LlamaConfig(hidden_size=llm.hidden, intermediate_size=llm.intermediate, num_hidden_layers=llm.layers,
                      num_attention_heads=llm.heads, num_key_value_heads=llm.kv_heads, vocab_size=llm.vocab)
    cfg._attn_implementation = "eager"
    model = _meta(lambda: LlamaForCausalLM(cfg))
    ids = torch.zeros(1, tokens, dtype=torch.long, device="meta")
    with torch.inference_mode():
        _, ops = _count(lambda: model(input_ids=ids, logits_to_keep=1))
    counted = sum(v for k, v in ops.items() if k in ("aten.mm", "aten.addmm"))
    analytic = 2 * llm.linear_params * tokens + 2 * llm.hidden * llm.vocab
    return Check(f"llm {name}", analytic, counted, f"matrix products outside attention, {tokens}-token prefill")


def _vit_module(spec: dict[str, Any]) -> tuple[Any, Any]:
    """(meta model, meta input) of a transformers class with the ViT numbers of ``spec``, or None."""
    import torch

    w, depth, patch = spec["width"], spec["depth"], spec["patch"]
    if spec.get("check") == "pix2struct":
        return None, None  # built on the CPU by tower_check (the class calls .item(), which meta tensors refuse)
    # a gated MLP (3 matrices of w x mlp) has the FLOPs of a 2-matrix MLP 1.5x as wide
    mats = spec.get("mlp_mats", 2)
    mlp = spec["mlp"] * mats // 2
    if mlp * 2 != spec["mlp"] * mats:
        return None, None
    heads = max(1, w // 64)
    side_sq = round(spec["tokens"] ** 0.5)
    if spec.get("window_layers"):
        from transformers import SamVisionConfig
        from transformers.models.sam.modeling_sam import SamVisionEncoder

        side = side_sq * patch
        every = depth // (depth - spec["window_layers"])
        cfg = SamVisionConfig(hidden_size=w, num_hidden_layers=depth, num_attention_heads=heads,
                              mlp_dim=mlp, image_size=side, patch_size=patch,
                              window_size=int(spec["window"] ** 0.5),
                              global_attn_indexes=[i for i in range(depth) if i % every == every - 1])
        return _meta(lambda: SamVisionEncoder(cfg)), torch.zeros(1, 3, side, side, device="meta")
    if side_sq * side_sq != spec["tokens"]:  # class token + square grid: CLIP-style
        from transformers import CLIPVisionConfig, CLIPVisionModel

        side = round((spec["tokens"] - 1) ** 0.5) * patch
        cfg = CLIPVisionConfig(hidden_size=w, intermediate_size=mlp, num_hidden_layers=depth,
                               num_attention_heads=heads, image_size=side, patch_size=patch)
        cfg._attn_implementation = "eager"
        return _meta(lambda: CLIPVisionModel(cfg)), torch.zeros(1, 3, side, side, device="meta")
    from transformers import SiglipVisionConfig, SiglipVisionModel  # no class token: SigLIP-style

    side = side_sq * patch
    cfg = SiglipVisionConfig(hidden_size=w, intermediate_size=mlp, num_hidden_layers=depth,
                             num_attention_heads=heads, image_size=side, patch_size=patch,
                             vision_use_head=False)
    cfg._attn_implementation = "eager"
    return _meta(lambda: SiglipVisionModel(cfg)), torch.zeros(1, 3, side, side, device="meta")


def tower_check(name: str, path: str | None = None) -> Check | None:
    """Formula vs FlopCounterMode for tower ``name``; None when no class here has its structure."""
    import torch

    spec = cm.load_data(path)["towers"][name]
    analytic = cm.tower_flops(spec, name)
    if spec["kind"] == "convnext":
        import timm

        model = _meta(lambda: timm.create_model("convnext_xxlarge", pretrained=False, num_classes=0,
                                                depths=tuple(spec["depths"]), dims=tuple(spec["widths"])))
        x = torch.zeros(1, 3, spec["input"], spec["input"], device="meta")
        what = "timm ConvNeXt, features"
        fn = lambda: model.forward_features(x)  # noqa: E731
    elif spec.get("check") == "pix2struct":
        # the real class at reduced size (2 layers, 64 patches, CPU): the formula is linear in depth
        # and exact in the token count, so its structure is what this checks
        from transformers import Pix2StructVisionConfig, Pix2StructVisionModel

        small = dict(spec, depth=2, tokens=64)
        analytic = cm.tower_flops(small, name)
        p = spec["patch"]
        cfg = Pix2StructVisionConfig(hidden_size=spec["width"], d_ff=spec["mlp"], num_hidden_layers=2,
                                     num_attention_heads=max(1, spec["width"] // 64),
                                     patch_embed_hidden_size=3 * p * p, seq_len=64)
        cfg._attn_implementation = "eager"
        model = Pix2StructVisionModel(cfg).eval()
        x = torch.zeros(1, 64, 2 + 3 * p * p)
        what = "Pix2StructVisionModel at 2 layers x 64 patches (CPU)"
        fn = lambda: model(flattened_patches=x)  # noqa: E731
    elif spec["kind"] == "vit":
        model, x = _vit_module(spec)
        if model is None:
            return None
        what = type(model).__name__ + (" (gated MLP as a 2-matrix MLP of equal FLOPs)" if spec.get("mlp_mats", 2) == 3
                                       else "")
        fn = lambda: model(x)  # noqa: E731
    else:
        return None
    with torch.inference_mode():
        counted, _ = _count(fn)
    return Check(f"tower {name}", analytic, counted, what)


def all_checks(path: str | None = None) -> list[Check]:
    data = cm.load_data(path)
    out = [c for c in (tower_check(t, path) for t in data["towers"]) if c is not None]
    out += [llm_check(n, path) for n in data["llms"]]
    return out
