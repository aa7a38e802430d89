"""I-MoF outside its tested environment (base: transformers 5): the entry fails in the wrapper's
first line, naming the versions found and needed and the recipe, before the fork is imported or
any weights are read (the model path given does not even exist)."""

from __future__ import annotations

import sys

import pytest


def test_masked_imof_entry_fails_before_any_weights_load(tmp_path):
    import transformers
    from packaging.specifiers import SpecifierSet
    from vlmeval.config import supported_VLM

    from vlmeval_encred.recipes import EnvironmentMismatch
    from vlmeval_encred.registry import get_base

    need = get_base("imof_13b").requires["transformers"]
    assert transformers.__version__ not in SpecifierSet(need), "this test belongs to an environment outside the range"
    with pytest.raises(EnvironmentMismatch) as err:
        supported_VLM["imof_13b_mask_dinov2"](model_path=str(tmp_path / "no-such-checkpoint"))
    msg = str(err.value)
    assert f"transformers {transformers.__version__} is installed" in msg
    assert f"imof_13b needs transformers{need}" in msg
    assert "imof/recipe.txt" in msg and "--env imof" in msg
    assert not [m for m in sys.modules if m == "llava" or m.startswith("llava.")], "the fork was imported first"


def test_selftest_reports_the_environment_instead_of_crashing(tmp_path):
    """`encred doctor`'s I-MoF check in this environment: one failed import line naming the versions."""
    from vlmeval_encred.realcode import load_selftest
    from vlmeval_encred.realcode.checks import run_selftest

    results = run_selftest(load_selftest("imof"), tmp_path)
    assert [(r.check, r.ok) for r in results] == [("imports", False)]
    assert "transformers>=4.31,<4.45" in results[0].detail and "imof/recipe.txt" in results[0].detail
