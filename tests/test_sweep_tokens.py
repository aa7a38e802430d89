"""`encred sweep` over masks x token budgets (issue 19, docs/tokens.md), and the budgets' cost model.

The sweep runs on the demo model (its shipped trained weights, CPU, fp32) over a small demo
OCR dataset; every variant is then run on its own through VLMEvalKit's inference loop, by its
name, and both prediction files must be equal.  The cost formulas are checked against a hand
computation on a toy architecture small enough to write out.  Nothing is mocked.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from vlmeval_encred.sweep import costmodel as cm
from vlmeval_encred.tokens import TokenSpec

DS = "EncredTokSweep_OCR"


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    """A 6-question demo OCR dataset under a private $LMUData (environment restored afterwards)."""
    from vlmeval_encred.demo import data

    lmu = tmp_path_factory.mktemp("LMUData")
    spec = next(d for d in data.DATASETS if d.kind == "OCR")
    (lmu / f"{DS}.tsv").write_bytes(data.to_tsv_bytes(spec, data.generate("OCR", 6)))
    from vlmeval_encred.realcode.envscope import scoped_env

    with scoped_env(LMUData=str(lmu), PRED_FORMAT="xlsx", HF_HUB_OFFLINE="1"):
        yield lmu


def _per_variant(name: str, work: Path) -> None:
    """VLMEvalKit's own inference of one variant, the model built from its name as run.py builds it."""
    from vlmeval.dataset import build_dataset
    from vlmeval.inference import infer_data_job

    root = work / name
    root.mkdir(parents=True, exist_ok=True)
    infer_data_job(name, work_dir=str(root), model_name=name, dataset=build_dataset(DS))


def _preds(work: Path, name: str):
    from vlmeval.smp import load

    return load(str(work / name / f"{name}_{DS}.xlsx"))


def test_masks_x_budgets_sweep_equals_per_variant_runs(demo_data, tmp_path):
    from vlmeval_encred.registry import get_base
    from vlmeval_encred.sweep.engine import run_sweep
    from vlmeval_encred.sweep.selection import select_entries, with_budgets

    base = get_base("encred_tiny")
    chosen, notes = with_budgets(base, select_entries(base, "k<=1"), "25,100", "fusion,llm")
    assert notes == []
    names = [e.name for e in chosen]
    assert len(chosen) == 4 * 3 and "encred_tiny_mask_hires_keep25" in names and "encred_tiny_keep25_llm" in names
    rep = run_sweep(base, chosen, [DS], str(tmp_path / "sweep"), progress=False)
    d = rep.datasets[0]
    assert d.encoder_calls == {e: 6 for e in base.encoders}  # once per image for 4 masks x 3 budgets
    assert d.decode_calls == 2 * 6  # per sample: the unpruned masks in one batch, the budget rows in one call
    differ = 0
    for e in chosen:
        _per_variant(e.name, tmp_path / "ref")
        got, want = _preds(tmp_path / "sweep", e.name), _preds(tmp_path / "ref", e.name)
        assert list(got["prediction"]) == list(want["prediction"]), e.name
        assert got.equals(want), f"{e.name}: prediction files differ beyond the predictions"
        if e.tokens is not None:
            differ += list(got["prediction"]) != list(_preds(tmp_path / "sweep", base.entry_name(e.masked))["prediction"])
    assert differ >= 2, "no budget changes any answer: the comparison would not see a budget ignored"
    # the files went where VLMEvalKit's own run of that name writes them, and `encred status` sees them
    assert (tmp_path / "sweep" / "encred_tiny_mask_hires_keep25" / f"encred_tiny_mask_hires_keep25_{DS}.xlsx").exists()
    from vlmeval_encred.sweep.status import collect

    states = {r["variant"]: r["state"] for r in collect(str(tmp_path / "sweep"), "encred_tiny")}
    assert states == {e.name: "predicted" for e in chosen}


