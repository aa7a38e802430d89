"""The declarative registry of base models and the VLMEvalKit entries derived from them.

One :class:`BaseModelSpec` per checkpoint is the single source of truth.  From
it we derive ``<base>`` (nothing masked) and ``<base>_mask_<enc>[_<enc>...]``
for every non-empty subset of the base's encoders, always in the base's
encoder order, so a name is canonical: ``eagle_x5_mask_sam_clip`` is not an
entry, ``eagle_x5_mask_clip_sam`` is.

Token-budget variants (issue 19, :mod:`vlmeval_encred.tokens`, docs/tokens.md) append
``_keep<NN>[_llm[<K>]]`` *after* the mask: ``<base>_keep25``, ``<base>_mask_sam_keep50``,
``<base>_keep25_llm`` (K = the base's ``llm_layer``), ``<base>_keep25_llm3``.  The keep
values of :data:`~vlmeval_encred.tokens.REGISTERED_KEEPS` are enumerated (``entries(tokens=True)``);
any other 1..100 parses and is registered in VLMEvalKit on first lookup.

The registry is deliberately free of torch/vlmeval imports so that ``encred
models`` is instant; wrapper classes are named by ``"module:Class"`` strings
and imported only when VLMEvalKit is being populated.
"""

from __future__ import annotations

import importlib
import itertools
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from .tokens import (DEFAULT_LLM_LAYER, KEEP_SEP, REGISTERED_KEEPS, RESERVED_ENCODER_RE, STAGES, TokenError,
                     TokenSpec, parse_token_suffix, split_token_suffix)

MASK_SEP = "_mask_"
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_ENC_RE = re.compile(r"^[a-z][a-z0-9]*$")


class RegistryError(ValueError):
    """A registry entry or a model name is invalid."""


