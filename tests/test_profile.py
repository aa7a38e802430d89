"""`encred profile`: per-variant FLOPs/latency/memory relative to the full model, sheet + CSV + PNG.
Runs the tiny random DeepseekVLHybrid on the CPU (peak GPU memory is NaN there by design)."""

from __future__ import annotations

import math


def test_profile_rows_and_outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from vlmeval_encred.registry import get_base
    from vlmeval_encred.sweep.profile import encoder_flops, profile_variants, synthetic_messages, write_outputs
    from vlmeval_encred.sweep.selection import select_entries

    base = get_base("deepseek_vl_tiny_random")
    msgs = synthetic_messages(1, str(tmp_path))
    chosen = select_entries(base, "deepseek_vl_tiny_random_mask_sam,deepseek_vl_tiny_random_mask_siglip_sam")
    rows = profile_variants(base, chosen, msgs, repeats=2, warmup=0)
    assert [r["variant"] for r in rows] == [e.name for e in chosen]  # the reference is measured, not listed
    by = {r["variant"]: r for r in rows}
    enc = encoder_flops(base, msgs)
    assert all(v > 0 for v in enc.values())
    only_siglip = by["deepseek_vl_tiny_random_mask_sam"]
    assert only_siglip["vision_flops"] == enc["siglip"]
    assert math.isclose(only_siglip["vision_flops_rel"], enc["siglip"] / (enc["siglip"] + enc["sam"]))
    none = by["deepseek_vl_tiny_random_mask_siglip_sam"]
    assert none["vision_flops"] == 0 and none["param_bytes_rel"] < only_siglip["param_bytes_rel"] < 1
    assert 0 < none["total_flops_rel"] < 1 and none["latency_ms"] > 0
    paths = write_outputs(rows, tmp_path / "prof")
    import pandas as pd

    sheet = pd.read_excel(paths["xlsx"], engine="openpyxl")
    assert list(sheet["variant"]) == [e.name for e in chosen]
    assert paths["csv"].read_text().startswith("variant,")
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
