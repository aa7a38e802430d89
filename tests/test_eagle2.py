"""Eagle2 (model_wrappers/eagle2/modeling.py) on a tiny stand-in of the nvidia/Eagle2-9B remote code.

The stand-in (tests/standins/eagle2/) follows the remote code's module and class
names, attributes and forward contracts for both fusion layouts of
``vision_config.moe_version_type`` (see its package docstring); the 9B
checkpoint and its code cannot exist here.  Loading is the one thing replaced:
``EncredEagle2.load_checkpoint`` (``AutoModel.from_pretrained(..., trust_remote_code=True)``)
returns the stand-in model and a tiny tokenizer instead.  Everything after it --
masking, tiling, the remote code's ``chat``/``generate``, the sweep -- runs for real.
Runs under the base environment (transformers 5.x) and the ``eagle2`` recipe
(transformers 4.39.2, the range the remote code asserts).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from standins.eagle2.tiny import LAYOUTS, TILE, build
from vlmeval_encred.masking import MaskError, MaskSpec
from vlmeval_encred.model_wrappers.eagle2 import (ADAPTER, Eagle2Sweep, ZeroTower, choose_grid, dynamic_tiles,
                                                  layout_of, tile_policy)
from vlmeval_encred.model_wrappers.eagle2.selftest import Eagle2Runs, towers
from vlmeval_encred.realcode.checks import run_selftest

pytestmark = pytest.mark.envs("base", "eagle2")

TILES = 5  # e.g. 2x2 dynamic tiles + thumbnail


@pytest.fixture(scope="module", params=LAYOUTS)
def standin(request):
    model, tok = build(request.param)
    return request.param, model, tok


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(TILES, 3, TILE, TILE, generator=torch.Generator().manual_seed(1))


def assert_every_subset_checked(results) -> None:
    """No check failed, and every subset got the three checks (shared with the real-code test)."""
    failed = [r.line() for r in results if not r.ok]
    assert not failed, "\n".join(failed)
    checks = {(r.check, r.subject) for r in results}
    for subset in ("siglip", "convnext", "siglip,convnext"):
        for check in ("not_called", "params_freed", "zero_equals_run_then_zero"):
            assert (check, f"mask={subset} mode=zero") in checks


# --------------------------------------------------------------------------- adapter, both layouts

def test_encoders_of_both_layouts(standin):
    """Fails before the fix: the adapter rejected moe_version_type='convnext_512_siglip_448'."""
    layout, model, _ = standin
    assert layout_of(model) == layout
    infos = ADAPTER.encoders(model)
    if layout == "all_tiling":  # both towers on the 4x4 grid
        assert [(e.name, e.output_shape) for e in infos] == [("siglip", (16, 6)), ("convnext", (16, 10))]
    else:  # SigLIP 4x4 before its pixel shuffle; ConvNeXt already on the shuffled 2x2 grid
        assert [(e.name, e.output_shape) for e in infos] == [("siglip", (16, 6)), ("convnext", (4, 10))]
        assert model.mlp1[0].normalized_shape == (10 + 4 * 6,)


def test_other_layouts_and_models_rejected(standin):
    _, model, _ = standin
    m = copy.deepcopy(model)
    m.vision_model.vision_model.moe_version_type = "seq_concat"
    with pytest.raises(MaskError, match="fusion layouts are None / 'all_tiling' and 'convnext_512_siglip_448'"):
        ADAPTER.encoders(m)
    if layout_of(model) == "convnext_512_siglip_448":
        wrong = copy.deepcopy(model)
        wrong.mlp1[0] = torch.nn.LayerNorm(40)
        with pytest.raises(MaskError, match=r"LayerNorm spans 40 channels, the towers give convnext 10 \+ 4 x siglip 6"):
            ADAPTER.encoders(wrong)
    single = copy.deepcopy(model)
    single.vision_model = torch.nn.Linear(2, 2)
    with pytest.raises(MaskError, match="only the multi-backbone"):
        ADAPTER.encoders(single)
    with pytest.raises(MaskError, match="does not support mask mode 'drop'"):
        ADAPTER.apply(copy.deepcopy(model), MaskSpec(("siglip",), "drop"))


class StandinSelfTest(Eagle2Runs):
    """The family-independent checks of vlmeval_encred/realcode/checks.py, on the stand-in.

    Not registered in realcode.SELFTESTS: ``encred doctor`` runs real upstream code only,
    and Eagle2's exists only inside the checkpoint."""

    family, recipe, modes = "eagle2", "eagle2", ("zero",)

    def __init__(self, layout: str) -> None:
        self.layout = layout
        self.px = torch.randn(TILES, 3, TILE, TILE, generator=torch.Generator().manual_seed(2))

    def import_upstream(self) -> str:
        return f"stand-in of the nvidia/Eagle2-9B remote code, layout {self.layout}"

    def build(self, workdir: Path) -> Any:
        return build(self.layout)[0]

    def encoders(self, model: Any) -> list[str]:
        return ADAPTER.names(model)

    def tower_modules(self, model: Any) -> dict[str, Any]:
        return towers(model)

    def mask(self, model: Any, masked: tuple[str, ...], mode: str) -> Any:
        return ADAPTER.apply(model, MaskSpec(masked, mode), f"standin-{self.layout}")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_realcode_checks_on_standin(layout, tmp_path):
    """Masked tower never called, zero == run-then-zero (bit for bit), parameters freed: every subset."""
    assert_every_subset_checked(run_selftest(StandinSelfTest(layout), tmp_path))


