"""Self-tests of the family adapters on tiny random models built from the *real* upstream classes.

A family with a self-test keeps it in its folder (``model_wrappers/<family>/selftest.py``)
and names it in its catalog, ``provide("selftest", name, "module:attr")`` (one family may
have several, one per tower layout).  Each is a
:class:`~vlmeval_encred.realcode.checks.RealCodeSelfTest`: which upstream repositories it
needs (see :mod:`vlmeval_encred.upstream`), which tested environment recipe it belongs to
(:mod:`vlmeval_encred.recipes`), how to import the upstream code, and how to build a tiny
random model from upstream's own classes offline.  ``encred doctor`` and the test suite run
the *same* checks (:func:`vlmeval_encred.realcode.checks.run_selftest`): one check, one place.

:data:`SELFTESTS` maps name -> ``"module:attribute"`` from the catalogs only, so
``encred doctor --help`` imports no family code.  Shared helpers stay here: ``checks``
(the checks) and ``fakehub`` (an offline Hugging Face cache).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping


class _SelfTests(Mapping):
    """Self-test name -> ``"module:attribute"``, read from the families' catalogs on first use."""

    def _table(self) -> dict[str, str]:
        from ..families import provided

        return provided("selftest")

    def __getitem__(self, name: str) -> str:
        return self._table()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())

    def __repr__(self) -> str:
        return f"SELFTESTS({self._table()!r})"


SELFTESTS: Mapping[str, str] = _SelfTests()


def load_selftest(family: str):
    try:
        target = SELFTESTS[family]
    except KeyError:
        raise KeyError(f"no real-code self-test for family {family!r}; have: {', '.join(SELFTESTS) or 'none'}") from None
    from ..families import resolve

    return resolve(target)
