"""Training the demo model on an encoder subset (`demo.train --encoders`, used by
benchmarks/masking_vs_retraining.py): the other towers never receive a gradient."""

from __future__ import annotations

import itertools

import pytest
import torch

from vlmeval_encred.demo import train
from vlmeval_encred.demo.model import build_model


def _decay_only(before: torch.Tensor, after: torch.Tensor) -> bool:
    """True if ``after`` is ``before`` times one scalar: AdamW's decoupled weight decay alone."""
    nz = before.abs() > 1e-6
    ratio = after[nz] / before[nz]
    return bool(torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-5, atol=1e-7))


def test_training_on_a_subset_leaves_the_other_towers_untrained():
    init, _ = build_model(0)
    model, _, table = train.train(None, steps=3, batch_size=8, n_train=12, n_eval=4, quiet=True,
                                  encoders=["hires"])
    for name in ("lowres", "colour"):
        for (pn, p0), p1 in zip(init.towers[name].named_parameters(), model.towers[name].parameters()):
            if p0.dim() > 1:
                assert _decay_only(p0.detach(), p1.detach()), f"{name}.{pn} received a gradient"
    trained = [(p0, p1) for p0, p1 in zip(init.towers["hires"].parameters(), model.towers["hires"].parameters())
               if p0.dim() > 1]
    assert not all(_decay_only(p0.detach(), p1.detach()) for p0, p1 in trained)
    assert set(table) == {m for k in range(4) for m in itertools.combinations(("lowres", "hires", "colour"), k)}
    with pytest.raises(ValueError, match="non-empty subset of"):
        train.train(None, steps=1, n_train=4, n_eval=2, quiet=True, encoders=["sam"])