def test_zero_tower_keeps_upstream_contract(standin, pixels):
    layout, model, _ = standin
    m = copy.deepcopy(model)
    rep = ADAPTER.apply(m, MaskSpec(("convnext",), "zero"), "tiny")
    slot = m.vision_model.vision_model.vision_towers[1]
    assert isinstance(slot, ZeroTower) and slot.name == "convnext" and slot.input_image_size == 32
    assert rep.released_params > 0 and sum(p.numel() for p in slot.parameters()) == 0
    with torch.no_grad():
        out = m.vision_model(pixel_values=pixels).last_hidden_state
    if layout == "all_tiling":
        assert out.shape == (TILES, 16, 16) and (out[..., 6:] == 0).all() and (out[..., :6] != 0).any()
    else:
        assert out["convnext"].shape == (TILES, 4, 10) and (out["convnext"] == 0).all()


@pytest.mark.parametrize("name", ["siglip", "convnext"])
def test_zero_is_at_the_layernorm_input_not_removal(standin, pixels, name):
    """What 'zero' means with the LayerNorm-first mlp1, per layout and tower (docs/masking.md):
    the masked tower's channels are zero where mlp1's LayerNorm reads them, so they leave it as
    -mean/std * gamma + beta (not zero), and the kept channels are normalised with statistics
    that include the zeros -- not what normalising the kept channels alone would give."""
    layout, model, _ = standin
    m = copy.deepcopy(model)
    ADAPTER.apply(m, MaskSpec((name,), "zero"), "tiny")
    captured = {}
    m.mlp1[0].register_forward_hook(lambda _m, i, o: captured.update(inp=i[0], out=o))
    with torch.no_grad():
        m.extract_feature(pixels)
    x, ln = captured["inp"], m.mlp1[0]
    width = x.shape[-1]
    if layout == "all_tiling":  # shuffled channels: 4 blocks of [siglip 6 | convnext 10]
        block = torch.arange(16)
        own = block < 6 if name == "siglip" else block >= 6
        cols = torch.cat([own] * 4)
    else:  # [4 x siglip 6 | convnext 10]
        cols = torch.arange(width) < 24 if name == "siglip" else torch.arange(width) >= 24
    assert (x[..., cols] == 0).all() and (x[..., ~cols] != 0).any()
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    expected = (-mean / torch.sqrt(var + ln.eps)) * ln.weight[cols] + ln.bias[cols]
    assert torch.allclose(captured["out"][..., cols], expected, atol=1e-5)
    assert (captured["out"][..., cols].abs() > 0).any()
    kept = torch.nn.functional.layer_norm(x[..., ~cols], (int((~cols).sum()),), ln.weight[~cols], ln.bias[~cols],
                                          ln.eps)
    assert not torch.allclose(captured["out"][..., ~cols], kept, atol=1e-3)


def test_token_budget_columns_are_each_encoders_channels_at_mlp1(standin, pixels):
    """The fusion stage's per-encoder features (docs/tokens.md, Eagle2): the columns of mlp1's input
    that _visual_columns assigns to an encoder are exactly those that masking that encoder zeroes."""
    from vlmeval_encred.model_wrappers.eagle2.modeling import _visual_columns

    _, model, _ = standin
    cols = _visual_columns(model)
    assert sorted(torch.cat(list(cols.values())).tolist()) == list(range(model.mlp1[0].normalized_shape[0]))
    for name in ("siglip", "convnext"):
        m = copy.deepcopy(model)
        ADAPTER.apply(m, MaskSpec((name,), "zero"), "tiny")
        seen = {}
        m.mlp1.register_forward_pre_hook(lambda _m, a: seen.__setitem__("x", a[0]))
        with torch.no_grad():
            m.extract_feature(pixels)
        zero = (seen["x"] == 0).flatten(0, 1).all(0).nonzero().flatten().tolist()
        assert zero == cols[name].tolist()


