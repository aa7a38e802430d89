"""Real-code self-test of the Cambrian-1 adapter (model_wrappers/cambrian/modeling.py).

The model is upstream's ``CambrianLlamaForCausalLM`` built from a tiny config with
its real towers loaded from a local fake hub cache (see
:mod:`vlmeval_encred.model_wrappers.cambrian.tiny`).  Outputs are compared through
upstream's own ``generate()``: it is the only entry point that feeds the SVA
layers *inside* the LLM (its ``forward`` reads their inputs from attributes
``generate()`` sets), so a plain ``forward`` would check the connector only.
``run`` returns the greedy tokens and the logits of every decoding step.

``run_then_zero`` is the authors' masking on the unmasked model: every tower
runs, the masked towers' projected features (after ``mm_projector_aux_i``) are
zeroed where ``rearrange_vision_tower_features_inference`` receives them, and
the global context (mean of projected tower 0) is left as it was computed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from vlmeval_encred.realcode.checks import RealCodeSelfTest

IMAGE_TOKEN_INDEX = -200          # cambrian.constants.IMAGE_TOKEN_INDEX
NEW_TOKENS = 3


def ensure_importable() -> Path:
    """Put the real Cambrian source on ``sys.path`` (once) and import it; clear errors otherwise."""
    from vlmeval_encred.recipes import EnvironmentMismatch, check_requires
    from vlmeval_encred.registry import bases
    from vlmeval_encred.upstream import forget_modules, import_root

    spec = bases("cambrian")[0]  # the catalog says which versions the upstream code needs
    check_requires(spec.requires, what="Cambrian-1's upstream code", recipe=spec.recipe)
    root = import_root("cambrian")
    mod = sys.modules.get("cambrian")
    if mod is not None and not str(getattr(mod, "__file__", "")).startswith(str(root)):
        forget_modules("cambrian")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        import cambrian  # noqa: F401
        import cambrian.model.builder  # noqa: F401
    except ImportError as exc:
        raise EnvironmentMismatch(f"Cambrian-1's upstream code at {root} does not import: {exc}; install "
                                  "model_wrappers/cambrian/recipe.txt") from exc
    return root


class CambrianSelfTest(RealCodeSelfTest):
    family = "cambrian"
    recipe = "cambrian"
    upstream = ("cambrian",)
    modes = ("zero", "zero_context", "drop")
    drop_equals_zero = False

    def __init__(self, flavor: str = "llama") -> None:
        self.flavor = flavor
        self.hub: Path | None = None
        self.first = "siglip"

    def import_upstream(self) -> str:
        root = ensure_importable()
        import transformers

        return f"cambrian from {root} (transformers {transformers.__version__})"

    def build(self, workdir: Path) -> Any:
        from .tiny import TinySpec, build_tiny_model, write_fake_hub

        self.hub = write_fake_hub(Path(workdir) / "hf-hub")
        model = build_tiny_model(self.hub, TinySpec(flavor=self.flavor))
        self.first = self.encoders(model)[0]
        return model

    def encoders(self, model: Any) -> list[str]:
        from .modeling import ADAPTER

        return ADAPTER.names(model)

    def tower_modules(self, model: Any) -> dict[str, Any]:
        return dict(zip(self.encoders(model), model.get_vision_tower_aux_list()))

    def fresh(self, model: Any) -> Any:
        """A deep copy that shares the tower modules: masking replaces entries of the copy's
        tower list and never changes a tower, and copying 13M tower parameters 60 times is
        most of this test's time."""
        import copy

        return copy.deepcopy(model, memo={id(t): t for t in model.get_vision_tower_aux_list()})

    def runs_anyway(self, masked: tuple[str, ...], mode: str) -> dict[str, str]:
        if mode == "zero" and self.first in masked:
            return {self.first: "mode 'zero' keeps tower 0 for the SVA global context, as the authors did"}
        return {}

    def mask(self, model: Any, masked: tuple[str, ...], mode: str) -> Any:
        from vlmeval_encred.masking import MaskSpec
        from .modeling import ADAPTER

        return ADAPTER.apply(model, MaskSpec(tuple(masked), mode), "cambrian-tiny")

    @staticmethod
    def inputs() -> tuple[Any, list[Any], list[tuple[int, int]]]:
        """One prompt with the image at position 4 (= config.image_position) and a wide image,
        so that unpadding drops query rows and window masks are partly False."""
        import torch

        from .tiny import CLIP_PX, CONVNEXT_PX, DINO_PX, SIGLIP_PX

        g = torch.Generator().manual_seed(7)
        ids = torch.tensor([[1, 5, 6, 7, IMAGE_TOKEN_INDEX, 8, 9, 10]])
        images = [torch.randn(1, 3, px, px, generator=g) for px in (SIGLIP_PX, CLIP_PX, DINO_PX, CONVNEXT_PX)]
        return ids, images, [(64, 40)]

    def run(self, model: Any) -> Any:
        import torch

        ids, images, sizes = self.inputs()
        with torch.inference_mode():
            out = model.generate(ids, images=images, image_sizes=sizes, max_new_tokens=NEW_TOKENS,
                                 do_sample=False, num_beams=1, output_scores=True, return_dict_in_generate=True)
        return [out.sequences, torch.stack(out.scores)]

    def run_then_zero(self, model: Any, masked: tuple[str, ...]) -> Any:
        import torch

        idx = {i for i, n in enumerate(self.encoders(model)) if n in masked}
        original = model.rearrange_vision_tower_features_inference

        def authors(features, *args, **kwargs):
            return original([torch.zeros_like(f) if i in idx else f for i, f in enumerate(features)],
                            *args, **kwargs)

        model.rearrange_vision_tower_features_inference = authors
        return self.run(model)


SELFTEST = CambrianSelfTest()
