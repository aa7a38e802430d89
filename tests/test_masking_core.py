"""The family-independent mask specification."""

from __future__ import annotations

import pytest

from vlmeval_encred.masking import MaskError, MaskSpec


def test_validate_orders_by_model_and_lists_valid_names():
    spec = MaskSpec(("sam", "clip")).validate(["clip", "convnext", "sam"], model="m")
    assert spec.masked == ("clip", "sam")
    with pytest.raises(MaskError, match="its encoders, in order, are: clip, convnext, sam"):
        MaskSpec(("vit",)).validate(["clip", "convnext", "sam"])


def test_modes_and_duplicates():
    with pytest.raises(MaskError, match="valid modes: zero, drop, zero_context"):
        MaskSpec((), mode="blur")
    with pytest.raises(MaskError, match="does not support mask mode 'drop'"):
        MaskSpec(("a",), mode="drop").validate(["a", "b"], modes=("zero",))
    with pytest.raises(MaskError, match="more than once"):
        MaskSpec(("a", "a"))
    assert MaskSpec("a,b").masked == ("a", "b")
    # An empty mask never needs a supported mode check.
    assert MaskSpec((), mode="drop").validate(["a"], modes=("zero",)).masked == ()