def test_budgets_with_cross_sample_batches_and_a_refusing_fuse(demo_data, tmp_path, monkeypatch):
    """--decode-batch-tokens with budget rows: the unpruned rows are queued (several samples per decode
    batch), the budget rows answered at once; a family whose ``fuse`` refuses (ValueError: e.g. not plain
    greedy) is decoded by its ``fuse_and_generate`` instead.  Every file equals the exact sweep's."""
    from vlmeval_encred.model_wrappers.encred_tiny.modeling import EncredTinySweep
    from vlmeval_encred.registry import get_base
    from vlmeval_encred.sweep.decoding import decode
    from vlmeval_encred.sweep.engine import run_sweep
    from vlmeval_encred.sweep.selection import select_entries, with_budgets

    base = get_base("encred_tiny")
    chosen, _ = with_budgets(base, select_entries(base, "k<=1"), "25,100", "fusion,llm")
    run_sweep(base, chosen, [DS], str(tmp_path / "exact"), progress=False)
    batched = run_sweep(base, chosen, [DS], str(tmp_path / "batched"), progress=False,
                        decode_batch_tokens=4096).datasets[0]
    assert batched.decoding.shared_batches > 0, vars(batched.decoding)  # samples really shared decode batches

    orig_fuse, orig_fag = EncredTinySweep.fuse, EncredTinySweep.fuse_and_generate
    refused = []

    def refusing_fuse(self, *args):
        refused.append(1)
        raise ValueError("not plain greedy (test)")

    def own_decoding(self, wrapper, inputs, feats, mask_mode, tokens=None):
        if tokens is not None and any(t is not None for t in tokens):
            return orig_fag(self, wrapper, inputs, feats, mask_mode, tokens)
        return decode([orig_fuse(self, wrapper, inputs, feats, mask_mode)])[0]

    monkeypatch.setattr(EncredTinySweep, "fuse", refusing_fuse)
    monkeypatch.setattr(EncredTinySweep, "fuse_and_generate", own_decoding)
    run_sweep(base, chosen, [DS], str(tmp_path / "refused"), progress=False, decode_batch_tokens=4096)
    assert len(refused) == 6  # once per sample: its unpruned rows went to fuse_and_generate
    for e in chosen:
        want = list(_preds(tmp_path / "exact", e.name)["prediction"])
        assert list(_preds(tmp_path / "batched", e.name)["prediction"]) == want, e.name
        assert list(_preds(tmp_path / "refused", e.name)["prediction"]) == want, e.name


def test_a_family_that_does_not_sweep_a_stage_is_refused_before_loading(monkeypatch, tmp_path):
    from vlmeval_encred.model_wrappers.encred_tiny.modeling import EncredTinySweep
    from vlmeval_encred.registry import get_base
    from vlmeval_encred.sweep.engine import run_sweep
    from vlmeval_encred.sweep.protocol import SweepUnsupportedError
    from vlmeval_encred.sweep.selection import select_entries, with_budgets

    base = get_base("encred_tiny")
    chosen, _ = with_budgets(base, select_entries(base, "k=0"), "25,100", "fusion,llm")
    monkeypatch.setattr(EncredTinySweep, "token_stages_swept", ("fusion",))
    with pytest.raises(SweepUnsupportedError) as exc:
        run_sweep(base, chosen, ["NoSuchDatasetIsBuilt"], str(tmp_path), progress=False)
    msg = str(exc.value)
    assert "family encred_tiny cannot sweep token budgets at the llm stage (encred_tiny_keep25_llm)" in msg
    assert "it sweeps the fusion token stage only" in msg and "run those variants one by one" in msg
    monkeypatch.setattr(EncredTinySweep, "token_stages_swept", ())
    with pytest.raises(SweepUnsupportedError, match="declares no token_stages_swept, so it sweeps the mask "
                                                    "lattice only"):
        run_sweep(base, chosen, ["NoSuchDatasetIsBuilt"], str(tmp_path), progress=False)
    assert not any(tmp_path.iterdir()), "refused before anything was written"


