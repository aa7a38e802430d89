"""Cambrian-1 masking (model_wrappers/cambrian/modeling.py) on a tiny stand-in of the SVA model.

The stand-in (tests/standins/cambrian/) mirrors cambrian_arch.py and
vision_sampler.py; 7B+ checkpoints and the GPU cannot exist here.  It needs no
upstream code, so these tests run in the base environment (transformers 5, where
real Cambrian does not import) and in the ``cambrian`` one; there one test also
puts upstream's own ``VisionTokenSampler`` into the stand-in.  The checks on
upstream's complete model are tests/test_cambrian_realcode.py.
"""

from __future__ import annotations

import copy
import itertools
import subprocess
import sys

import pytest
import torch

from standins.cambrian.cambrian_arch import TinyCambrianForCausalLM, tiny_config
from vlmeval_encred.masking import MaskError, MaskSpec, count_params, forward_call_recorder
from vlmeval_encred.model_wrappers.cambrian import ADAPTER, ReleasedTower, ZeroFeatures, short_name
from conftest import HANG_GUARD

NAMES = ["siglip", "clip", "dinov2", "convnext"]

pytestmark = pytest.mark.envs("base", "cambrian")


def _real_sampler():
    from conftest import need_sources
    from vlmeval_encred.model_wrappers.cambrian.selftest import ensure_importable

    need_sources("cambrian")
    ensure_importable()
    from cambrian.model.vision_sampler import VisionTokenSampler

    return VisionTokenSampler


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return TinyCambrianForCausalLM(tiny_config()).eval()


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    images = [torch.randn(2, 3, 32, 32, generator=g) for _ in NAMES]
    return torch.randint(0, 50, (2, 5), generator=g), images, [(40, 20), (40, 20)]


def run(model, inputs):
    ids, images, sizes = inputs
    with torch.no_grad():
        return model(ids, images, sizes)


def masked(base, names, mode):
    m = copy.deepcopy(base)
    return m, ADAPTER.apply(m, MaskSpec(tuple(names), mode), "tiny")


def authors_zero(base, names):
    """Reference: the authors' code path -- every tower runs, masked projected features zeroed
    inside rearrange_vision_tower_features_inference, global context untouched."""
    m = copy.deepcopy(base)
    idx = [NAMES.index(n) for n in names]
    original = m.rearrange_vision_tower_features_inference

    def rearrange(feats, *a, **k):
        feats = [torch.zeros_like(f) if i in idx else f for i, f in enumerate(feats)]
        return original(feats, *a, **k)

    m.rearrange_vision_tower_features_inference = rearrange
    return m


def test_encoders_read_from_config(base):
    infos = ADAPTER.encoders(base)
    assert [e.name for e in infos] == NAMES
    assert [e.output_shape for e in infos] == [(16, 16), (16, 16), (16, 16), (64, 16)]
    assert short_name("facebook/dinov2-giant-res378") == "dinov2"
    assert short_name("siglip/CLIP-ViT-SO400M-14-384") == "siglip"


def test_every_subset_and_mode_resolves(base, inputs):
    ref = run(base, inputs)
    for mode in ADAPTER.modes:
        for k in range(len(NAMES) + 1):
            for subset in itertools.combinations(NAMES, k):
                m, rep = masked(base, subset, mode)
                out = run(m, inputs)
                assert out.shape == ref.shape and torch.isfinite(out).all(), (mode, subset)
                assert rep.spec.masked == subset


@pytest.mark.parametrize("names", [("clip",), ("siglip",), ("siglip", "convnext"), tuple(NAMES)])
def test_zero_is_exactly_the_authors_semantics(base, inputs, names):
    m, _ = masked(base, names, "zero")
    assert torch.allclose(run(m, inputs), run(authors_zero(base, names), inputs), atol=1e-6)


@pytest.mark.parametrize("mode", ["zero", "zero_context", "drop"])
def test_masked_towers_not_run_and_not_resident(base, inputs, mode):
    m = copy.deepcopy(base)
    towers = dict(zip(NAMES, m.get_vision_tower_aux_list()))
    calls, handles = forward_call_recorder(towers)
    before = count_params(m) + sum(count_params(t) for t in towers.values())
    rep = ADAPTER.apply(m, MaskSpec(("siglip", "dinov2"), mode), "tiny")
    run(m, inputs)
    for h in handles:
        h.remove()
    # Tower 0 runs in 'zero' only, for the global context (the authors' semantics need it).
    assert calls == {"siglip": int(mode == "zero"), "clip": 1, "dinov2": 0, "convnext": 1}
    live = m.get_vision_tower_aux_list()
    assert isinstance(live[2], ReleasedTower) and isinstance(m.get_model().mm_projector_aux_2, ZeroFeatures)
    assert isinstance(live[0], ReleasedTower) != (mode == "zero")
    freed = count_params(towers["dinov2"]) + 16 * 14 + 16 + 16 * 16 + 16 + 2 * 16
    if mode != "zero":
        freed += count_params(towers["siglip"]) + 16 * 12 + 16 + 16 * 16 + 16 + 2 * 16
    else:
        assert any("global context" in n for n in rep.notes)
    assert rep.released_params == freed
    assert rep.resident_params == before - freed
    with pytest.raises(RuntimeError, match="released"):
        live[2](inputs[1][2])