# --------------------------------------------------------------------------- preprocessing

def test_nvidia_tiling_vs_internvl_for_1024x768():
    from PIL import Image

    img = Image.new("RGB", (1024, 768), (10, 20, 30))
    assert choose_grid(1024, 768, 448, max_num=6, rule="nvidia") == (3, 2)
    assert len(dynamic_tiles(img, 448, max_num=6, rule="nvidia")) == 7  # 3x2 + thumbnail
    assert len(dynamic_tiles(img, 448, max_num=6, rule="nvidia", upscale=True)) == 7  # NVIDIA doubles first
    assert choose_grid(1024, 768, 448, max_num=12, rule="internvl") == (4, 3)
    assert len(dynamic_tiles(img, 448, max_num=12, rule="internvl")) == 13  # the old default
    assert len(dynamic_tiles(Image.new("RGB", (448, 448)), 448)) == 1  # one tile: no thumbnail
    with pytest.raises(ValueError, match="tiling rule 'area'"):
        choose_grid(10, 10, rule="area")


def test_tiles_are_bicubic_crops():
    from PIL import Image

    img = Image.effect_mandelbrot((300, 100), (-2, -1, 1, 1), 50).convert("RGB")
    tiles = dynamic_tiles(img, 64, max_num=6, rule="nvidia")
    cols, rows = choose_grid(300, 100, 64, max_num=6, rule="nvidia")
    big = img.resize((64 * cols, 64 * rows), Image.BICUBIC)
    assert len(tiles) == cols * rows + 1
    assert tiles[1].tobytes() == big.crop((64, 0, 128, 64)).tobytes()
    assert tiles[-1].tobytes() == img.resize((64, 64), Image.BICUBIC).tobytes()


def test_per_dataset_table_from_catalog():
    from vlmeval_encred.registry import get_base

    base = get_base("eagle2_9b")
    tiling = {k: base.loader[k] for k in ("tiling", "max_num", "max_num_by_dataset", "no_upscale_datasets")}
    got = {d: tile_policy(d, **tiling) for d in ("MMVP", "ChartQA_TEST", "DocVQA_VAL", "InfoVQA_TEST",
                                                 "OCRBench", "AI2D_TEST", "MMMU_DEV_VAL", None)}
    assert {d: (p.rule, p.max_num, p.upscale) for d, p in got.items()} == {
        "MMVP": ("nvidia", 6, True), "ChartQA_TEST": ("nvidia", 12, True), "DocVQA_VAL": ("nvidia", 18, True),
        "InfoVQA_TEST": ("nvidia", 24, False), "OCRBench": ("nvidia", 24, True), "AI2D_TEST": ("nvidia", 6, False),
        "MMMU_DEV_VAL": ("nvidia", 12, True), None: ("nvidia", 6, True)}
    old = tile_policy("DocVQA_VAL", **{**tiling, "tiling": "internvl", "max_num": None})
    assert (old.rule, old.max_num, old.upscale) == ("internvl", 12, False)
    with pytest.raises(ValueError, match=r"max_num_by_dataset row \[12, 'DocVQA'\]"):
        tile_policy("x", max_num_by_dataset=[[12, "DocVQA"]])
    with pytest.raises(ValueError, match="tiling='bilinear'"):
        tile_policy("x", tiling="bilinear")


def test_catalog_entry():
    from vlmeval_encred.registry import entries, get_base

    b = get_base("eagle2_9b")
    assert b.encoders == ("siglip", "convnext") and b.modes == ("zero",) and len(entries(base="eagle2_9b")) == 4
    assert dict(b.requires) == {"transformers": ">=4.37.2,<=4.39.2"} and b.recipe == "eagle2"
    from vlmeval_encred.recipes import requirements

    pins = {r.name: str(r.specifier) for r in requirements("eagle2")}
    from packaging.specifiers import SpecifierSet

    assert "4.39.2" in SpecifierSet(b.requires["transformers"]) and pins["transformers"] == "==4.39.2"


# --------------------------------------------------------------------------- the VLMEvalKit wrapper

