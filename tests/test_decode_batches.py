"""Cross-sample decode batches (``decoding.decode(batch_tokens > 0)``, ``encred sweep --decode-batch-tokens``).

Rows of several DecodeRequests share one batch, left-padded after the prefix every row shares, with an
attention mask and explicit position ids: the same greedy answers as each request decoded alone in exact
arithmetic.  Floating point is another matter (padded batches run other matrix shapes), so the
equality tests below use fp32 models whose answers are far from ties and say so; how many answers
change on the demo and the stand-in is measured by benchmarks/decode_batching.py (docs/sweeps.md).

Models: a random 2-layer Llama (transformers), the five-encoder stand-in (tests/standins/concat5.py)
and the demo model; all on the CPU, nothing mocked.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import concat5_env
from test_sweep import _tiny_llama

DS = "EncredDecodeBatch_MCQ"


def _requests(lm, shapes, prefix_len=5, seed=0, eos=7, max_new=6):
    """One DecodeRequest per (rows, own positions): a shared random prefix, then random rows."""
    import torch

    from vlmeval_encred.sweep.decoding import DecodeRequest

    g = torch.Generator().manual_seed(seed)
    prefix = torch.randn(1, prefix_len, 32, generator=g)
    out = []
    for s, t in shapes:
        body = torch.randn(s, t, 32, generator=g)
        out.append(DecodeRequest(lm=lm, embeds=torch.cat([prefix.expand(s, -1, -1), body], 1),
                                 embed_tokens=lm.get_input_embeddings(), eos_ids=[eos], max_new_tokens=max_new,
                                 finish=lambda rows: [tuple(r) for r in rows]))
    return out


def _generate(lm, req, eos=7):
    """What ``generate`` gives each row of ``req`` alone (batch of one, no padding)."""
    import torch

    rows = []
    for i in range(req.rows):
        e = req.embeds[i:i + 1]
        out = lm.generate(inputs_embeds=e, attention_mask=torch.ones(e.shape[:2], dtype=torch.long),
                          max_new_tokens=req.max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=0)
        row = out[0].tolist()
        rows.append(tuple(row[:row.index(eos) + 1] if eos in row else row))
    return rows


@pytest.mark.parametrize("prefix_len", [5, 0], ids=["pad-after-prefix", "pad-before-everything"])
def test_padded_batches_equal_each_request_alone(prefix_len):
    """Requests of unequal prompt lengths in padded batches answer as each alone and as ``generate`` row
    by row (random fp32 Llama: its logits are far from ties, so the last-bit differences of other
    matrix shapes cannot flip an argmax here); rows stop at different steps; the budget is kept."""
    from vlmeval_encred.sweep.decoding import collect, decode, padded_tokens, plan_batches

    lm = _tiny_llama()
    reqs = _requests(lm, [(3, 4), (2, 7), (4, 2), (1, 5), (3, 9)], prefix_len=prefix_len)
    alone = decode(reqs)
    assert alone == [_generate(lm, r) for r in reqs]
    assert len({len(a) for rows in alone for a in rows}) > 1, "no early stop: dropping rows is not exercised"
    for budget in (60, 200, 10_000):
        with collect() as st:
            got = decode(reqs, batch_tokens=budget)
        assert got == alone, budget
        groups = plan_batches(reqs, budget)
        assert [i for g in groups for i in g] == list(range(len(reqs)))
        assert all(len(g) == 1 or padded_tokens([reqs[i] for i in g]) <= budget for g in groups)
        assert st.shared_batches == sum(len(g) > 1 for g in groups) > 0 and st.padding_tokens > 0
        # the shared prefix still runs once per batch (prefix_len 0: none to share)
        assert st.prefix_tokens == prefix_len * len(groups)


def test_plan_batches_and_bad_requests():
    """Budget 0 keeps every request alone; an oversized request gets a batch of its own; rows of two
    language models never share a batch; malformed requests and budgets are refused by name."""
    import torch

    from vlmeval_encred.sweep.decoding import DecodeRequest, decode, plan_batches

    lm, other = _tiny_llama(0), _tiny_llama(1)
    reqs = _requests(lm, [(2, 3), (2, 3), (8, 20), (2, 3)], prefix_len=1)  # 8 positions x 2 rows = 16 each
    assert plan_batches(reqs, 0) == [[0], [1], [2], [3]]
    assert plan_batches(reqs, 32) == [[0, 1], [2], [3]]
    mixed = reqs[:1] + _requests(other, [(2, 3)], prefix_len=1)
    assert plan_batches(mixed, 10_000) == [[0], [1]]
    with pytest.raises(ValueError, match="batch_tokens must be >= 0"):
        decode(reqs, batch_tokens=-1)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        DecodeRequest(lm=lm, embeds=torch.zeros(1, 2, 32), embed_tokens=None, eos_ids=[], max_new_tokens=0,
                      finish=list)
    with pytest.raises(ValueError, match=r"got shape \(2, 32\)"):
        DecodeRequest(lm=lm, embeds=torch.zeros(2, 32), embed_tokens=None, eos_ids=[], max_new_tokens=1,
                      finish=list)
    bad = DecodeRequest(lm=lm, embeds=torch.zeros(2, 3, 32), embed_tokens=lm.get_input_embeddings(), eos_ids=[],
                        max_new_tokens=1, finish=lambda rows: ["one"])
    with pytest.raises(ValueError, match="finish returned 1 answers for 2 rows"):
        decode([bad])


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    with concat5_env(tmp_path_factory, DS, n=6) as e:
        yield e


def _standin_requests(wrapper, support, tmp_path, n, question="What colour is the image? A. red B. blue"):
    import itertools

    from PIL import Image

    from standins import concat5

    names = list(concat5.TOWERS)
    subsets = [c for k in range(len(names) + 1) for c in itertools.combinations(names, k)]
    reqs = []
    for i in range(n):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
        msg = [{"type": "image", "value": str(path)}, {"type": "text", "value": question}]
        inputs = support.prepare(wrapper, msg, None)
        feats = support.encode(wrapper, inputs, names)
        reqs.append(support.fuse(wrapper, inputs, [{x: None if x in s else feats[x] for x in names}
                                                   for s in subsets], "zero"))
    return reqs


def test_standin_equal_length_prompts_batch_exactly(standin, tmp_path):
    """The stand-in's rows of four samples with equal-length prompts in one batch (no padding: only the
    batch grows) answer exactly as each sample decoded alone, and as its fuse_and_generate."""
    from standins import concat5
    from vlmeval_encred.sweep.decoding import collect, decode

    wrapper = concat5.Concat5Standin()
    support = concat5.Concat5Standin.sweep_support
    reqs = _standin_requests(wrapper, support, tmp_path, 4)
    assert len({r.prompt_len for r in reqs}) == 1
    alone = decode(reqs)
    with collect() as st:
        together = decode(reqs, batch_tokens=sum(r.rows * r.prompt_len for r in reqs))
    assert st.shared_batches == 1 and st.calls == 1 and st.padding_tokens == 0
    assert together == alone
    assert len({a for rows in alone for a in rows}) > 4, "answers do not depend on the image: vacuous"


def test_sweep_with_decode_batch_tokens_writes_complete_files_and_resumes(standin, tmp_path):
    """``run_sweep(decode_batch_tokens=N)`` on the stand-in (32 variants, 6 samples, batches of 2 samples):
    killed right after the 3rd sample is checkpointed, the checkpoint holds exactly 3 whole samples and no
    prediction file exists; the rerun completes every file, equal to the exact sweep's (equal-length
    prompts: no padding), and removes the checkpoint."""
    from vlmeval.smp import load

    from vlmeval_encred.sweep import predfiles
    from vlmeval_encred.sweep.checkpoint import checkpoint_path
    from vlmeval_encred.sweep.engine import run_sweep
    from vlmeval_encred.sweep.selection import select_entries

    base = standin["base"]
    chosen = select_entries(base, "all")
    work, exact = tmp_path / "w", tmp_path / "exact"
    ref = run_sweep(base, chosen, [DS], str(exact), progress=False).datasets[0].decoding
    assert ref.shared_batches == 0 and ref.padding_tokens == 0
    per_sample = ref.prompt_tokens // 6  # 32 rows x the prompt length (every sample's is the same)

    def kill_after_three(_ds, idx):
        if idx == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(base, chosen, [DS], str(work), progress=False, on_sample=kill_after_three,
                  decode_batch_tokens=2 * per_sample)
    ck = checkpoint_path(work, base.name, DS)
    lines = ck.read_text().splitlines()
    assert len(lines) == 3 and all(len(json.loads(x)["preds"]) == len(chosen) for x in lines)
    assert not list(work.rglob(f"*_{DS}.xlsx"))  # no prediction file, not even a partial one
    rep = run_sweep(base, chosen, [DS], str(work), progress=False, decode_batch_tokens=2 * per_sample).datasets[0]
    assert rep.computed_samples == 3 and not ck.exists()
    assert rep.decoding.shared_batches == 1 and rep.decoding.padding_tokens == 0  # samples 4+5 together, 6 alone
    assert rep.decoding.prompt_tokens == 3 * per_sample
    for e in chosen:
        path = predfiles.find_pred_file(str(work), e.name, DS, predfiles.layout())
        assert path and predfiles.is_complete(path, list(range(6))), e.name
        assert list(load(path)["prediction"]) == list(load(str(exact / e.name / f"{e.name}_{DS}.xlsx"))["prediction"])


def test_demo_sweep_with_decode_batch_tokens_is_complete(tmp_path, monkeypatch):
    """The demo model (trained checkpoint) on a demo dataset with cross-sample batches of unequal prompt
    lengths: every variant's file is complete, and its answers are those of the exact sweep here (the
    demo's answers are confident; docs/sweeps.md has the count over all demo samples)."""
    import pandas as pd
    from vlmeval.smp import load

    from vlmeval_encred.demo import data
    from vlmeval_encred.registry import get_base
    from vlmeval_encred.sweep import predfiles
    from vlmeval_encred.sweep.engine import run_sweep
    from vlmeval_encred.sweep.selection import select_entries

    lmu = tmp_path / "LMUData"
    data.write_datasets(lmu, samples_per_category=12)
    monkeypatch.setenv("LMUData", str(lmu))
    monkeypatch.setenv("PRED_FORMAT", "tsv")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base = get_base("encred_tiny")
    chosen = select_entries(base, "all")
    ds = "EncredDemo_General"
    rep = run_sweep(base, chosen, [ds], str(tmp_path / "b"), progress=False, decode_batch_tokens=2048).datasets[0]
    assert rep.computed_samples == 12 and len(rep.written) == len(chosen)
    assert rep.decoding.shared_batches > 0 and rep.decoding.padding_tokens > 0, "no padded cross-sample batch"
    run_sweep(base, chosen, [ds], str(tmp_path / "x"), progress=False)
    indices = list(pd.read_csv(lmu / f"{ds}.tsv", sep="\t")["index"])
    assert len(indices) == 12
    for e in chosen:
        got = predfiles.find_pred_file(str(tmp_path / "b"), e.name, ds, predfiles.layout())
        assert got and predfiles.is_complete(got, indices), e.name
        want = predfiles.find_pred_file(str(tmp_path / "x"), e.name, ds, predfiles.layout())
        assert list(load(got)["prediction"]) == list(load(want)["prediction"]), e.name