def test_budget_selection_refusals_name_the_family(capsys):
    from vlmeval_encred.cli import main
    from vlmeval_encred.registry import get_base
    from vlmeval_encred.sweep.selection import SelectionError, select_entries, with_budgets

    cam = get_base("cambrian1_phi3_3b")  # a family that refuses both stages, with the reason
    with pytest.raises(SelectionError, match=r"the fusion token stage is not defined for family cambrian: "):
        with_budgets(cam, select_entries(cam, "k=0"), "25")
    tiny = get_base("encred_tiny")
    with pytest.raises(SelectionError, match="--token-stage needs --keep"):
        with_budgets(tiny, select_entries(tiny, "k=0"), None, "llm")
    with pytest.raises(SelectionError, match=r"--keep: 0 is outside 1\.\.100"):
        with_budgets(tiny, select_entries(tiny, "k=0"), "0")
    with pytest.raises(SelectionError, match="'llm1x' is not a stage"):
        with_budgets(tiny, select_entries(tiny, "k=0"), "25", "llm1x")
    # keep is the budget axis: without 100 the unpruned masks are not selected; the fusion stage with
    # every encoder masked is left out, with the reason
    got, notes = with_budgets(tiny, select_entries(tiny, "all"), "50")
    assert [e.tokens for e in got] == [TokenSpec(50)] * 7 and len(notes) == 1
    assert "encred_tiny_mask_lowres_hires_colour_keep50 left out: every encoder is masked" in notes[0]
    # --subsets takes budget names, ordered as the registry orders them
    picked = select_entries(tiny, "encred_tiny_keep50_llm,encred_tiny_mask_hires_keep25,encred_tiny")
    assert [e.name for e in picked] == ["encred_tiny", "encred_tiny_mask_hires_keep25", "encred_tiny_keep50_llm"]
    with pytest.raises(SystemExit, match="not defined for family cambrian"):
        main(["sweep", "--model", "cambrian1_phi3_3b", "--data", "MME", "--keep", "25"])