def wrapper_class(layout: str, seed: int = 0, builder: Any = None) -> type:
    """EncredEagle2 whose checkpoint loading returns the stand-in (the one thing replaced); ``builder``
    (seed -> (model, tokenizer)) replaces the stand-in, e.g. by the real-code tiny model."""
    from vlmeval_encred.model_wrappers.eagle2 import EncredEagle2

    class StandinEagle2(EncredEagle2):
        @staticmethod
        def load_checkpoint(model_path, dtype, device):
            model, tok = builder(seed) if builder is not None else build(layout, seed)
            return model.to(dtype=dtype, device=device), tok

    return StandinEagle2


def test_requires_checked_before_any_weights_load(monkeypatch):
    """Under transformers outside 4.37.2-4.39.2 (base: 5.x) a masked entry fails first, naming versions."""
    import transformers
    from packaging.specifiers import SpecifierSet

    from vlmeval_encred.model_wrappers.eagle2 import EncredEagle2
    from vlmeval_encred.recipes import EnvironmentMismatch
    from vlmeval_encred.registry import entries

    entry = next(e for e in entries(base="eagle2_9b") if e.masked == ("convnext",))
    loads = []

    def no_load(*args):
        loads.append(args)
        raise RuntimeError("load_checkpoint reached")

    monkeypatch.setattr(EncredEagle2, "load_checkpoint", staticmethod(no_load))
    have = transformers.__version__
    if have in SpecifierSet(">=4.37.2,<=4.39.2"):  # the eagle2 environment: the check passes
        with pytest.raises(RuntimeError, match="load_checkpoint reached"):
            EncredEagle2(**entry.kwargs())
        assert loads
    else:
        with pytest.raises(EnvironmentMismatch, match=rf"transformers {have} is installed, eagle2_9b needs "
                                                      r"transformers>=4.37.2,<=4.39.2.*eagle2/recipe\.txt"):
            EncredEagle2(**entry.kwargs())
        assert not loads


def _images(tmp_path: Path) -> list[str]:
    from PIL import Image

    paths = []
    for i, size in enumerate([(60, 40), (28, 28), (90, 30)]):
        p = tmp_path / f"img{i}.png"
        Image.effect_mandelbrot(size, (-2 + 0.3 * i, -1, 1, 1), 30 + 10 * i).convert("RGB").save(p)
        paths.append(str(p))
    return paths


QUESTIONS = ["What is in the image?", "Which colour is the chart?", "Answer the question using a single word."]
GEN = dict(max_new_tokens=10, torch_dtype="float32", device="cpu", image_size=TILE)


def test_wrapper_tiling_keyword(tmp_path):
    from PIL import Image

    p = tmp_path / "wide.png"
    Image.new("RGB", (1024, 768), (200, 10, 10)).save(p)
    msg = [dict(type="image", value=str(p)), dict(type="text", value="What?")]
    nvidia = wrapper_class("all_tiling")(image_size=448, torch_dtype="float32", device="cpu")
    internvl = wrapper_class("all_tiling")(image_size=448, torch_dtype="float32", device="cpu", tiling="internvl")
    assert nvidia.build_inputs(msg, "MMVP")[0].shape == (7, 3, 448, 448)
    assert internvl.build_inputs(msg, "MMVP")[0].shape == (13, 3, 448, 448)


def assert_sweep_equals_per_variant(cls: type, tmp_path: Path) -> None:
    """Greedy, fp32, CPU: the sweep's answers (encoders once, shared-prefix decoder) equal each masked
    variant's own generate_inner, string for string, on every subset; the decoder really shared the
    chat template's prefix.  Shared by the stand-in test and the real-code one."""
    from vlmeval_encred.registry import entries
    from vlmeval_encred.sweep.decoding import collect
    from vlmeval_encred.sweep.protocol import support_for

    subsets = [e.masked for e in entries(base="eagle2_9b")]
    variants = {s: cls(mask=s, encred_base="eagle2_9b", **GEN) for s in subsets}
    sweeper = cls(encred_base="eagle2_9b", **GEN)
    support = support_for(sweeper)
    assert isinstance(support, Eagle2Sweep) and support.batched_decode
    encoders = ADAPTER.names(sweeper.model)
    answers = []
    with collect() as stats:
        for path, q in zip(_images(tmp_path), QUESTIONS):
            message = [dict(type="image", value=path), dict(type="text", value=q)]
            calls, handles = {}, []
            for n, t in towers(sweeper.model).items():
                handles.append(t.register_forward_hook(lambda *_a, _n=n: calls.__setitem__(_n, calls.get(_n, 0) + 1)))
            inputs = support.prepare(sweeper, message, "MMVP")
            feats = support.encode(sweeper, inputs, encoders)
            assert calls == {"siglip": 1, "convnext": 1}  # each encoder once for all subsets
            per_subset = [{n: (None if n in s else feats[n]) for n in encoders} for s in subsets]
            swept = support.fuse_and_generate(sweeper, inputs, per_subset, "zero")
            for h in handles:
                h.remove()
            assert calls == {"siglip": 1, "convnext": 1}  # fusion replays, never re-runs
            direct = [variants[s].generate_inner(message, dataset="MMVP") for s in subsets]
            assert swept == direct
            answers.extend(direct)
    assert len(set(answers)) > 1  # the masks change the answers: equality above is not vacuous
    # the answers came from the shared-prefix decoder, which found the ChatML system prompt shared
    assert stats.calls == len(QUESTIONS) and stats.rows == len(QUESTIONS) * len(subsets)
    assert stats.prefix_tokens > 0 and stats.prefilled_tokens < stats.prompt_tokens
    assert stats.prefix_runs == 1  # the same system prompt every sample: its cache is reused


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sweep_equals_per_variant_runs(layout, tmp_path):
    assert_sweep_equals_per_variant(wrapper_class(layout), tmp_path)