def test_decode_batch_tokens_option_is_validated():
    """``--decode-batch-tokens``: negative values and combinations that would ignore it are refused by name."""
    from vlmeval_encred.validate import ValidationError, check_decode_batch_tokens

    assert check_decode_batch_tokens(0, adaptive=True, cluster="slurm") == 0
    assert check_decode_batch_tokens(512, adaptive=False, cluster=None) == 512
    with pytest.raises(ValidationError, match="--decode-batch-tokens -1 is not valid"):
        check_decode_batch_tokens(-1, adaptive=False, cluster=None)
    with pytest.raises(ValidationError, match="adaptive rounds decode sample by sample"):
        check_decode_batch_tokens(512, adaptive=True, cluster=None)
    with pytest.raises(ValidationError, match="not passed to cluster jobs"):
        check_decode_batch_tokens(512, adaptive=False, cluster="local")


def test_encred_sweep_cli_decode_batch_tokens(standin, tmp_path, capsys):
    """`encred sweep --decode-batch-tokens N` (in process: the stand-in is registered here) decodes
    samples together and says so: the batches of several samples and the padding prefilled."""
    from vlmeval_encred.cli import main

    rc = main(["sweep", "--model", "concat5_standin", "--data", DS, "--subsets", "k<=1", "--work-dir",
               str(tmp_path / "cli"), "--no-progress", "--decode-batch-tokens", "100000"])
    out = capsys.readouterr().out
    assert rc == 0, out
    line = next(x for x in out.splitlines() if "cross-sample decode batches:" in x)
    assert "batches: 1 (--decode-batch-tokens 100000; 0 padding positions" in line, line  # 6 equal prompts
    assert f"{DS}: 6 samples, 6 computed, 6 prediction files written" in out, out
