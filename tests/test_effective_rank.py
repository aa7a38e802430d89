"""Effective rank (Roy & Vetterli 2007): the formula on matrices of known rank, the float64
Gram path on wide features, and `encred rank` on the demo model through VLMEvalKit's own
dataset and prompt code (real: the shipped demo checkpoint, VLMEvalKit's custom MCQ dataset)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vlmeval_encred.report.effrank import (GramAccumulator, effective_rank, effective_rank_from_singular_values,
                                           singular_values_from_gram)


def _orth(rng: np.random.Generator, n: int, r: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((n, r)))
    return q


def _with_singular_values(rng: np.random.Generator, n: int, d: int, s: np.ndarray) -> np.ndarray:
    r = len(s)
    return _orth(rng, n, r) @ np.diag(s) @ _orth(rng, d, r).T


def test_identity_and_equal_singular_values_are_exact():
    for n in (1, 2, 7, 64):
        assert effective_rank(np.eye(n)) == pytest.approx(n, rel=1e-12)
    assert effective_rank(3.5 * np.eye(10)) == pytest.approx(10, rel=1e-12)  # scale-free
    assert effective_rank_from_singular_values(np.full(5, 2.0)) == pytest.approx(5.0, rel=1e-15)
    rng = np.random.default_rng(0)
    for r in (1, 3, 12):
        x = _with_singular_values(rng, 200, 80, np.full(r, 4.0))
        assert effective_rank(x) == pytest.approx(r, rel=1e-9)


def test_formula_against_svd_and_bounds():
    rng = np.random.default_rng(1)
    s = np.array([10.0, 5.0, 1.0, 0.1])
    p = s / s.sum()
    want = float(np.exp(-(p * np.log(p)).sum()))
    x = _with_singular_values(rng, 50, 30, s)
    assert effective_rank(x) == pytest.approx(want, rel=1e-9)
    # a generic rank-r product A(n x r) B(r x d): 1 <= erank <= r
    for r in (2, 5, 9):
        y = rng.standard_normal((300, r)) @ rng.standard_normal((r, 40))
        sv = np.linalg.svd(y, compute_uv=False)
        q = sv / sv.sum()
        direct = float(np.exp(-(q[q > 1e-12] * np.log(q[q > 1e-12])).sum()))
        assert 1.0 <= effective_rank(y) <= r + 1e-9
        assert effective_rank(y) == pytest.approx(direct, rel=1e-6)
    assert effective_rank(np.zeros((4, 6))) == 0.0
    one = np.outer(rng.standard_normal(20), rng.standard_normal(30))
    assert effective_rank(one) == pytest.approx(1.0, rel=1e-9)


def test_wide_features_through_the_accumulated_gram():
    """4096-wide, rank 5, 48 rows added in blocks, in float32: the round-off eigenvalues of the
    4096 x 4096 Gram matrix must not inflate the rank."""
    rng = np.random.default_rng(2)
    x = _with_singular_values(rng, 48, 4096, np.full(5, 30.0)).astype(np.float32)
    acc = GramAccumulator(4096)
    for block in np.split(x, 6):
        acc.add(block, images=1)
    assert (acc.rows, acc.images) == (48, 6)
    assert acc.effective_rank() == pytest.approx(5.0, rel=1e-5)
    assert effective_rank(x) == pytest.approx(5.0, rel=1e-5)  # via the 48 x 48 Gram
    other = GramAccumulator(4096)
    other.add(x[:10])
    other.merge(GramAccumulator(4096))
    assert other.rows == 10
    with pytest.raises(ValueError, match="width 8 does not match"):
        acc.add(np.zeros((2, 8)))
    g = np.diag([4.0, 1.0, -1e-18])  # a tiny negative round-off eigenvalue is clipped, not NaN
    assert singular_values_from_gram(g).tolist() == [2.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="NaN or inf"):
        singular_values_from_gram(np.full((2, 2), np.nan))


# ------------------------------------------------------------------ encred rank on the demo model

@pytest.fixture(scope="module")
def demo_env(tmp_path_factory):
    from vlmeval_encred.demo import data

    lmu = tmp_path_factory.mktemp("LMUData")
    data.write_datasets(lmu, samples_per_category=12)
    # a custom MCQ dataset that asks two questions about one image: encoded once
    import pandas as pd

    tsv = pd.read_csv(lmu / "EncredDemo_General.tsv", sep="\t")
    dup = pd.concat([tsv.iloc[:3], tsv.iloc[:3]], ignore_index=True)
    dup["index"] = range(len(dup))
    dup.to_csv(lmu / "EncredRankDup.tsv", sep="\t", index=False)
    from vlmeval_encred.realcode.envscope import scoped_env

    with scoped_env(LMUData=str(lmu), HF_HUB_OFFLINE="1"):
        yield lmu


def test_encred_rank_on_the_demo_model(demo_env, tmp_path, capsys):
    pytest.importorskip("vlmeval")
    import torch

    from vlmeval_encred.cli import main
    from vlmeval_encred.demo.model import pixels_from_image, to_grid
    from vlmeval_encred.registry import get_base
    from vlmeval_encred.sweep.engine import load_model
    from vlmeval_encred.registry import Entry
    from vlmeval_encred.sweep.features import effective_ranks

    base = get_base("encred_tiny")
    model = load_model(base, [Entry(base, ())])
    res = effective_ranks(base, ["EncredDemo_OCR", "EncredDemo_Vision", "EncredRankDup"], limit=10, model=model,
                          progress=False)
    rows = {(r.encoder, r.stage, r.scope): r for r in res.rows}
    widths = {"lowres": 32, "hires": 64, "colour": 32}
    for e, w in widths.items():
        r = rows[(e, "fusion", "EncredDemo_OCR")]
        assert (r.images, r.tokens, r.width) == (10, 160, w)
        assert rows[(e, "projected", "EncredDemo_OCR")].width == 128
        assert rows[(e, "fusion", "EncredRankDup")].images == 3  # 6 questions, 3 distinct images
        suite = rows[(e, "fusion", "all: EncredDemo_OCR, EncredDemo_Vision, EncredRankDup")]
        assert (suite.images, suite.tokens) == (23, 23 * 16)
        assert 1.0 <= r.effective_rank <= min(r.tokens, r.width)
    # the colour tower is a pooled 1x1 map broadcast to 16 tokens: at most one direction per image
    assert rows[("colour", "fusion", "EncredRankDup")].effective_rank <= 3 + 1e-6
    # independent recomputation: the towers run directly on the dataset's images, rows stacked
    from PIL import Image
    from vlmeval.dataset import build_dataset

    ds = build_dataset("EncredDemo_OCR")
    paths = [ds.dump_image(ds.data.iloc[i])[0] for i in range(10)]  # the files the model was given
    m = model.model
    with torch.inference_mode():
        for e in widths:
            feats = [to_grid(m.towers[e](pixels_from_image(Image.open(p), m.config.image_size)),
                             m.config.grid)[0].double().numpy() for p in paths]
            assert rows[(e, "fusion", "EncredDemo_OCR")].effective_rank == pytest.approx(
                effective_rank(np.concatenate(feats)), rel=1e-6)
    # the CLI writes the sheet, Markdown, JSON and figure
    out = tmp_path / "rank"
    rc = main(["rank", "--model", "encred_tiny", "--data", "EncredDemo_OCR", "--limit", "4", "--out", str(out),
               "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0 and "effective rank" in text
    names = {p.name for p in out.iterdir()}
    assert {"encred_tiny_rank.xlsx", "encred_tiny_rank.md", "encred_tiny_rank.json", "encred_tiny_rank.png"} <= names
    assert (out / "encred_tiny_rank.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["rank", "--model", "no_such", "--data", "EncredDemo_OCR"]) == 2
