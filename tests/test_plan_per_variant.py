"""`encred profile --plan --per-variant` (per-variant vision / prefill / decode FLOPs and predicted
latency against the full model) and the cluster split comparison `--plan` prints (`--shard-by`).
Analytic: no model is loaded, nothing is timed."""

from __future__ import annotations

import re

import pytest

from vlmeval_encred.cli import main


def _rows(text: str) -> dict[str, list[str]]:
    """variant -> its table cells."""
    out = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| variant") and "---" not in line:
            cells = [c.strip() for c in line.strip("|").split("|")]
            out[cells[0]] = cells
    return out


def _pct(cell: str) -> float:
    return float(cell.rstrip("%"))


def test_full_row_is_1_and_vision_flops_are_the_kept_towers_sum():
    from vlmeval_encred.commands.profile import per_variant_report
    from vlmeval_encred.sweep import costmodel

    text = per_variant_report("eagle_x5", "all", "MME", "A100")
    rows = _rows(text)
    assert len(rows) == 32
    assert rows["eagle_x5"][7] == "1.000" and rows["eagle_x5"][3] == "100.0%"
    data = costmodel.load_data()
    towers = data["bases"]["eagle_x5"]["towers"]
    per = {enc: costmodel.tower_flops(data["towers"][t], t) for enc, t in towers.items()}
    for name, cells in rows.items():
        kept = [] if cells[1] == "(none)" else cells[1].split("+")
        assert float(cells[2]) == pytest.approx(sum(per[k] for k in kept) / 1e12, abs=5e-4), name
    # prefill and decode do not depend on the kept towers (channel concat: same image tokens)
    assert len({cells[4] for cells in rows.values()}) == 1


def test_eagle_x5_convnext_eva02_pair_reproduces_the_papers_efficiency_figures():
    """arXiv 2507.03262: keeping two encoders uses 61.4 % of the vision FLOPs, masking three cuts
    latency by 19.5 %; the cost model gives 60.3 % and -19.1 % for ConvNeXt + EVA-02 (MMBench-length
    prompt, 2-token answer, A100) -- and very different figures for the other pairs."""
    from vlmeval_encred.commands.profile import per_variant_report

    rows = _rows(per_variant_report("eagle_x5", "k=3", "MMBench_DEV_EN", "A100"))
    pair = rows["eagle_x5_mask_clip_sam_pix2struct"]
    assert pair[1] == "convnext+eva02"
    assert _pct(pair[3]) == pytest.approx(60.3, abs=0.5) and _pct(pair[8]) == pytest.approx(-19.1, abs=0.5)
    others = [cells for name, cells in rows.items() if name not in ("eagle_x5", "eagle_x5_mask_clip_sam_pix2struct")]
    assert len(others) == 9 and min(abs(_pct(c[3]) - 60.3) for c in others) < 1  # convnext+sam: 59.5 %
    assert min(_pct(c[3]) for c in others) < 25 and min(_pct(c[8]) for c in others) < -30


def test_cli_per_variant_on_h200(capsys):
    assert main(["profile", "--plan", "--per-variant", "--model", "deepseek_vl_7b_hf", "--data", "MME",
                 "--gpu", "h200"]) == 0
    out = capsys.readouterr().out
    assert "H200" in out and set(_rows(out)) == {"deepseek_vl_7b_hf", "deepseek_vl_7b_hf_mask_siglip",
                                                 "deepseek_vl_7b_hf_mask_sam", "deepseek_vl_7b_hf_mask_siglip_sam"}


def test_h200_numbers_and_gpu_aliases():
    from vlmeval_encred.sweep import costmodel

    g = costmodel.gpu("H200")
    assert (g.peak_tflops, g.bandwidth_gbs, g.memory_gb) == (989, 4800, 141)
    assert costmodel.gpu("a100").name == costmodel.gpu("a100_80gb_bf16").name
    assert costmodel.gpu("H100").peak_tflops == 989


@pytest.mark.parametrize("argv, expect", [
    (["--gpu", "H300"], ["unknown reference GPU 'H300'", "nearest valid: H200, H100"]),
    (["--model", "eagle_x6"], ["unknown base model 'eagle_x6'", "nearest valid: eagle_x5"]),
    (["--data", "MMBench_DEV"], ["no question count for dataset 'MMBench_DEV'", "nearest: MMBench_DEV_EN"]),
])
def test_wrong_names_give_one_line_errors_with_the_nearest(argv, expect, capsys):
    base = ["profile", "--plan", "--per-variant", "--model", "eagle_x5"]
    with pytest.raises(SystemExit) as exc:
        main(base + argv)
    msg = str(exc.value.code)
    assert "\n" not in msg and all(e in msg for e in expect), msg


def test_per_variant_needs_one_model():
    with pytest.raises(SystemExit) as exc:
        main(["profile", "--plan", "--per-variant", "--model", "eagle_x5,imof_13b"])
    assert "one base model" in str(exc.value.code)


def test_plan_prints_both_cluster_splits_and_auto_picks_the_cheaper(capsys):
    """By samples every job runs each tower once per image; by subsets a tower several jobs keep
    runs in each and every job decodes a smaller batch -- so under the roofline samples never costs
    more, and auto picks it."""
    from vlmeval_encred.sweep import cluster
    from vlmeval_encred.sweep.parallel import choose_shard_by, shard_costs

    assert main(["profile", "--plan", "--model", "eagle_x5", "--data", "MME", "--shards", "4"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("| eagle_x5 | 4 |"))
    assert line.rstrip().endswith("| samples |"), line
    from vlmeval_encred.registry import get_base
    from vlmeval_encred.sweep.selection import select_entries

    base = get_base("eagle_x5")
    lattice = [e.kept for e in select_entries(base, "all")]
    c = shard_costs("eagle_x5", base.encoders, lattice, ["MME"], 4)
    assert c["samples"]["total_s"] < c["subsets"]["total_s"]
    assert choose_shard_by("eagle_x5", base.encoders, lattice, ["MME"], 4)[0] == "samples"
    # no cost data for a stand-in base: samples, with the reason
    pick, why = choose_shard_by("no_such_base", ["a"], [("a",)], ["MME"], 2)
    assert pick == "samples" and "no cost data" in why
    # --shard-by subsets keeps the lattice shards as before; one job is the same cell either way
    sub = cluster.plan_cells("eagle_x5", ["v0", "v1", "v2"], ["MME"], "sweep", 2, shard_by="subsets")
    assert [(c.cell_id, c.variants) for c in sub] == [("sweep__shard0__MME", ("v0", "v2")),
                                                      ("sweep__shard1__MME", ("v1",))]
    one = cluster.plan_cells("eagle_x5", ["v0", "v1"], ["MME"], "sweep", 1, shard_by="samples")
    assert [c.cell_id for c in one] == ["sweep__shard0__MME"]
    assert re.search(r"by samples: GPU-h", out)
