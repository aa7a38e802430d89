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
    assert "recipes/imof.txt" in msg and "--env imof" in msg
    assert not [m for m in sys.modules if m == "llava" or m.startswith("llava.")], "the fork was imported first"
