"""`encred sweep`: predictions equal VLMEvalKit's own per-variant inference, resume after a kill,
prediction files where VLMEvalKit looks, and VLMEvalKit then evaluates without re-inferring.

Model: tests/standins/concat5.py, a synthetic CPU five-encoder channel-concat model in fp32
(random but image-dependent answers).  One subprocess (a fresh `python -m vlmeval`-equivalent
run) at the end; the rest runs in this process (vlmeval imported once, ~15 s).
"""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import HANG_GUARD, ROOT, concat5_env, explain, run_py, vlmeval_env, write_mcq_tsv

DS = "EncredSweep_MCQ"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with concat5_env(tmp_path_factory, DS) as e:
        yield e


def _per_variant(name: str, work: Path) -> None:
    """VLMEvalKit's own inference for one variant, as run.py calls it (model given by name)."""
    from vlmeval.dataset import build_dataset
    from vlmeval.inference import infer_data_job

    pred_root = work / name
    pred_root.mkdir(parents=True, exist_ok=True)
    infer_data_job(name, work_dir=str(pred_root), model_name=name, dataset=build_dataset(DS))


def _preds(work: Path, name: str):
    from vlmeval.smp import load

    return load(str(work / name / f"{name}_{DS}.xlsx"))


def test_sweep_equals_per_variant_vlmevalkit_inference(env, tmp_path):
    from vlmeval_encred.sweep.engine import run_sweep
    from vlmeval_encred.sweep.selection import select_entries

    base = env["base"]
    chosen = select_entries(base, "k<=1")  # full model + five single-encoder ablations
    rep = run_sweep(base, chosen, [DS], str(tmp_path / "sweep"), progress=False)
    d = rep.datasets[0]
    assert d.encoder_calls == {e: 4 for e in base.encoders}  # each tower once per image, not 6x
    assert d.decode_calls == 4  # one batched generate per sample
    # the stand-in decodes through decoding.greedy_subsets: its template prefix ran once for the dataset
    dec = d.decoding
    assert dec.calls == 4 and dec.rows == 4 * len(chosen) and dec.prefix_runs == 1
    assert dec.prefix_tokens == 4 * len(_standin_prefix())
    assert dec.prefilled_tokens == dec.prompt_tokens - dec.rows * len(_standin_prefix()) + len(_standin_prefix())
    seen = set()
    for e in chosen:
        _per_variant(e.name, tmp_path / "ref")
        got, want = _preds(tmp_path / "sweep", e.name), _preds(tmp_path / "ref", e.name)
        assert list(got["prediction"]) == list(want["prediction"]), e.name
        assert got.equals(want), f"{e.name}: frames differ beyond predictions"
        seen.update(got["prediction"])
    assert len(seen) > 4, "answers do not depend on image/subset: the comparison would be vacuous"
    # a second sweep finds every file complete and computes nothing
    again = run_sweep(base, chosen, [DS], str(tmp_path / "sweep"), progress=False).datasets[0]
    assert again.computed_samples == 0 and len(again.skipped_variants) == len(chosen)


def test_resume_after_kill_keeps_finished_samples(env, tmp_path):
    from vlmeval_encred.sweep.checkpoint import checkpoint_path
    from vlmeval_encred.sweep.engine import run_sweep
    from vlmeval_encred.sweep.selection import select_entries

    base = env["base"]
    chosen = select_entries(base, "concat5_standin_mask_sam,concat5_standin_mask_clip_eva02")
    work = tmp_path / "w"

    def kill_after_two(_ds, idx):
        if idx == 1:
            raise KeyboardInterrupt  # the process dies right after sample 2 was checkpointed

    with pytest.raises(KeyboardInterrupt):
        run_sweep(base, chosen, [DS], str(work), progress=False, on_sample=kill_after_two)
    ck = checkpoint_path(work, base.name, DS)
    assert len(ck.read_text().splitlines()) == 2
    assert not any((work / e.name).exists() for e in chosen)  # no partial prediction files
    with open(ck, "a") as fh:
        fh.write('{"index": "2", "preds": {"conc')  # torn line: killed mid-write
    rep = run_sweep(base, chosen, [DS], str(work), progress=False).datasets[0]
    assert rep.computed_samples == 2 and not ck.exists()
    clean = tmp_path / "clean"
    run_sweep(base, chosen, [DS], str(clean), progress=False)
    for e in chosen:
        assert list(_preds(work, e.name)["prediction"]) == list(_preds(clean, e.name)["prediction"])


DRIVER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from standins import concat5
    concat5.register()
    from vlmeval.config import supported_VLM
    def tripwire(**kw):
        raise SystemExit("TRIPWIRE: VLMEvalKit tried to build the model, i.e. to re-infer")
    supported_VLM[{name!r}] = tripwire
    from vlmeval import run
    sys.argv = ["run.py"] + sys.argv[1:]
    run.main()