@dataclass(frozen=True)
class BaseModelSpec:
    """One trained checkpoint with several vision encoders.

    ``encoders`` are short, lower-case, stable names in the order in which the
    checkpoint's own config lists its towers; at load time the wrapper checks
    them against the loaded model (see ``vlmeval_encred.masking``), so a wrong
    entry fails loudly instead of masking the wrong tower.
    """

    name: str
    family: str
    checkpoint: str
    encoders: tuple[str, ...]
    wrapper: str
    """``"module:Class"`` of the VLMEvalKit wrapper that loads this family."""
    loader: Mapping[str, Any] = field(default_factory=dict)
    """Keyword arguments for the wrapper (loader and generation settings)."""
    modes: tuple[str, ...] = ("zero",)
    """Mask modes the family supports; the first is the default."""
    description: str = ""
    requires: Mapping[str, str] = field(default_factory=dict)
    """Package -> version specifier the family's upstream code needs (e.g. ``{"transformers":
    ">=4.37,<4.45"}``); checked when an entry is built, before any weights load."""
    recipe: str = ""
    """The tested environment recipe named in errors (:mod:`vlmeval_encred.recipes`: a family's
    ``model_wrappers/<family>/recipe.txt``, the recipe's name being the family's)."""
    token_stages: tuple[str, ...] = ()
    """Token-budget stages (:data:`vlmeval_encred.tokens.STAGES`) the family's wrapper implements."""
    token_refusals: Mapping[str, str] = field(default_factory=dict)
    """Stage -> why it cannot be defined for this family (named in the error for such a name).
    A stage in neither field is "not yet implemented"."""
    llm_layer: int = DEFAULT_LLM_LAYER
    """K of a plain ``_llm`` suffix (prune after this many decoder layers)."""

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name) or MASK_SEP in self.name or _KEEP_IN_NAME.search(self.name):
            raise RegistryError(
                f"base model name {self.name!r}: expected lower case letters, digits and '_' "
                f"starting with a letter, without {MASK_SEP!r} or {KEEP_SEP}<digits>")
        if len(self.encoders) < 1:
            raise RegistryError(f"base model {self.name!r}: needs at least one encoder")
        for enc in self.encoders:
            if not _ENC_RE.match(enc):
                raise RegistryError(
                    f"base model {self.name!r}: encoder short name {enc!r} must be lower case "
                    "letters and digits (it becomes part of VLMEvalKit model names)")
            if RESERVED_ENCODER_RE.match(enc):
                raise RegistryError(f"base model {self.name!r}: encoder short name {enc!r} is reserved for "
                                    "token-budget suffixes (keep<NN>, fusion, llm<K>)")
        bad = [st for st in (*self.token_stages, *self.token_refusals) if st not in STAGES]
        if bad or set(self.token_stages) & set(self.token_refusals):
            raise RegistryError(f"base model {self.name!r}: token stages must be among {', '.join(STAGES)} and "
                                "either implemented or refused, not both")
        if len(set(self.encoders)) != len(self.encoders):
            raise RegistryError(f"base model {self.name!r}: duplicate encoder names {self.encoders}")
        if ":" not in self.wrapper:
            raise RegistryError(f"base model {self.name!r}: wrapper {self.wrapper!r} must be 'module:Class'")
        object.__setattr__(self, "encoders", tuple(self.encoders))
        object.__setattr__(self, "modes", tuple(self.modes))
        object.__setattr__(self, "token_stages", tuple(self.token_stages))

    def token_refusal(self, masked: tuple[str, ...], tokens: TokenSpec) -> str | None:
        """Why ``tokens`` is not available on this base with ``masked`` encoders, or None."""
        if tokens.stage in self.token_refusals:
            return (f"the {tokens.stage} token stage is not defined for family {self.family}: "
                    f"{self.token_refusals[tokens.stage]}")
        if tokens.stage not in self.token_stages:
            done = sorted({b.family for b in _BASES.values() if tokens.stage in b.token_stages})
            return (f"the {tokens.stage} token stage is not yet implemented for family {self.family}"
                    + (f" (implemented for: {', '.join(done)})" if done else "") + "; see docs/tokens.md")
        if tokens.stage == "fusion" and len(set(masked)) >= len(self.encoders):
            return "every encoder is masked, so no encoder is left to score tokens at the fusion point"
        return None

    def token_variants(self) -> list[TokenSpec]:
        """The registered budgets of this base: REGISTERED_KEEPS x its implemented stages."""
        return [TokenSpec(k, st, self.llm_layer if st == "llm" else None)
                for st in STAGES if st in self.token_stages for k in REGISTERED_KEEPS]

    def subsets(self) -> Iterator[tuple[str, ...]]:
        """Every subset of encoders (empty first), each in the base's order."""
        for k in range(len(self.encoders) + 1):
            yield from itertools.combinations(self.encoders, k)

    def entry_name(self, masked: tuple[str, ...] | list[str] = (), tokens: TokenSpec | None = None) -> str:
        masked = self.canonical(masked)
        name = self.name if not masked else self.name + MASK_SEP + "_".join(masked)
        return name + (tokens.suffix(self.llm_layer) if tokens is not None else "")

    def canonical(self, masked: tuple[str, ...] | list[str]) -> tuple[str, ...]:
        unknown = [m for m in masked if m not in self.encoders]
        if unknown:
            raise RegistryError(
                f"base model {self.name!r} has no encoder {', '.join(map(repr, unknown))}; "
                f"valid encoders: {', '.join(self.encoders)}")
        return tuple(e for e in self.encoders if e in set(masked))

    def load_wrapper_class(self) -> type:
        module, _, attr = self.wrapper.partition(":")
        return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Entry:
    """One VLMEvalKit model name: a base model with a set of masked encoders (and, for a
    token-budget variant, the budget)."""

    base: BaseModelSpec
    masked: tuple[str, ...]
    tokens: TokenSpec | None = None

    @property
    def name(self) -> str:
        return self.base.entry_name(self.masked, self.tokens)

    @property
    def kept(self) -> tuple[str, ...]:
        return tuple(e for e in self.base.encoders if e not in self.masked)

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the ``functools.partial`` registered in VLMEvalKit."""
        kw = dict(self.base.loader)
        kw.update(model_path=self.base.checkpoint, encred_base=self.base.name,
                  mask=self.masked, mask_mode=self.base.modes[0])
        if self.base.requires:
            kw.update(encred_requires=dict(self.base.requires), encred_recipe=self.base.recipe)
        if self.tokens is not None:
            kw["tokens"] = self.tokens.as_kwargs()
        return kw


_BASES: dict[str, BaseModelSpec] = {}
_KEEP_IN_NAME = re.compile(KEEP_SEP + r"[0-9]")


def register_base(spec: BaseModelSpec) -> BaseModelSpec:
    """Add a base model; names are unique across families."""
    if spec.name in _BASES and _BASES[spec.name] != spec:
        raise RegistryError(f"base model {spec.name!r} is registered twice with different settings")
    for other in _BASES.values():
        if other.name != spec.name and (spec.name.startswith(other.name + MASK_SEP)
                                        or other.name.startswith(spec.name + MASK_SEP)):
            raise RegistryError(f"base names {spec.name!r} and {other.name!r} would give clashing entries")
    _BASES[spec.name] = spec
    return spec


def _ensure_catalog() -> None:
    # Each family's catalog module only registers (bases, sources, hooks); importing them is cheap.
    from .families import load_catalogs

    load_catalogs()


def bases(family: str | None = None) -> list[BaseModelSpec]:
    _ensure_catalog()
    return [b for b in _BASES.values() if family is None or b.family == family]


def get_base(name: str) -> BaseModelSpec:
    _ensure_catalog()
    try:
        return _BASES[name]
    except KeyError:
        raise RegistryError(_unknown_base_message(name)) from None


def _unknown_base_message(name: str) -> str:
    from .validate import unknown_name

    base_part, sep, _ = name.partition(MASK_SEP)
    if sep and base_part in _BASES:
        return (f"{name!r} is a masked entry of base model {base_part!r}; this argument takes a base model "
                f"name (variants are derived from it), e.g. {base_part!r}")
    return unknown_name("base model", name, _BASES, hint="`encred models` lists them")


def families() -> list[str]:
    return sorted({b.family for b in bases()})


def entries(family: str | None = None, base: str | None = None, tokens: bool = False) -> list[Entry]:
    """All entries, bases in registration order, subsets by size then base order.

    The mask lattice only, unless ``tokens``: then each base's lattice is followed by its
    registered token-budget variants (``BaseModelSpec.token_variants``, per subset where the
    stage is available).  Sweeps and the report work on the mask lattice.
    """
    chosen = [get_base(base)] if base else bases(family)
    if family and base and chosen[0].family != family:
        return []
    out = []
    for b in chosen:
        subsets = list(b.subsets())
        out += [Entry(b, s) for s in subsets]
        if tokens:
            out += [Entry(b, s, t) for t in b.token_variants() for s in subsets if b.token_refusal(s, t) is None]
    return out


def parse_entry_name(name: str) -> Entry:
    """Inverse of :meth:`BaseModelSpec.entry_name`, with errors that say what is valid."""
    _ensure_catalog()
    head, suffix = split_token_suffix(name)  # base names never contain _keep<digits>
    entry = _parse_mask_part(head)
    if entry is None:
        raise RegistryError(unknown_entry_message(name))
    if suffix is None:
        return entry
    tokens = _parse_tokens(name, entry, suffix)
    return Entry(entry.base, entry.masked, tokens)


def _parse_mask_part(name: str) -> Entry | None:
    base_name, sep, rest = name.partition(MASK_SEP)
    spec = _BASES.get(base_name)
    if spec is None:
        return None
    if not sep:
        return Entry(spec, ())
    masked = tuple(rest.split("_")) if rest else ()
    if masked and all(m in spec.encoders for m in masked) and spec.canonical(masked) == masked:
        return Entry(spec, masked)
    return None


def _parse_tokens(name: str, entry: Entry, suffix: str) -> TokenSpec:
    """The budget of a name whose mask part is valid; RegistryError with the reason otherwise."""
    spec = entry.base
    try:
        tokens, canon = parse_token_suffix(suffix, spec.llm_layer)
    except TokenError as exc:
        raise RegistryError(f"model {name!r} is not registered: {exc}") from None
    if canon is not None:
        fixed = spec.entry_name(entry.masked, tokens)
        why = ("fusion is the default stage and is not written" if tokens.stage == "fusion"
               else f"K={spec.llm_layer} is {spec.name}'s default layer and is not written")
        raise RegistryError(f"model {name!r} is not registered: the canonical spelling of this budget is "
                            f"{canon!r} ({why}); use {fixed!r}")
    why = spec.token_refusal(entry.masked, tokens)
    if why:
        raise RegistryError(f"model {name!r} is refused: {why}")
    return tokens


def all_entry_names() -> list[str]:
    """Every registered VLMEvalKit model name (bases, masked and token-budget variants)."""
    return [e.name for e in entries(tokens=True)]


def unknown_entry_message(name: str) -> str:
    """One line saying why ``name`` is not a registered entry and what the valid names are.

    Covers a misspelt or unknown base, a misspelt encoder, encoders out of the canonical
    order, a repeated encoder and an empty mask; always ends with the nearest valid names.
    """
    from .validate import nearest

    _ensure_catalog()
    names = all_entry_names()
    near = nearest(name, names)
    tail = f"; nearest valid names: {', '.join(near)}" if near else ""
    head, suffix = split_token_suffix(name)
    if suffix is not None and _parse_mask_part(head) is not None:
        try:
            parse_entry_name(name)
        except RegistryError as exc:
            return str(exc)
        return f"model {name!r} is a valid name"
    misplaced = re.search(KEEP_SEP + r"[0-9]+(_llm[0-9]*|_fusion)?(?=_mask_)", name)
    if misplaced:
        fixed = name[:misplaced.start()] + name[misplaced.end():] + misplaced.group(0)
        return (f"model {name!r} is not registered: the token budget {misplaced.group(0)[1:]!r} comes after the "
                f"mask: <base>{MASK_SEP}<enc>...{KEEP_SEP}<NN>[_llm[<K>]], e.g. {fixed!r}")
    if suffix is not None:  # explain what is wrong with the base / mask part, naming the whole name
        return _mask_part_message(head, tail).replace(f"model {head!r}", f"model {name!r}", 1)
    return _mask_part_message(name, tail)


def _mask_part_message(name: str, tail: str) -> str:
    from .validate import nearest

    near = nearest(name, all_entry_names())
    base_name, sep, rest = name.partition(MASK_SEP)
    spec = _BASES.get(base_name)
    if spec is None:
        bnear = nearest(base_name, _BASES)
        return (f"model {name!r} is not registered by vlmeval-encred: no base model {base_name!r}"
                + (f" (nearest bases: {', '.join(bnear)})" if bnear else "")
                + f"{tail}; names are <base> or <base>{MASK_SEP}<enc>[_<enc>...] (`encred models` lists all)")
    order = "_".join(spec.encoders)
    masked = tuple(rest.split("_")) if rest else ()
    if not masked or not all(masked):
        return (f"model {name!r} is not registered: nothing after {MASK_SEP!r} (use {spec.name!r} for the "
                f"full model, or mask encoders of {spec.name} in the canonical order {order})"
                + (f"; nearest valid names: {', '.join(n for n in near if n != name)}" if near else ""))
    unknown = [m for m in masked if m not in spec.encoders]
    if unknown:
        fixes = []
        for u in unknown:
            en = nearest(u, spec.encoders, n=1)
            fixes.append(f"{u!r}" + (f" (did you mean {en[0]!r}?)" if en else ""))
        return (f"model {name!r} is not registered: base model {spec.name} has no encoder "
                f"{', '.join(fixes)}; its encoders, in canonical order: {order}{tail}")
    repeated = sorted({m for m in masked if masked.count(m) > 1}, key=spec.encoders.index)
    fixed = spec.entry_name(masked)
    if repeated:
        return (f"model {name!r} is not registered: encoder {', '.join(map(repr, repeated))} is listed more "
                f"than once; each masked encoder appears once, in the canonical order {order}: use {fixed!r}")
    return (f"model {name!r} is not registered: masked encoders must follow {spec.name}'s canonical order "
            f"{order}; use {fixed!r}")
