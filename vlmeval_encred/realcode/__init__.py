"""Self-tests of the family adapters on tiny random models built from the *real* upstream classes.

One module per family (``vlmeval_encred.realcode.<family>``) provides a
:class:`~vlmeval_encred.realcode.checks.RealCodeSelfTest`: which upstream
repositories it needs (see :mod:`vlmeval_encred.upstream`), which tested
environment recipe it belongs to (``requirements/env-<recipe>.txt``), how to
import the upstream code, and how to build a tiny random model from upstream's
own classes offline.  ``encred doctor`` and the test suite run the *same*
checks (:func:`vlmeval_encred.realcode.checks.run_selftest`): one check, one place.

This package maps family -> module by name only, so ``encred doctor --help``
imports no family code.
"""

from __future__ import annotations

import importlib

SELFTESTS: dict[str, str] = {
    # family: "module:attribute" of its RealCodeSelfTest
    "imof": "vlmeval_encred.realcode.imof:SELFTEST",
    "deepseek_vl": "vlmeval_encred.realcode.deepseek_vl:SELFTEST",
    "eagle1": "vlmeval_encred.realcode.eagle1:SELFTEST",
    "eagle1_x4": "vlmeval_encred.realcode.eagle1:SELFTEST_X4",
    "cambrian": "vlmeval_encred.realcode.cambrian:SELFTEST",
    "eagle2": "vlmeval_encred.realcode.eagle2:SELFTEST",
}


def load_selftest(family: str):
    try:
        target = SELFTESTS[family]
    except KeyError:
        raise KeyError(f"no real-code self-test for family {family!r}; have: {', '.join(SELFTESTS) or 'none'}") from None
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)