def test_zero_context_differs_only_when_tower0_masked(base, inputs):
    z, _ = masked(base, ("clip",), "zero")
    zc, _ = masked(base, ("clip",), "zero_context")
    assert torch.equal(run(z, inputs), run(zc, inputs))
    z, _ = masked(base, ("siglip",), "zero")
    zc, _ = masked(base, ("siglip",), "zero_context")
    assert not torch.allclose(run(z, inputs), run(zc, inputs), atol=1e-4)


def _perturb_tower(model, i):
    """Change everything the SVA attaches to tower i's keys (position embeddings, k/v projections)."""
    with torch.no_grad():
        for mod in model.get_model().modules():
            if hasattr(mod, f"pos_embed_{i}"):
                getattr(mod, f"pos_embed_{i}").add_(3.0)
            if hasattr(mod, f"k_proj_{i}"):
                for p in list(getattr(mod, f"k_proj_{i}").parameters()) + list(getattr(mod, f"v_proj_{i}").parameters()):
                    p.add_(0.5)


def test_drop_is_a_removal_and_differs_from_zero(base, inputs):
    # convnext has 2x2 windows with position embeddings: zero keys still carry them.
    d, _ = masked(base, ("convnext",), "drop")
    z, _ = masked(base, ("convnext",), "zero")
    out_d, out_z = run(d, inputs), run(z, inputs)
    assert not torch.allclose(out_d, out_z, atol=1e-4)
    _perturb_tower(d, 3)
    _perturb_tower(z, 3)
    assert torch.allclose(run(d, inputs), out_d, atol=1e-6)  # dropped keys have no influence at all
    assert not torch.allclose(run(z, inputs), out_z, atol=1e-4)  # zeroed keys do


def test_drop_tower0_zeroes_context_and_all_dropped_is_finite(base, inputs):
    d, _ = masked(base, ("siglip",), "drop")
    out = run(d, inputs)
    _perturb_tower(d, 0)
    assert torch.allclose(run(d, inputs), out, atol=1e-6)
    d, rep = masked(base, tuple(NAMES), "drop")
    assert torch.isfinite(run(d, inputs)).all() and any("no keys" in n for n in rep.notes)


def test_errors_are_specific(base):
    with pytest.raises(MaskError, match="no encoder named 'sam'"):
        masked(base, ("sam",), "zero")
    m, _ = masked(base, ("clip",), "zero")
    with pytest.raises(MaskError, match="already installed"):
        ADAPTER.apply(m, MaskSpec(("dinov2",), "zero"))
    linear = TinyCambrianForCausalLM(tiny_config(mm_projector_type="mlp2x_gelu"))
    with pytest.raises(MaskError, match="only the SVA connector"):
        ADAPTER.encoders(linear)


def test_catalog_entries_carry_trained_templates_and_requirements():
    """Each checkpoint's conversation template as upstream's inference.py lists it; VLMEvalKit's
    wrapper alone would give cambrian-phi3-3b 'chatml_direct'."""
    from vlmeval_encred.model_wrappers.cambrian import conv_mode_for
    from vlmeval_encred.registry import Entry, get_base

    want = {"cambrian1_phi3_3b": "phi3", "cambrian1_8b": "llama_3", "cambrian1_13b": "vicuna_v1",
            "cambrian1_34b": "chatml_direct"}
    for name, conv in want.items():
        b = get_base(name)
        assert b.loader["conv_mode"] == conv == conv_mode_for(b.checkpoint), name
        assert b.recipe == "cambrian" and b.requires == {"transformers": ">=4.37,<4.38"}
        kw = Entry(b, ("clip",)).kwargs()
        assert kw["conv_mode"] == conv and kw["encred_recipe"] == "cambrian"
    assert conv_mode_for("/models/checkpoints/cambrian-phi3-3b/") == "phi3"
    assert conv_mode_for("my-finetune") is None


@pytest.mark.envs("base")
def test_masked_entry_fails_before_loading_under_transformers_5(tmp_path):
    """Under the base environment (transformers 5) a Cambrian entry stops in the wrapper's first
    line, naming the versions and the recipe: no upstream import, no weights."""
    import transformers

    from conftest import explain, run_py, vlmeval_env

    assert transformers.__version__.startswith("5.")
    code = (
        "import sys, transformers\n"
        "transformers.PreTrainedModel.from_pretrained = classmethod(lambda *a, **k: sys.exit('weights loaded'))\n"
        "from vlmeval.config import supported_VLM\n"
        "from vlmeval_encred.recipes import EnvironmentMismatch\n"
        "try:\n"
        "    supported_VLM['cambrian1_phi3_3b_mask_clip']()\n"
        "except EnvironmentMismatch as exc:\n"
        "    print('MISMATCH', exc)\n"
        "assert 'cambrian' not in sys.modules, 'upstream cambrian was imported'\n")
    proc = run_py(["-c", code], tmp_path, vlmeval_env())
    assert proc.returncode == 0, explain(proc)
    line = next(l for l in proc.stdout.splitlines() if l.startswith("MISMATCH"))
    assert f"transformers {transformers.__version__} is installed" in line
    assert "transformers>=4.37,<4.38" in line and "cambrian/recipe.txt" in line and "--env cambrian" in line


