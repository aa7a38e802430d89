"""`encred profile --plan`: the cost model's arithmetic on configs small enough to check by hand,
the data file's consistency with the registry, and the plan for every registered base.
No model is loaded (the real checkpoints cannot exist here; the plan needs only their numbers)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from vlmeval_encred.sweep import costmodel as cm
from conftest import HANG_GUARD


def test_vit_and_convnext_flops_by_hand():
    # embed 2*4*3*1*2 = 48; blocks 2*4*(4*2*2 + 2*2*8) = 384; attention 4*4*4*2 = 128
    assert cm.vit_flops(tokens=4, width=2, depth=1, mlp=8, mlp_mats=2, patch=1) == 560
    # two blocks, one windowed (2-token windows over 4 tokens): 48 + 768 + 128 + 4*4*2*2
    assert cm.vit_flops(tokens=4, width=2, depth=2, mlp=8, patch=1, window=2, window_tokens=4, window_layers=1) == 1008
    # stem 2*2*2*48*2 = 768; stage 0 (2x2): 2*4*(49*2 + 8*4) = 1040; downsample 2*1*4*2*4 = 64;
    # stage 1 (1x1): 2*1*(49*4 + 8*16) = 648
    assert cm.convnext_flops(input=8, depths=[1, 1], widths=[2, 4]) == 2520
    with pytest.raises(cm.CostDataError, match="window_tokens"):
        cm.vit_flops(tokens=4, width=2, depth=1, mlp=8, window_layers=1)
    with pytest.raises(cm.CostDataError, match="unknown kind"):
        cm.tower_flops({"kind": "resnet"}, "r50")


LLM = cm.LLM(layers=1, hidden=4, intermediate=8, heads=2, kv_heads=1, vocab=10)


def test_llm_flops_and_bytes_by_hand():
    assert LLM.linear_params == 2 * 16 + 2 * 4 * 2 + 3 * 4 * 8 == 144
    # 2*144*3 + 4*1*4*(1+2+3) + 2*4*10
    assert LLM.prefill_flops(3) == 864 + 96 + 80
    # two tokens after three cached ones: attention sees 4 and 5 keys
    assert LLM.prefill_flops(2, offset=3, logits=False) == 576 + 16 * 9
    assert LLM.decode_step_flops(5) == 288 + 16 * 6 + 80
    assert LLM.weight_bytes == 2 * (144 + 40)
    assert LLM.kv_bytes_per_token == 2 * 2 * 1 * 1 * 2


def _toy():
    base = cm.BaseCost("toy", {"a": 100.0, "b": 300.0}, {"a": "ta", "b": "tb"}, LLM, "toy_llm", connector_in=0,
                       prefix_tokens=1, image_tokens=2, suffix_tokens=0)
    ds = cm.Dataset("D", questions=10, question_tokens=1, answer_tokens=2)
    gpu = cm.GPU("toy", peak_tflops=1e-9, bandwidth_gbs=1e-7, memory_gb=1, mfu=1.0, mbu=1.0)  # 1000 FLOP/s, 100 B/s
    return base, ds, gpu, [("a", "b"), ("a",), ("b",), ()]


def test_plan_by_hand():
    base, ds, gpu, lattice = _toy()
    assert base.prompt_tokens(ds) == 4 and base.connector_flops() == 64
    p = cm.plan(base, gpu, [ds], lattice)
    prefill4 = 2 * 144 * 4 + 16 * 10 + 80  # 1392
    step4 = 288 + 16 * 5 + 80  # 448: one decoding step (answer = token + end of sequence)
    per_sample = dict(towers=400 + 100 + 300, connector=4 * 64, prefill=4 * prefill4, decode=4 * step4)
    assert p.per_variant.flops == {k: 10 * v for k, v in per_sample.items()}
    assert p.sweep.flops == {k: 10 * v for k, v in dict(per_sample, towers=400).items()}
    # shared prefix: each subset prefills 3 tokens after 1 cached; the prefix once for the dataset
    rest = 2 * 144 * 3 + 16 * (3 * 1 + 6) + 80
    assert p.sweep_shared.flops["prefill"] == 10 * 4 * rest + (2 * 144 + 16 * 1)
    # roofline: a batch-1 prefill reads 368 weight bytes (3.68 s at 100 B/s) > 1.392 s of compute
    assert math.isclose(p.per_variant.seconds["prefill"], 10 * 4 * 3.68)
    assert math.isclose(p.sweep.seconds["prefill"], 10 * 5.568)  # batched: compute-bound
    # decoding: four batch-1 steps read the weights four times; the sweep's one step reads them once
    assert math.isclose(p.per_variant.seconds["decode"], 10 * 4 * (368 + 8 * 5) / 100)
    assert math.isclose(p.sweep.seconds["decode"], 10 * (368 + 4 * 8 * 5) / 100)
    assert p.sweep.dominant()[0] == "prefill"
    assert cm.lattice_flop_ratio({"a": 100, "b": 300}, 1000, lattice) == 4800 / 4400


def test_data_file_matches_registry_and_errors_are_specific(tmp_path):
    from vlmeval_encred.registry import get_base

    with pytest.raises(cm.CostDataError, match="same names, same order"):
        cm.base_cost("eagle_x5", ("convnext", "clip", "sam", "eva02", "pix2struct"))
    with pytest.raises(cm.CostDataError, match="no question count for dataset 'Nope'"):
        cm.dataset("Nope")
    with pytest.raises(cm.CostDataError, match="no architecture numbers for base 'nope'"):
        cm.base_cost("nope")
    with pytest.raises(cm.CostDataError, match="unknown reference GPU"):
        cm.gpu("tpu")
    eagle = cm.base_cost("eagle_x5", get_base("eagle_x5").encoders)
    # architecture sanity: ConvNeXt-XXL at 1024 px is 16x its 256-px cost (~198 GMACs per timm's table)
    assert 0.35e12 < cm.convnext_flops(256, [3, 4, 30, 3], [384, 768, 1536, 3072]) < 0.45e12
    assert math.isclose(eagle.towers["convnext"], cm.convnext_flops(1024, [3, 4, 30, 3], [384, 768, 1536, 3072]))
    assert 6.4e9 < eagle.llm.linear_params < 6.6e9  # Vicuna-7B without embeddings


def test_plan_for_every_registered_base_and_paper15():
    """Every base the package registers has its numbers; paper15 resolves (CV-Bench's two parts
    included) and every dataset has a question count."""
    from vlmeval_encred.commands.profile import build_plans
    from vlmeval_encred.registry import bases
    from vlmeval_encred.sweep.planreport import render

    names = [b.name for b in bases() if b.wrapper.startswith("vlmeval_encred.")]  # not test stand-ins
    assert {"eagle_x5", "cambrian1_8b", "imof_13b", "eagle2_9b", "deepseek_vl_7b_hf", "encred_tiny"} <= set(names)
    plans = build_plans(",".join(names), "all", "paper15", "a100_80gb_bf16")
    assert [p.base.name for p in plans] == names
    assert {d.name for d in plans[0].datasets} >= {"CV-Bench-2D", "CV-Bench-3D", "MMBench_DEV_EN"}
    assert len(plans[0].datasets) == 16
    for p in plans:
        assert len(p.subsets) == 2 ** len(p.base.towers)
        assert p.per_variant.total_flops > p.sweep.total_flops > p.sweep_shared.total_flops > 0
        assert p.per_variant.total_seconds > p.sweep.total_seconds > 0
    by = {p.base.name: p for p in plans}
    # the point of the model: at real sizes the language model dominates and the speed-up is small
    x5 = by["eagle_x5"]
    assert x5.sweep.dominant()[0] == "prefill"
    assert 1.2 < x5.per_variant.total_seconds / x5.sweep.total_seconds < 3
    text = render(plans)
    assert "| eagle_x5 | 32 | 58221 |" in text and "prefill dominates" in text and "of the per-variant GPU time" in text


def test_cli_plan_runs():
    proc = subprocess.run([sys.executable, "-m", "vlmeval_encred.cli", "profile", "--plan", "--model",
                           "eagle_x5,deepseek_vl_7b_hf", "--gpu", "h100_sxm_bf16", "--answer-tokens", "200"],
                          capture_output=True, text=True, timeout=HANG_GUARD)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "H100" in proc.stdout and "| deepseek_vl_7b_hf | 4 |" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "vlmeval_encred.cli", "profile", "--plan", "--data", "NoSuchSet"],
                         capture_output=True, text=True, timeout=HANG_GUARD)
    assert bad.returncode != 0 and "no question count for dataset 'NoSuchSet'" in bad.stderr


def test_formulas_match_flopcounter_on_the_real_classes():
    """Each tower/LLM of costdata.yaml that transformers/timm can build here, on the meta device
    (no weights): FlopCounterMode's count equals the formula's (LLMs: the matrix products outside
    attention, exactly; towers within 2 %: SAM's relative-position terms and neck are not in the
    formula)."""
    from vlmeval_encred.sweep.costcheck import all_checks

    checks = {c.name: c for c in all_checks()}
    assert {"tower clip_l14_448", "tower convnext_xxl_1024", "tower sam_l_1024", "tower eva02_l_det_1024",
            "tower pix2struct_large_2048", "tower siglip_so400m_384", "tower dinov2_g14_378",
            "llm vicuna_7b", "llm llama3_8b", "llm qwen25_7b"} <= set(checks)
    for c in checks.values():
        if c.name.startswith("llm"):
            assert c.counted == c.analytic, c
        else:
            assert 0.99 <= c.ratio <= 1.02, c
