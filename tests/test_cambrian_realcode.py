"""Cambrian-1 masking on upstream's *real* classes (cambrian-mllm/cambrian 539ffc3).

``encred doctor``'s check, run here: a tiny random ``CambrianLlamaForCausalLM`` whose
four towers (SigLIP and ConvNeXt through open_clip/timm, CLIP and DINOv2 through
transformers) load from a local fake hub cache under their upstream repository ids,
compared through upstream's ``generate()`` (the only path that feeds the SVA layers
inside the LLM).  Every subset of the four towers x zero/zero_context/drop.
Needs the ``cambrian`` environment (transformers 4.37): ``bash scripts/env.sh --env
cambrian python -m pytest -q tests/test_cambrian_realcode.py``.
"""

from __future__ import annotations

import pytest

from vlmeval_encred.upstream import UpstreamNotFound

pytestmark = pytest.mark.envs("cambrian")


@pytest.fixture(scope="module")
def selftest():
    from vlmeval_encred.realcode import load_selftest

    test = load_selftest("cambrian")
    try:
        test.import_upstream()
    except UpstreamNotFound as exc:
        pytest.skip(str(exc))
    return test


def test_every_subset_and_mode_matches_the_authors_masking(selftest, tmp_path_factory):
    from vlmeval_encred.realcode.checks import run_selftest

    results = run_selftest(selftest, tmp_path_factory.mktemp("cambrian"))
    failed = [r.line() for r in results if not r.ok]
    assert not failed, "\n".join(failed)
    by_check = {}
    for r in results:
        by_check[r.check] = by_check.get(r.check, 0) + 1
    # 15 subsets x 3 modes, each checked for silence and freed parameters; 15 zero runs
    # compared with the authors' run-then-zero.
    assert by_check["not_called"] == 45 and by_check["params_freed"] == 45
    assert by_check["zero_equals_run_then_zero"] == 15
    exempt = [r for r in results if r.check == "not_called" and "runs by design" in r.detail]
    assert len(exempt) == 8 and all("mode=zero" in r.subject and "siglip" in r.subject for r in exempt)


def test_the_selftest_detects_a_wrong_mask(selftest, tmp_path_factory):
    """The comparison can fail: masking clip while the reference zeroes dinov2 is caught."""
    from vlmeval_encred.realcode.checks import compare

    base = selftest.build(tmp_path_factory.mktemp("cambrian-neg"))
    masked = selftest.fresh(base)
    selftest.mask(masked, ("clip",), "zero")
    ok, _ = compare(selftest.run(masked), selftest.run_then_zero(selftest.fresh(base), ("dinov2",)))
    assert not ok
    ok, why = compare(selftest.run(masked), selftest.run_then_zero(selftest.fresh(base), ("clip",)))
    assert ok, why
