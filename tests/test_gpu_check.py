"""benchmarks/gpu_check.py, the device check, in its CPU smoke mode (no GPU is needed or used).

The smoke mode runs the same code path as a GPU run -- the random DeepseekVLHybrid built from
transformers' classes and the demo model, the sweep against VLMEvalKit's own per-variant
inference, alternated repeats, the cost model's prediction -- on tiny models and a few samples.
Its figures are not asserted (timings on a shared CPU say nothing); what it computes is.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.envs("base")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    from vlmeval_encred import registry

    spec = importlib.util.spec_from_file_location("encred_gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    bases = {b.name: b for b in registry.bases()}  # the catalogs loaded: what later tests must see
    yield module
    # the check registers its mid-sized/smoke bases in this process (a benchmark runs once); the tests
    # after these must see the catalogs' bases only (test_family_layout compares them with costdata.yaml)
    registry._BASES.clear()
    registry._BASES.update(bases)


def test_smoke_compares_every_answer_and_predicts_per_variant(gpu_check, tmp_path, capsys):
    out = tmp_path / "smoke.json"
    assert gpu_check.main(["--smoke", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["smoke"] and data["device"] == "cpu" and not data["stopped_early"]
    assert data["cost_model_gpu"].startswith("NVIDIA H200")
    by_case = {r["case"]: r for r in data["results"]}
    assert set(by_case) == {"deepseek_vl_hf", "demo"}
    # the original DeepSeek-VL package needs transformers 4.x: listed as not run, with the command that runs it
    assert [s for s in data["skipped"] if s.startswith("deepseek_vl:") and "--env deepseek_vl" in s]
    for r in by_case.values():
        n = len(r["variants"])
        assert n == len(r["predicted"]["per_variant_s"]) >= 3  # k<=1: the full model and each single mask
        # every variant's answer to every question was compared, and fp32 on the CPU is exact
        assert r["answers_compared"] == n * r["samples"] > 0
        assert r["answers_identical"] == r["answers_compared"], r["differing"]
        assert len(r["sweep_s"]) == len(r["per_variant_s"]) == 2  # two alternated repeats of each arm
        assert all(len(v) == 2 for v in r["per_variant_each_s"].values())
        assert r["measured_speedup"] == pytest.approx(min(r["per_variant_s"]) / min(r["sweep_s"]))
        p = r["predicted"]
        assert p["speedup"] == pytest.approx(sum(p["per_variant_s"].values()) / p["sweep_s"])
        assert p["speedup"] > 1  # towers shared: the sweep never costs more than the variants one by one
        full = r["variants"][0]
        assert "_mask_" not in full
        # a masked tower is not run: each single-mask variant is predicted cheaper than the full model
        assert all(p["per_variant_s"][v] < p["per_variant_s"][full] for v in r["variants"][1:])
        assert all(f > 0 for f in p["shape"]["towers"].values())
    printed = capsys.readouterr().out
    assert "SMOKE MODE" in printed and "answers identical (sweep vs per-variant): 6 of 6" in printed
    assert "measured/predicted" in printed


def test_budget_spent_stops_early_and_says_so(gpu_check, tmp_path, capsys):
    out = tmp_path / "early.json"
    assert gpu_check.main(["--smoke", "--cases", "demo", "--budget-s", "0", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["stopped_early"] and data["results"] == []
    assert any("budget" in s for s in data["skipped"])
    assert "STOPPED EARLY" in capsys.readouterr().out


def test_bad_options_are_refused_with_the_reason(gpu_check, monkeypatch):
    with pytest.raises(gpu_check.CheckError, match="unknown case"):
        gpu_check.main(["--smoke", "--cases", "eagle9"])
    import torch

    # stands in for a machine without CUDA (the test machines have none; a GPU machine would)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(gpu_check.CheckError, match="no CUDA device"):
        gpu_check.main(["--device", "cuda"])


@pytest.mark.envs("deepseek_vl")
@pytest.mark.realcode("deepseek_vl", envs=("deepseek_vl",))
def test_smoke_on_the_original_deepseek_vl_classes(gpu_check, tmp_path):
    out = tmp_path / "smoke.json"
    assert gpu_check.main(["--smoke", "--cases", "deepseek_vl", "demo", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    (r,) = data["results"]
    assert r["case"] == "deepseek_vl" and r["answers_compared"] == len(r["variants"]) * r["samples"] > 0
    assert r["answers_identical"] == r["answers_compared"], r["differing"]
    assert r["predicted"]["speedup"] > 1
    # transformers 4.x here: the demo is listed as not run, with the base environment's command
    assert [s for s in data["skipped"] if s.startswith("demo:") and "bash scripts/env.sh python" in s]
