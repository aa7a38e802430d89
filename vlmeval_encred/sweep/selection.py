"""Parse ``--subsets`` and ``--data`` into registry entries and official dataset names.

``--subsets`` counts *masked* encoders, as entry names do: ``k=0`` is the full
model, ``k=1`` every single-encoder ablation, ``k<=2`` both of those and every
pair; ``all`` is the whole lattice (2^n entries); otherwise a comma-separated
list of entry names of the base.  Order of the result: the registry's
(size, then base order), so files and progress bars are stable.
"""

from __future__ import annotations

import re
from typing import Iterable

from ..registry import BaseModelSpec, Entry, RegistryError, entries, parse_entry_name
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
    order = {e.masked: i for i, e in enumerate(lattice)}
    unique = {e.masked: e for e in wanted}  # Entry holds a dict (loader): key by the mask, not the entry
    return sorted(unique.values(), key=lambda e: order[e.masked])


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