""")


def test_vlmevalkit_evaluates_sweep_predictions_without_reinferring(env, tmp_path):
    from vlmeval_encred.sweep.engine import run_sweep
    from vlmeval_encred.sweep.selection import select_entries

    base = env["base"]
    name = "concat5_standin_mask_convnext"
    run_sweep(base, select_entries(base, name), [DS], str(tmp_path / "out"), progress=False)
    pred = tmp_path / "out" / name / f"{name}_{DS}.xlsx"
    assert pred.exists()
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(tests=str(ROOT / "tests"), name=name))
    proc = run_py([str(driver), "--model", name, "--data", DS, "--work-dir", str(tmp_path / "out"),
                   "--judge", "exact_matching"], cwd=tmp_path, env=vlmeval_env(env["lmu"]), timeout=HANG_GUARD)
    assert proc.returncode == 0, explain(proc)
    assert "TRIPWIRE" not in proc.stdout + proc.stderr, explain(proc)
    assert (tmp_path / "out" / name / f"{name}_{DS}_acc.csv").exists(), explain(proc)


def test_encred_tiny_sweep_support_matches_its_generate_inner(tmp_path):
    """The demo family's SweepSupport, on a randomly initialised demo model saved like a checkpoint
    (the shipped trained weights are not needed for an equality test): every subset's batched answer
    equals what the masked variant's own generate_inner answers."""
    import itertools

    import numpy as np
    import torch
    from PIL import Image

    from vlmeval_encred.demo.model import build_model
    from vlmeval_encred.model_wrappers.encred_tiny import EncredTiny
    from vlmeval_encred.sweep.protocol import support_for

    model, tok = build_model(0)
    model.save_pretrained(tmp_path / "ck", tok, dtype=torch.float32)
    names = model.encoder_names
    path = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    msg = [{"type": "image", "value": str(path)}, {"type": "text", "value": "Which option? A. red B. blue"}]
    subsets = [c for k in range(len(names) + 1) for c in itertools.combinations(names, k)]
    full = EncredTiny(model_path=str(tmp_path / "ck"), max_new_tokens=3)
    support = support_for(full)
    inputs = support.prepare(full, msg, None)
    feats = support.encode(full, inputs, names)
    got = support.fuse_and_generate(full, inputs, [{n: None if n in s else feats[n] for n in names}
                                                   for s in subsets], "zero")
    want = [EncredTiny(model_path=str(tmp_path / "ck"), max_new_tokens=3, mask=s).generate_inner(msg)
            for s in subsets]
    assert got == want


def _standin_prefix() -> list[int]:
    from standins import concat5

    tok = concat5.Concat5().tokenizer
    return [tok.bos_token_id] + tok(concat5.SYSTEM, add_special_tokens=False).input_ids


def _tiny_llama(seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=40, max_position_embeddings=128, initializer_range=0.5,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


def test_greedy_subsets_equals_generate_per_row_with_early_stops():
    """decoding.greedy_subsets (shared prefix run once, finished rows dropped from batch and cache)
    gives each row exactly what ``generate`` gives that row alone; the end-of-sequence token is chosen
    so that rows stop at different steps, and the prefix cache is reused by an equal prefix only."""
    import torch

    from vlmeval_encred.sweep.decoding import collect, greedy_subsets, shared_prefix_length

    lm = _tiny_llama()
    emb = lm.get_input_embeddings()
    g = torch.Generator().manual_seed(0)
    prefix = torch.randn(1, 5, 32, generator=g)
    rows = torch.randn(6, 4, 32, generator=g)  # per-subset part (the image)
    question = torch.randn(1, 3, 32, generator=g)
    embeds = torch.cat([prefix.expand(6, -1, -1), rows, question.expand(6, -1, -1)], dim=1)
    assert shared_prefix_length(embeds) == 5
    free = greedy_subsets(lm, embeds, emb, eos_ids=[], max_new_tokens=6)
    counts = {}
    for r in free:
        for pos, t in enumerate(r[:-1]):
            counts.setdefault(t, set()).add(pos)
    eos = max(counts, key=lambda t: len(counts[t]))  # a token that ends rows at different steps
    with collect() as st:
        got = greedy_subsets(lm, embeds, emb, eos_ids=[eos], max_new_tokens=6)
    want = []
    for i in range(6):
        out = lm.generate(inputs_embeds=embeds[i:i + 1], attention_mask=torch.ones(1, 12, dtype=torch.long),
                          max_new_tokens=6, do_sample=False, eos_token_id=eos, pad_token_id=0)
        row = out[0].tolist()
        want.append(row[:row.index(eos) + 1] if eos in row else row)
    assert got == want
    assert len({len(r) for r in got}) > 1 and st.rows_dropped_early > 0, "no early stop: the test would be vacuous"
    # the prefix cache of the first call (same prefix) is reused: only 6 rows x 7 positions prefilled
    assert st.prefix_tokens == 5 and st.prefix_runs == 0 and st.prefilled_tokens == 6 * 7
    # an equal prefix (next sample) reuses the cache; a different one is run; no sharing = same answers
    with collect() as st2:
        assert greedy_subsets(lm, embeds, emb, eos_ids=[eos], max_new_tokens=6) == got
        assert greedy_subsets(lm, embeds, emb, eos_ids=[eos], max_new_tokens=6, share_prefix=False) == got
        other = embeds.clone()
        other[:, 0] += 1.0
        greedy_subsets(lm, other, emb, eos_ids=[eos], max_new_tokens=6)
    assert st2.prefix_runs == 1 and st2.prefix_tokens == 5 + 0 + 5


def test_encred_sweep_cli_reports_shared_prefix(env, tmp_path, capsys):
    """`encred sweep` (in process: the stand-in is registered here) prints what the shared-prefix
    decoding saved: positions prefilled of the prompt positions, prefix runs."""
    from vlmeval_encred.cli import main

    rc = main(["sweep", "--model", "concat5_standin", "--data", DS, "--subsets", "k<=1", "--work-dir",
               str(tmp_path / "cli"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    n = len(_standin_prefix())
    line = next(x for x in out.splitlines() if "LLM prefill:" in x)
    total = int(line.split(" of ")[1].split()[0])
    done = int(line.split("LLM prefill: ")[1].split()[0])
    assert total - done == 4 * 6 * n - n and "run 1x" in line, line  # 4 samples x 6 subsets share it