def test_encred_models_lists_token_variants(capsys):
    import json

    from vlmeval_encred.cli import main

    assert main(["models", "--base", "encred_tiny"]) == 0
    assert "keep" not in capsys.readouterr().out
    assert main(["models", "--base", "encred_tiny", "--tokens", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["encred_tiny_mask_hires_keep25"]["tokens"] == {"keep": 25, "stage": "fusion"}
    assert rows["encred_tiny_keep75_llm"]["tokens"] == {"keep": 75, "stage": "llm", "layer": 1}
    assert rows["encred_tiny"]["tokens"] is None
    assert "encred_tiny_mask_lowres_hires_colour_keep25" not in rows  # fusion with nothing left to score
    assert len(rows) == 8 + 3 * 7 + 3 * 8


# --- cost model -----------------------------------------------------------------------------------
# Toy architecture: L = 4 layers, d = 4, intermediate 8, 2 heads / 1 KV head (head dim 2, kv width 2),
# vocabulary 10.  Per layer: P = 2*16 + 2*4*2 + 3*4*8 = 144 matrix parameters; head h = 2*4*10 = 80.
LLM4 = cm.LLM(layers=4, hidden=4, intermediate=8, heads=2, kv_heads=1, vocab=10)


def _toy():
    # prompt: 1 prefix + 2 images x 4 image tokens + 2 question + 1 suffix = 12 tokens
    base = cm.BaseCost("toy", {"a": 100.0}, {"a": "ta"}, LLM4, "toy_llm", connector_in=2, prefix_tokens=1,
                       image_tokens=4, suffix_tokens=1, images=2)
    ds = cm.Dataset("D", questions=10, question_tokens=2, answer_tokens=3)
    gpu = cm.GPU("toy", peak_tflops=1e-9, bandwidth_gbs=1e-7, memory_gb=1, mfu=1.0, mbu=1.0)  # 1000 FLOP/s, 100 B/s
    return base, ds, gpu


def _layer(m: int) -> float:
    """One layer's prefill by hand: 2*144*m matrix FLOPs + 4*d*(1 + 2 + ... + m) causal attention."""
    return 2 * 144 * m + 16 * sum(range(1, m + 1))


def test_budget_prefill_and_decode_formulas_by_hand():
    base, ds, gpu = _toy()
    n = 12
    assert base.prompt_tokens(ds) == n
    # keep 25 % of 4 tokens per image = 1 per image: 6 of the 12 prompt tokens are removed;
    # keep 30 % rounds up to 2 per image (ceil), 4 removed
    fusion, llm2, odd = TokenSpec(25), TokenSpec(25, "llm", 2), TokenSpec(30)
    assert base.visual_tokens() == 8 and base.visual_tokens(fusion) == 2 and base.visual_tokens(odd) == 4
    assert cm.pruning(base, fusion) == cm.Pruning(6, 0) and cm.pruning(base, llm2) == cm.Pruning(6, 2)
    unpruned = 4 * _layer(12) + 80
    assert LLM4.prefill_flops(n) == unpruned  # the budget formulas agree with the unpruned one
    assert LLM4.pruned_prefill_flops(n, cm.pruning(base, fusion)) == 4 * _layer(6) + 80
    assert LLM4.pruned_prefill_flops(n, cm.pruning(base, llm2)) == 2 * _layer(12) + 2 * _layer(6) + 80
    assert LLM4.pruned_prefill_flops(n, cm.pruning(base, odd)) == 4 * _layer(8) + 80
    # decoding, context c = 12 (first step): fusion attends to 4 x 7 entries; llm K=2 to 2 x 13 + 2 x 7
    lin = 2 * 4 * 144
    assert LLM4.pruned_decode_step_flops(12, cm.pruning(base, fusion)) == lin + 16 * 28 + 80
    assert LLM4.pruned_decode_step_flops(12, cm.pruning(base, llm2)) == lin + 16 * 40 + 80
    assert LLM4.pruned_decode_step_flops(12, cm.Pruning()) == LLM4.decode_step_flops(12)
    # cache bytes: 2 bytes x (k and v) x 1 kv head x head dim 2 = 8 bytes per token and layer
    assert LLM4.pruned_kv_bytes(12, cm.pruning(base, llm2)) == 8 * 40
    with pytest.raises(cm.CostDataError, match="K=4"):
        cm.pruning(base, TokenSpec(25, "llm", 4))

    # one variant at batch 1: prefill, then answer_tokens - 1 = 2 steps (c = 12, 13), roofline seconds
    p = cm.per_variant_sample(base, gpu, ds, ("a",), llm2)
    assert p.flops["prefill"] == 2 * _layer(12) + 2 * _layer(6) + 80
    steps = [lin + 16 * (2 * (c + 1) + 2 * (c - 6 + 1)) + 80 for c in (12, 13)]
    assert p.flops["decode"] == sum(steps)
    weights = 2 * (4 * 144 + 40)
    assert math.isclose(p.seconds["decode"], sum(max(f / 1000, (weights + 8 * (2 * (c + 1) + 2 * (c - 5))) / 100)
                                                 for f, c in zip(steps, (12, 13))))
    assert math.isclose(p.seconds["prefill"], max(p.flops["prefill"] / 1000, weights / 100))
    assert p.flops["towers"] == 200 and p.flops["connector"] == base.connector_flops()

    # the savings reported per budget
    (sf, sl) = cm.budget_savings(base, gpu, [ds], [fusion, llm2])
    assert sf.removed == 6 and sf.visual_tokens == 2
    assert math.isclose(sf.prefill_saving, 1 - (4 * _layer(6) + 80) / unpruned)
    assert math.isclose(sl.prefill_saving, 1 - (2 * _layer(12) + 2 * _layer(6) + 80) / unpruned)
    full_dec = sum(lin + 16 * 4 * (c + 1) + 80 for c in (12, 13))
    assert math.isclose(sl.decode_saving, 1 - sum(steps) / full_dec)
    assert 0 < sl.prefill_saving < sf.prefill_saving < 1


def test_sweep_plan_with_budgets_by_hand():
    base, ds, gpu = _toy()
    fusion, llm2 = TokenSpec(25), TokenSpec(25, "llm", 2)
    subsets = [("a",), ("a",), (), ("a",), ()]
    tokens = [None, fusion, fusion, llm2, llm2]
    p = cm.plan(base, gpu, [ds], subsets, tokens)
    assert p.budgets == [fusion, llm2]
    pre_f, pre_l = 4 * _layer(6) + 80, 2 * _layer(12) + 2 * _layer(6) + 80
    # per-variant: each row its own prefill
    assert p.per_variant.flops["prefill"] == 10 * (4 * _layer(12) + 80 + 2 * pre_f + 2 * pre_l)
    # sweep: the tower once per sample; a connector per row; the same prefill FLOPs, but the two fusion
    # rows are one batch (weights read once) and the llm rows two batches of one
    assert p.sweep.flops["towers"] == 10 * 200 and p.sweep.flops["connector"] == 10 * 5 * base.connector_flops()
    assert p.sweep.flops["prefill"] == p.per_variant.flops["prefill"]
    weights = 2 * (4 * 144 + 40)
    want = (max((4 * _layer(12) + 80) / 1000, weights / 100) + max(2 * pre_f / 1000, weights / 100)
            + 2 * max(pre_l / 1000, weights / 100))
    assert math.isclose(p.sweep.seconds["prefill"], 10 * want)
    # cluster shards split the budgets with their subsets (`--shard-by auto` compares these)
    from vlmeval_encred.sweep.parallel import shard_costs_of

    c = shard_costs_of(base, gpu, [ds], subsets, 2, tokens)
    halves = [cm.sweep_sample(base, gpu, ds, subsets[s::2], tokens=tokens[s::2]).total_seconds for s in (0, 1)]
    assert math.isclose(c["subsets"]["total_s"], 10 * sum(halves))
    assert math.isclose(c["samples"]["total_s"], p.sweep.total_seconds)
    assert shard_costs_of(base, gpu, [ds], subsets, 2) != c
    # without budgets, the plan is the mask lattice's, unchanged
    plain = cm.plan(base, gpu, [ds], subsets)
    assert plain.tokens == [] and plain.sweep.flops["prefill"] == 10 * 5 * (4 * _layer(12) + 80)


def test_profile_plan_prints_each_budgets_saving(capsys):
    from vlmeval_encred.cli import main

    assert main(["profile", "--plan", "--model", "deepseek_vl_7b_hf", "--subsets", "k=0", "--data", "MME",
                 "--keep", "25,100", "--token-stage", "fusion,llm"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[2].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in out.splitlines() if line.startswith("| deepseek_vl_7b_hf | ") and "keep" in line}
    assert set(rows) == {"keep 25% fusion", "keep 25% llm after K=2"}
    base = cm.base_cost("deepseek_vl_7b_hf", ["siglip", "sam"])
    (sf, sl) = cm.budget_savings(base, cm.gpu("A100"), [cm.dataset("MME")], [TokenSpec(25), TokenSpec(25, "llm", 2)])
    assert rows["keep 25% fusion"][2] == "144 (-432)" and rows["keep 25% fusion"][4] == f"{sf.prefill_saving:.1%}"
    assert rows["keep 25% llm after K=2"][4] == f"{sl.prefill_saving:.1%}"
    assert main(["profile", "--plan", "--per-variant", "--model", "deepseek_vl_7b_hf", "--subsets", "k=0",
                 "--data", "MME", "--keep", "25,100"]) == 0
    table = capsys.readouterr().out
    line = next(x for x in table.splitlines() if x.startswith("| deepseek_vl_7b_hf_keep25 |"))
    assert line.split("|")[-3].strip() == "144" and line.split("|")[-2].strip() == f"{1 - sf.prefill_saving:.1%}"


def test_deepseek_vl_hf_budget_rows_equal_each_variants_generate_inner(tmp_path):
    """The DeepseekVLHybrid support's budget rows, from one encode of the sample, against each variant's own
    generate_inner (a tiny random checkpoint built from transformers' real DeepseekVLHybrid classes,
    4 LLM layers so that the llm stage after K=2 leaves two layers to shrink)."""
    import numpy as np
    from PIL import Image

    from vlmeval_encred.model_wrappers.deepseek_vl_hf import EncredDeepseekVLHybrid
    from vlmeval_encred.model_wrappers.deepseek_vl_hf.tiny import HybridSizes, build_deepseek_vl_hybrid
    from vlmeval_encred.sweep.protocol import support_for

    path = tmp_path / "ckpt"
    build_deepseek_vl_hybrid(path, HybridSizes(llm_layers=4))
    img = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(img)
    msg = [{"type": "image", "value": str(img)}, {"type": "text", "value": "What colour is the image?"}]

    def load(tokens=None, mask=()):
        return EncredDeepseekVLHybrid(model_path=str(path), torch_dtype="float32", device="cpu", max_new_tokens=5,
                                      tokens=tokens, mask=mask)

    full = load()
    support = support_for(full)
    assert support.token_stages_swept == ("fusion", "llm")
    inputs = support.prepare(full, msg, None)
    names = ("siglip", "sam")
    feats = support.encode(full, inputs, names)
    rows = [(m, t) for m in [(), ("siglip",), ("sam",), ("siglip", "sam")]
            for t in [None, TokenSpec(25), TokenSpec(25, "llm", 2), TokenSpec(50, "llm", 3)]
            if not (t is not None and t.stage == "fusion" and len(m) == 2)]
    # the random tiny model's short answers hardly depend on the budget, so the test also checks that each
    # budget row really ran shortened: prefill lengths reaching decoder layers 0 and 3
    layers = full.model.model.language_model.layers
    seen: dict[int, list[int]] = {0: [], 3: []}

    def record(i):
        def hook(_m, args, kwargs):
            q = (args[0] if args else kwargs["hidden_states"]).shape[1]
            if q > 1:
                seen[i].append(q)
        return hook

    hooks = [layers[i].register_forward_pre_hook(record(i), with_kwargs=True) for i in seen]
    try:
        got = support.fuse_and_generate(full, inputs, [{n: None if n in m else feats[n] for n in names}
                                                       for m, _ in rows], "zero", tokens=[t for _, t in rows])
    finally:
        for h in hooks:
            h.remove()
    want = [load(t.as_kwargs() if t else None, m).generate_inner(msg) for m, t in rows]
    assert got == want
    ids = inputs["input_ids"]
    s, n = ids.shape[1], int((ids[0] == full.model.config.image_token_id).sum())
    budget_rows = [t for _, t in rows if t is not None]
    # the unbudgeted rows prefill together through the shared-prefix decoder (the template's prefix once,
    # then the rest of the prompt): their prefill lengths add up to the prompt; then one prefill per budget row
    for layer, budget in ((0, [s - (n - t.budget(n)) if t.stage == "fusion" else s for t in budget_rows]),
                          (3, [s - (n - t.budget(n)) for t in budget_rows])):
        plain = seen[layer][:len(seen[layer]) - len(budget)]
        assert sum(plain) == s and seen[layer][len(plain):] == budget, (layer, seen[layer])
    assert n - TokenSpec(50).budget(n) > 0  # every budget row dropped tokens


def test_measured_profile_of_a_budget_variant_is_relative_to_the_unpruned_full_model(tmp_path, monkeypatch):
    """`encred profile --subsets <base>_keep25`: a budget variant masks nothing, yet the reference row must be
    the unpruned full model (measured, not listed); --keep itself is for --plan only."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from vlmeval_encred.cli import main
    from vlmeval_encred.registry import get_base
    from vlmeval_encred.sweep.profile import profile_variants, synthetic_messages
    from vlmeval_encred.sweep.selection import select_entries

    base = get_base("deepseek_vl_tiny_random")
    chosen = select_entries(base, "deepseek_vl_tiny_random_keep25")
    rows = profile_variants(base, chosen, synthetic_messages(1, str(tmp_path)), repeats=1, warmup=0)
    assert [r["variant"] for r in rows] == ["deepseek_vl_tiny_random_keep25"]
    assert rows[0]["vision_flops_rel"] == 1.0 and rows[0]["total_flops_rel"] != 1.0
    with pytest.raises(SystemExit, match="need --plan"):
        main(["profile", "--model", "deepseek_vl_tiny_random", "--keep", "25"])
