"""Parse ``--subsets`` and ``--data`` into registry entries and official dataset names.

``--subsets`` counts *masked* encoders, as entry names do: ``k=0`` is the full
model, ``k=1`` every single-encoder ablation, ``k<=2`` both of those and every
pair; ``all`` is the whole lattice (2^n entries); otherwise a comma-separated
list of entry names of the base, token-budget variants included
(``encred_tiny_mask_hires_keep25``).  ``--keep`` / ``--token-stage`` then cross the
selected masks with token budgets (:func:`with_budgets`).  Order of the result: the
registry's (unpruned masks by size, then base order; then budgets by stage, layer and
keep, each over the masks), so files and progress bars are stable.
"""

from __future__ import annotations

import re
from typing import Iterable

from ..registry import BaseModelSpec, Entry, RegistryError, entries, parse_entry_name
from ..tokens import STAGES, TokenError, TokenSpec
from ..suites import dataset_names, load_raw

_K_RE = re.compile(r"^k\s*(=|==|<=|>=|<|>)\s*(\d+)$")


class SelectionError(ValueError):
    """A ``--subsets`` or ``--data`` value names nothing valid."""


def select_entries(base: BaseModelSpec, subsets: str = "all") -> list[Entry]:
    """The entries of ``base`` chosen by a ``--subsets`` expression."""
    lattice = entries(base=base.name)
    text = (subsets or "all").strip()
    if text == "all":
        return lattice
    m = _K_RE.match(text)
    if m:
        op, k = m.group(1), int(m.group(2))
        if k > len(base.encoders):
            raise SelectionError(f"--subsets {text!r}: {base.name} has only {len(base.encoders)} encoders")
        test = {"=": k.__eq__, "==": k.__eq__, "<=": k.__ge__, ">=": k.__le__, "<": k.__gt__, ">": k.__lt__}[op]
        chosen = [e for e in lattice if test(len(e.masked))]
        if not chosen:
            raise SelectionError(f"--subsets {text!r} selects no entry of {base.name}")
        return chosen
    if text[:1] in "kK" and any(op in text for op in "=<>"):
        raise SelectionError(f"--subsets {text!r} is not valid: expected k=<n>, k<=<n>, k>=<n>, k<<n> or k><n> "
                             f"with n from 0 to {len(base.encoders)} (masked encoders of {base.name}), "
                             "'all' or entry names")
    names = [e.name for e in lattice]
    wanted = []
    for name in (n.strip() for n in text.split(",")):
        if not name:
            continue
        try:
            entry = parse_entry_name(name)
        except RegistryError:
            raise SelectionError(_unknown_subset(base, name, names)) from None
        if entry.base.name != base.name:
            raise SelectionError(f"--subsets: {name!r} is an entry of {entry.base.name!r}, not of {base.name!r}"
                                 + _near(name.replace(entry.base.name, base.name, 1), names))
        wanted.append(entry)
    if not wanted:
        raise SelectionError("--subsets: expected 'all', 'k=<n>', 'k<=<n>' or entry names, got nothing")
    # Entry holds a dict (loader): key by the mask and the budget, not the entry
    unique = {(e.masked, e.tokens): e for e in wanted}
    return sorted(unique.values(), key=entry_order(base))


def entry_order(base: BaseModelSpec):
    """Sort key of entries of ``base``: unpruned masks in lattice order, then token budgets by
    stage, layer and keep, each over the masks in lattice order (``registry.entries(tokens=True)``)."""
    order = {e.masked: i for i, e in enumerate(entries(base=base.name))}
    stages = list(STAGES)

    def key(e: Entry) -> tuple:
        if e.tokens is None:
            return (0, 0, 0, 0, order[e.masked])
        return (1, stages.index(e.tokens.stage), e.tokens.layer or 0, e.tokens.keep, order[e.masked])

    return key


def parse_keeps(text: str) -> list[int | None]:
    """``--keep 25,50,100``: kept percentages; ``100`` and ``none`` mean the unpruned model (None)."""
    out: list[int | None] = []
    for item in (x.strip().lower() for x in str(text).split(",")):
        if not item:
            continue
        if item == "none":
            out.append(None)
            continue
        try:
            keep = int(item.rstrip("%"))
        except ValueError:
            raise SelectionError(f"--keep: {item!r} is not a percentage; expected e.g. 25,50,100 "
                                 "(1..100; 100 or 'none' = unpruned)") from None
        if not 1 <= keep <= 100:
            raise SelectionError(f"--keep: {keep} is outside 1..100 (100 or 'none' = unpruned)")
        out.append(None if keep == 100 else keep)
    if not out:
        raise SelectionError("--keep: expected comma-separated percentages, e.g. 25,50,100")
    return list(dict.fromkeys(out))


def parse_token_stages(base: BaseModelSpec, text: str) -> list[tuple[str, int | None]]:
    """``--token-stage fusion,llm,llm3``: (stage, layer K) pairs; ``llm`` is the base's default K."""
    out: list[tuple[str, int | None]] = []
    for item in (x.strip().lower() for x in str(text).split(",")):
        if not item:
            continue
        stage = item.rstrip("0123456789")
        digits = item[len(stage):]
        if stage not in STAGES or (digits and stage != "llm"):
            raise SelectionError(f"--token-stage: {item!r} is not a stage; expected fusion, llm or llm<K> "
                                 f"(K = layers before pruning; {base.name}'s default is {base.llm_layer})")
        out.append((stage, (int(digits) if digits else base.llm_layer) if stage == "llm" else None))
    if not out:
        raise SelectionError("--token-stage: expected fusion, llm or llm<K>")
    return list(dict.fromkeys(out))


