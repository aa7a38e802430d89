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
    wanted = []
    for name in (n.strip() for n in text.split(",")):
        if not name:
            continue
        try:
            entry = parse_entry_name(name)
        except RegistryError as exc:
            raise SelectionError(f"--subsets: {exc}") from None
        if entry.base.name != base.name:
            raise SelectionError(f"--subsets: {name!r} is an entry of {entry.base.name!r}, not of {base.name!r}")
        wanted.append(entry)
    if not wanted:
        raise SelectionError("--subsets: expected 'all', 'k=<n>', 'k<=<n>' or entry names, got nothing")
    order = {e.masked: i for i, e in enumerate(lattice)}
    unique = {e.masked: e for e in wanted}  # Entry holds a dict (loader): key by the mask, not the entry
    return sorted(unique.values(), key=lambda e: order[e.masked])


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
                out.extend(dataset_names(benches[short]))
        elif name in benches:
            out.extend(dataset_names(benches[name]))  # CV-Bench: its two parts
        else:
            out.append(name)
    return list(dict.fromkeys(out))
