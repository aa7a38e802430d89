"""Behaviour shared by every family's VLMEvalKit wrapper.

A family wrapper subclasses VLMEvalKit's own wrapper (or ``BaseModel``) and
this mixin, so prompts and message handling stay VLMEvalKit's while masking,
greedy decoding and bookkeeping are the same for all families.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from .masking import EncoderAdapter, MaskError, MaskReport, MaskSpec

log = logging.getLogger("vlmeval_encred")
if not log.handlers:  # one visible line per loaded variant, whatever VLMEvalKit configures
    _h = logging.StreamHandler()
    _h.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s - %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    log.addHandler(_h)
    log.setLevel(logging.INFO)
    log.propagate = False

GREEDY: dict[str, Any] = dict(do_sample=False, temperature=None, top_p=None, num_beams=1)
"""Reproducible CUR needs deterministic decoding; entries may override any key."""


class EncredMixin:
    """Mixin: parse the entry's mask, apply it after loading, expose what was done."""

    adapter: EncoderAdapter
    encred_report: MaskReport | None = None

    @staticmethod
    def pop_encred_kwargs(kwargs: dict[str, Any]) -> tuple[MaskSpec, str]:
        """Remove our keywords from ``kwargs`` (the rest go to the family's loader).

        Every family wrapper calls this first in ``__init__``, so an environment whose
        packages the family's upstream code cannot run under fails here, before any
        weights are downloaded or loaded."""
        from .recipes import check_requires

        requires = kwargs.pop("encred_requires", None)
        recipe = kwargs.pop("encred_recipe", "")
        if requires:
            check_requires(requires, what=kwargs.get("encred_base") or "this model", recipe=recipe)
        if kwargs.get("tokens") is not None:
            raise MaskError(f"{kwargs.get('encred_base') or 'this model'}: token-budget variants are not yet "
                            "implemented for this family's wrapper (docs/tokens.md lists the families that have them)")
        kwargs.pop("tokens", None)
        mask = kwargs.pop("mask", ()) or ()
        mode = kwargs.pop("mask_mode", "zero")
        base = kwargs.pop("encred_base", "")
        return MaskSpec(tuple(mask) if not isinstance(mask, str) else mask, mode), base

    @staticmethod
    def pop_token_kwargs(kwargs: dict[str, Any]) -> Any:
        """Remove ``tokens`` (a token-budget variant's budget) from ``kwargs``: a
        :class:`~vlmeval_encred.tokens.TokenSpec` or None.  Only families that implement token
        budgets call this (before :meth:`pop_encred_kwargs`, which refuses ``tokens`` elsewhere);
        the default K of ``{"stage": "llm"}`` without a layer is the base's ``llm_layer``."""
        from .tokens import DEFAULT_LLM_LAYER, TokenSpec

        value = kwargs.pop("tokens", None)
        layer = DEFAULT_LLM_LAYER
        if kwargs.get("encred_base"):
            from .registry import RegistryError, get_base

            try:
                layer = get_base(kwargs["encred_base"]).llm_layer
            except RegistryError:
                pass
        return TokenSpec.from_kwargs(value, layer)

    @staticmethod
    def generation_kwargs(defaults: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
        """Family defaults, then greedy, then the entry's/user's overrides."""
        out = dict(defaults)
        out.update(GREEDY)
        out.update(overrides)
        if not out.get("do_sample"):
            for k in ("temperature", "top_p", "top_k"):
                if out.get(k) is None:
                    out.pop(k, None)
        return out

    def apply_mask(self, model: Any, spec: MaskSpec, name: str) -> MaskReport:
        self.encred_report = self.adapter.apply(model, spec, name)
        r = self.encred_report
        tokens = getattr(self, "tokens", None)
        log.info("vlmeval-encred: %s masked=%s mode=%s freed=%d params resident=%d%s",
                 name, ",".join(r.spec.masked) or "-", r.spec.mode, r.released_params, r.resident_params,
                 f" tokens=keep{tokens.keep}/{tokens.stage}" + (f"@K={tokens.layer}" if tokens.layer else "")
                 if tokens is not None else "")
        return r


def lazy_wrapper_getattr(module_name: str, class_name: str, build: Callable[[], type]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` that builds the wrapper class on first access.

    Families whose VLMEvalKit base class must not be imported when their module is
    (so that ``encred`` tools and tests can use the adapter without vlmeval) define
    the wrapper inside ``build`` and expose it through this (PEP 562).
    """
    cache: dict[str, type] = {}

    def __getattr__(name: str) -> Any:
        if name != class_name:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        if name not in cache:
            cache[name] = build()
        return cache[name]

    return __getattr__


def resolve_dtype(torch_dtype: Any) -> Any:
    """``"bfloat16"`` / ``torch.bfloat16`` -> ``torch.bfloat16``; a clear error for anything else.

    Catalog loader settings are plain data (strings), so every family resolves them the same way.
    """
    import torch

    if isinstance(torch_dtype, torch.dtype):
        return torch_dtype
    dtype = getattr(torch, str(torch_dtype), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"torch_dtype={torch_dtype!r} is not a torch dtype name (e.g. 'bfloat16', 'float32')")
    return dtype