def with_budgets(base: BaseModelSpec, chosen: list[Entry], keep: str | None,
                 stage: str | None = None) -> tuple[list[Entry], list[str]]:
    """The selected masks crossed with ``--keep`` x ``--token-stage`` budgets; (entries, notes).

    ``keep`` is the budget axis: the unpruned masks stay only if it lists 100 (or ``none``);
    entries that already name a budget stay as they are.  A stage the family does not implement
    (or refuses) stops with the registry's reason; a combination only one mask cannot have (the
    fusion stage with every encoder masked: nothing left to score tokens) is left out and named
    in the notes."""
    if keep is None:
        if stage is not None:
            raise SelectionError("--token-stage needs --keep (the kept percentages, e.g. --keep 25,50,100)")
        return chosen, []
    keeps = parse_keeps(keep)
    stages = parse_token_stages(base, stage or "fusion")
    masks = list(dict.fromkeys(e.masked for e in chosen if e.tokens is None))
    out, notes = [e for e in chosen if e.tokens is not None], []  # unpruned masks only if 100/none is asked
    for st, layer in stages:
        for k in keeps:
            if k is None:
                out += [Entry(base, m) for m in masks]
                continue
            try:
                spec = TokenSpec(k, st, layer)
            except TokenError as exc:
                raise SelectionError(f"--keep/--token-stage: {exc}") from None
            for m in masks:
                why = base.token_refusal(m, spec)
                if why is None:
                    out.append(Entry(base, m, spec))
                elif st not in base.token_stages:  # the family: stop, naming what it implements
                    raise SelectionError(f"--keep {keep} --token-stage {stage or st}: {why}")
                else:
                    notes.append(f"{base.entry_name(m, spec)} left out: {why}")
    unique = {(e.masked, e.tokens): e for e in out}
    return sorted(unique.values(), key=entry_order(base)), notes


def _near(name: str, names: list[str]) -> str:
    from ..validate import nearest

    near = nearest(name, names)
    return f"; nearest valid: {', '.join(near)}" if near else ""


def _unknown_subset(base: BaseModelSpec, token: str, names: list[str]) -> str:
    """Which ``--subsets`` item is wrong, why, and the nearest entries *of this base*."""
    from ..registry import MASK_SEP, unknown_entry_message
    from ..validate import nearest

    order = ", ".join(base.encoders)
    if token in base.encoders or nearest(token, base.encoders, n=1, cutoff=0.75):
        enc = token if token in base.encoders else nearest(token, base.encoders, n=1, cutoff=0.75)[0]
        return (f"--subsets: {token!r} is not an entry name"
                + ("" if enc == token else f" (encoder {enc!r}?)")
                + f"; to mask encoder {enc!r} of {base.name} write {base.entry_name((enc,))!r} "
                f"(entry names list the masked encoders in the order {order}; or use 'all', 'k=1', 'k<=2')")
    if token.partition(MASK_SEP)[0] == base.name:
        return f"--subsets: {unknown_entry_message(token)}"
    return (f"--subsets: unknown subset {token!r}: not an entry of {base.name}{_near(token, names)} "
            f"(expected 'all', 'k=<n>', 'k<=<n>' or entry names of {base.name}; its encoders: {order})")


def check_datasets(names: Iterable[str], suite_file: str | None = None) -> None:
    """Stop on a dataset name VLMEvalKit cannot build, before any model is loaded.

    Valid: VLMEvalKit's ``SUPPORTED_DATASETS`` and any name with a ``$LMUData/<name>.tsv``
    (VLMEvalKit builds those as custom datasets).  Call after :func:`resolve_datasets`.
    """
    import os

    from vlmeval.dataset import SUPPORTED_DATASETS
    from vlmeval.smp import LMUDataRoot

    from ..validate import nearest

    official = set(SUPPORTED_DATASETS)
    root = LMUDataRoot()
    local = {f[:-4] for f in os.listdir(root) if f.endswith(".tsv")} if os.path.isdir(root) else set()
    raw = load_raw(suite_file)
    ours = list(raw.get("suites", {}) or {}) + list(raw["benchmarks"])
    for name in names:
        if name in official or name in local:
            continue
        near = nearest(name, [*ours, *sorted(official), *sorted(local)])
        raise SelectionError(f"--data: unknown dataset {name!r}: not a suite, paper short name, VLMEvalKit dataset "
                             f"or $LMUData/{name}.tsv ({root})"
                             + (f"; nearest valid: {', '.join(near)}" if near else ""))


def resolve_datasets(names: Iterable[str], suite_file: str | None = None) -> list[str]:
    """Suite names and paper short names expand to official VLMEvalKit names; others pass through.

    Unknown names are passed on unchanged because VLMEvalKit also accepts a
    local ``$LMUData/<name>.tsv``; building the dataset reports a bad name.
    """
    raw = load_raw(suite_file)
    suites, benches = raw.get("suites", {}) or {}, raw["benchmarks"]
    out: list[str] = []
    for name in names:
        if name in suites:
            for short in suites[name]["benchmarks"]:
                out.extend(dataset_names(benches[short]))  # `datasets:` or `parts:` (CV-Bench)
        elif name in benches:
            out.extend(dataset_names(benches[name]))
        else:
            out.append(name)
    return list(dict.fromkeys(out))