def test_catalog_entries():
    from vlmeval_encred.model_wrappers.cambrian import _check_registry
    from vlmeval_encred.registry import entries, get_base

    for name in ("cambrian1_phi3_3b", "cambrian1_8b", "cambrian1_13b", "cambrian1_34b"):
        b = get_base(name)
        assert b.encoders == tuple(NAMES) and b.modes[0] == "zero" and set(b.modes) == set(ADAPTER.modes)
        assert len(entries(base=name)) == 16
    _check_registry("cambrian1_8b", NAMES)
    with pytest.raises(MaskError, match="mm_vision_tower_aux_list gives clip"):
        _check_registry("cambrian1_8b", ["clip", "siglip", "dinov2", "convnext"])


def test_import_is_light():
    code = ("import sys, vlmeval_encred.model_wrappers.cambrian as c; "
            "assert 'vlmeval' not in sys.modules and 'cambrian' not in sys.modules, sorted(sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_GUARD)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.envs("cambrian")
@pytest.mark.realcode("cambrian")
def test_integration_with_real_vision_sampler(inputs):
    sampler = _real_sampler()
    torch.manual_seed(0)
    real = TinyCambrianForCausalLM(tiny_config(num_heads=16, vision_hidden_size=32, hidden_size=32),
                                   sampler_cls=sampler).eval()
    d, _ = masked(real, ("convnext",), "drop")
    z, _ = masked(real, ("convnext",), "zero")
    assert torch.allclose(run(z, inputs), run(authors_zero(real, ("convnext",)), inputs), atol=1e-6)
    out_d = run(d, inputs)
    _perturb_tower(d, 3)
    assert torch.allclose(run(d, inputs), out_d, atol=1e-6)


@pytest.mark.envs("base")
def test_wrapper_classes_build_on_vlmevalkit():
    """One interpreter imports vlmeval (~15 s) and builds the three lazily defined wrapper classes."""
    code = (
        "import vlmeval_encred.model_wrappers.cambrian as c, vlmeval_encred.model_wrappers.imof as i, "
        "vlmeval_encred.model_wrappers.eagle2 as e\n"
        "from vlmeval.vlm.cambrian import Cambrian\nfrom vlmeval.vlm.base import BaseModel\n"
        "from vlmeval_encred.wrapper import EncredMixin\n"
        "assert issubclass(c.EncredCambrian, Cambrian) and c.EncredCambrian is c.EncredCambrian\n"
        "for cls in (c.EncredCambrian, i.EncredIMoF, e.EncredEagle2):\n"
        "    assert issubclass(cls, BaseModel) and issubclass(cls, EncredMixin), cls\n"
        "    assert cls.__module__.startswith('vlmeval_encred.model_wrappers.'), cls.__module__\n"
        "g = EncredMixin.generation_kwargs({'max_new_tokens': 2048}, {})\n"
        "assert g == {'max_new_tokens': 2048, 'do_sample': False, 'num_beams': 1}, g\n"
        "import sys; assert 'cambrian' not in sys.modules and 'llava' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_GUARD,
                          env={**__import__("os").environ, "VLMEVAL_ENCRED_DISABLE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_greedy_obstacle_names_what_the_shared_prefix_decoder_cannot_reproduce():
    """The sweep decodes through the shared-prefix decoder only for plain greedy settings; any
    logits processor or search changes the answers, and the reason is named."""
    from types import SimpleNamespace

    from transformers import GenerationConfig

    from vlmeval_encred.model_wrappers.cambrian.modeling import greedy_obstacle
    from vlmeval_encred.wrapper import EncredMixin

    def wrapper(**over):
        gen = EncredMixin.generation_kwargs({"max_new_tokens": 2048, "use_cache": True}, over)
        return SimpleNamespace(model=SimpleNamespace(generation_config=GenerationConfig(eos_token_id=2)),
                               gen_kwargs=gen)

    assert greedy_obstacle(wrapper()) is None
    assert greedy_obstacle(wrapper(temperature=0.0, top_p=None)) is None  # ignored under greedy
    assert greedy_obstacle(wrapper(repetition_penalty=1.0)) is None
    assert greedy_obstacle(wrapper(do_sample=True, temperature=0.7)) == "do_sample=True"
    assert greedy_obstacle(wrapper(num_beams=3)) == "num_beams=3"
    assert greedy_obstacle(wrapper(repetition_penalty=1.2)) == "repetition_penalty=1.2"
    assert greedy_obstacle(wrapper(no_repeat_ngram_size=3)) == "no_repeat_ngram_size=3"
    assert greedy_obstacle(wrapper(min_new_tokens=4)) == "min_new_tokens=4"
    assert greedy_obstacle(wrapper(max_new_tokens=None)).startswith("no max_new_tokens")
    assert "not generation-config fields" in greedy_obstacle(wrapper(stopping_criteria=[object()]))
