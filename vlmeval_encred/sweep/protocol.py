"""The optional per-family contract of a sweep: :class:`SweepSupport`.

A family opts in by giving its VLMEvalKit wrapper class an attribute
``sweep_support`` holding an object with these three methods (or by
:func:`register_sweep_support` from outside the family module).  The engine
never looks inside a model; it only calls these methods, in this order, once
per sample:

1. ``prepare(wrapper, message, dataset)`` -- exactly what the wrapper's
   ``generate_inner`` does before the model runs (prompt template, tokenizer,
   image processor), on the message VLMEvalKit would have passed.
2. ``encode(wrapper, inputs, encoders)`` -- run each named encoder once and
   return its per-image output *at the fusion point* (the tensor that masking
   replaces by zeros).
3. ``fuse_and_generate(wrapper, inputs, features_per_subset, mask_mode)`` --
   one list item per subset: a dict encoder -> tensor, with ``None`` for a
   masked encoder; fuse each subset exactly as a variant of that mask would,
   decode all of them as one batch with the wrapper's generation settings, and
   return one string per subset, post-processed exactly as ``generate_inner``
   post-processes.

Optional: ``fuse(wrapper, inputs, features_per_subset, mask_mode) ->
:class:`~.decoding.DecodeRequest``` -- the same fusion as ``fuse_and_generate`` but
stopping before decoding; a family that has it lets the engine decode with
:func:`.decoding.decode` (shared prefix, finished rows dropped, and rows of several
samples in one batch when the user sets a token budget).  Its ``fuse_and_generate``
should then be ``decode([self.fuse(...)])[0]``, so both paths are one.

Optional: ``project(wrapper, inputs, features) -> {encoder: tensor}``, each
encoder's features carried through the family's projector (``encred rank`` ranks
them next to the fusion-point features; see :mod:`.features`).

Optional, token budgets (docs/tokens.md; ``encred sweep --keep``): a support that declares
``token_stages_swept = ("fusion", ...)`` (the stages it can sweep) also accepts
``fuse_and_generate(..., tokens=[TokenSpec | None per row])``: row ``i`` then gets the
answer of the variant with that row's mask *and* budget (``None``: unpruned), from the
same encoder outputs.  The engine passes ``tokens=`` only to such supports, and only for
rows with a budget; a budget of a stage the support does not declare is refused before
any model loads (:func:`check_token_stages`).

Why this split: encoders are the part of the cost that subsets share, and a
batch over subsets with one prompt needs no padding, so greedy decoding sees
the same token positions as a batch of one.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable


class SweepUnsupportedError(TypeError):
    """The loaded wrapper's family does not implement :class:`SweepSupport`."""


@runtime_checkable
class SweepSupport(Protocol):
    """What the sweep engine needs from a family (see the module docstring)."""

    def prepare(self, wrapper: Any, message: list[dict[str, Any]], dataset: str | None) -> Any: ...

    def encode(self, wrapper: Any, inputs: Any, encoders: Sequence[str]) -> dict[str, Any]: ...

    def fuse_and_generate(self, wrapper: Any, inputs: Any, features_per_subset: list[dict[str, Any]],
                          mask_mode: str) -> list[str]: ...


_EXTRA: dict[str, SweepSupport] = {}

# Supports shipped with this package for wrappers that do not carry a ``sweep_support``
# attribute themselves: wrapper "module:Class" -> support "module:Class" (imported lazily).
_BUILTIN: dict[str, str] = {}
"""Optional ``"module:Class" -> "module:Support"`` table for wrappers that cannot carry
a ``sweep_support`` attribute themselves; the shipped families set the attribute."""


def _class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def register_sweep_support(wrapper_class: str | type, support: SweepSupport) -> None:
    """Attach ``support`` to a wrapper class named ``"module:Class"`` (or given as a class)."""
    if not isinstance(support, SweepSupport):
        raise TypeError(f"{type(support).__name__} does not implement SweepSupport "
                        "(needs prepare, encode, fuse_and_generate)")
    key = wrapper_class if isinstance(wrapper_class, str) else _class_path(wrapper_class)
    _EXTRA[key] = support


def support_for(wrapper: Any) -> SweepSupport:
    """The wrapper's :class:`SweepSupport`, or an error that says how to opt in."""
    return support_for_class(type(wrapper))


def support_for_class(cls: type) -> SweepSupport:
    """:func:`support_for` from the wrapper class alone (checks that must run before a model loads)."""
    support = getattr(cls, "sweep_support", None)
    if support is None:
        for klass in cls.__mro__:
            key = _class_path(klass)
            if key not in _EXTRA and key in _BUILTIN:
                import importlib

                module, _, attr = _BUILTIN[key].partition(":")
                _EXTRA[key] = getattr(importlib.import_module(module), attr)()
            support = _EXTRA.get(key)
            if support is not None:
                break
    if support is None or not isinstance(support, SweepSupport):
        raise SweepUnsupportedError(
            f"{_class_path(cls)} does not implement vlmeval_encred.sweep.protocol.SweepSupport, so "
            "`encred sweep` cannot share encoder outputs across subsets for this family. Run the "
            "variants one by one instead (`encred cluster --mode per-variant` or `python -m vlmeval "
            "--model <variant>`), or give the wrapper class a `sweep_support` attribute.")
    return support


def swept_token_stages(support: Any) -> tuple[str, ...]:
    """The token stages ``support`` can sweep (its optional ``token_stages_swept``; none by default)."""
    return tuple(getattr(support, "token_stages_swept", None) or ())


def check_token_stages(support: Any, family: str, wanted: Sequence[tuple[str, str]]) -> None:
    """Refuse budgets the family's support cannot sweep, naming the family and what it does sweep.

    ``wanted``: (variant name, its token stage) of every selected budget variant.  Why before
    loading: a 7B model takes minutes to load, and the answer does not depend on it."""
    have = swept_token_stages(support)
    bad = [(name, stage) for name, stage in wanted if stage not in have]
    if not bad:
        return
    stages = sorted({stage for _, stage in bad})
    names = ", ".join(name for name, _ in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    can = (f"it sweeps the {'/'.join(have)} token stage{'s' if len(have) > 1 else ''} only" if have
           else "its SweepSupport declares no token_stages_swept, so it sweeps the mask lattice only")
    raise SweepUnsupportedError(
        f"family {family} cannot sweep token budgets at the {'/'.join(stages)} stage ({names}): {can}. "
        "Drop those budgets from the sweep (--keep/--token-stage), or run those variants one by one "
        "(`python run.py --model <variant>` in VLMEvalKit).")