def test_sweep_keeps_generate_when_not_plain_greedy(tmp_path):
    """A repetition penalty is not plain greedy: fuse() refuses with the reason, and
    fuse_and_generate keeps the remote code's generate (answers still equal the variants')."""
    from vlmeval_encred.model_wrappers.eagle2.modeling import greedy_refusal
    from vlmeval_encred.sweep.decoding import collect

    cls = wrapper_class("convnext_512_siglip_448")
    gen = dict(GEN, repetition_penalty=1.3)
    sweeper, variant = cls(encred_base="eagle2_9b", **gen), cls(mask=("siglip",), encred_base="eagle2_9b", **gen)
    assert "repetition_penalty" in greedy_refusal(sweeper.model.language_model, sweeper.gen_kwargs)
    assert greedy_refusal(sweeper.model.language_model, cls(encred_base="eagle2_9b", **GEN).gen_kwargs) is None
    support = sweeper.sweep_support
    message = [dict(type="image", value=_images(tmp_path)[0]), dict(type="text", value=QUESTIONS[0])]
    inputs = support.prepare(sweeper, message, "MMVP")
    feats = support.encode(sweeper, inputs, ["siglip", "convnext"])
    with pytest.raises(ValueError, match="repetition_penalty"):
        support.fuse(sweeper, inputs, [{"siglip": None, "convnext": feats["convnext"]}], "zero")
    with collect() as stats:
        swept = support.fuse_and_generate(sweeper, inputs, [{"siglip": None, "convnext": feats["convnext"]}], "zero")
    assert stats.calls == 0 and swept == [variant.generate_inner(message, dataset="MMVP")]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_engine_sweep_equals_vlmevalkit_inference(layout, tmp_path, monkeypatch):
    """`run_sweep` (prediction files for all four variants in one pass) against VLMEvalKit's own
    ``infer_data_job`` run per variant, on a local MCQ dataset: same prediction files."""
    from conftest import write_mcq_tsv
    from vlmeval.dataset import build_dataset
    from vlmeval.inference import infer_data_job
    from vlmeval.smp import load

    from vlmeval_encred.registry import entries, get_base
    from vlmeval_encred.sweep.engine import run_sweep

    ds = "EncredEagle2_MCQ"
    lmu = tmp_path / "LMUData"
    lmu.mkdir()
    write_mcq_tsv(lmu / f"{ds}.tsv", n=3)
    monkeypatch.setenv("LMUData", str(lmu))
    monkeypatch.setenv("PRED_FORMAT", "xlsx")
    cls = wrapper_class(layout)
    base, chosen = get_base("eagle2_9b"), entries(base="eagle2_9b")
    rep = run_sweep(base, chosen, [ds], str(tmp_path / "sweep"), progress=False,
                    model=cls(encred_base=base.name, **GEN))
    d = rep.datasets[0]
    assert d.encoder_calls == {"siglip": 3, "convnext": 3} and d.decode_calls == 3
    seen = set()
    for e in chosen:
        work = tmp_path / "ref" / e.name
        work.mkdir(parents=True)
        infer_data_job(cls(mask=e.masked, encred_base=base.name, **GEN), work_dir=str(work), model_name=e.name,
                       dataset=build_dataset(ds))
        got = load(str(tmp_path / "sweep" / e.name / f"{e.name}_{ds}.xlsx"))
        want = load(str(work / f"{e.name}_{ds}.xlsx"))
        assert list(got["prediction"]) == list(want["prediction"]), e.name
        seen.update(got["prediction"])
    assert len(seen) > 1
