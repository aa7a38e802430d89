"""Provenance of each report cell, and warnings when one CUR or lattice mixes set-ups.

The record of a cell is the sidecar (:mod:`vlmeval_encred.provenance`) of the
prediction file that sits beside the score file the report used (same run
folder, or the flat model folder).  A cell without one is ``unknown`` -- shown,
never refused.  :func:`warnings` names the cells when the lattice (all cells
of the report) or one CUR (full model vs. one encoder masked, same benchmark)
mixes VLMEvalKit versions, transformers versions, dtypes or mask modes: such a
CUR measures the set-up difference as much as the encoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

from .. import provenance as P

UNKNOWN = "unknown"
SHEET_KEYS = ("vlmeval", "transformers", "torch", "dtype", "device", "masked", "mode", "checkpoint",
              "revision", "plugin", "writer", "command")
LABELS = {"vlmeval": "VLMEvalKit versions", "transformers": "transformers versions", "dtype": "dtypes",
          "mode": "mask modes"}


def for_location(run_path: Path | None, model: str, dataset: str) -> dict[str, Any] | None:
    """The sidecar of ``<run>/<model>_<dataset>.<any prediction format>``, or None."""
    if run_path is None:
        return None
    return P.read(Path(run_path) / f"{model}_{dataset}.xlsx")  # the sidecar is keyed by the stem


def _value(rec: dict[str, Any] | None, key: str) -> str:
    if not rec:
        return UNKNOWN
    v = rec.get(key)
    if v is None:
        return UNKNOWN
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v)) or "-"
    return str(v)


def summarize(parts: Sequence[tuple[str, dict[str, Any] | None]]) -> dict[str, str]:
    """One cell's provenance from its parts' records (``a | b`` where parts differ)."""
    out = {}
    for k in SHEET_KEYS:
        vals = list(dict.fromkeys(_value(r, k) for _, r in parts))
        out[k] = " | ".join(vals) if vals else UNKNOWN
    out["sidecar"] = "yes" if parts and all(r for _, r in parts) else ("partly" if any(r for _, r in parts)
                                                                      else "no")
    return out


def warnings(cells: Iterable[dict[str, Any]], full: str, leave_one_out: dict[str, str]) -> list[str]:
    """Messages naming the cells whose set-ups differ; ``leave_one_out`` maps encoder -> variant name.

    Cells with an unknown value do not count as a difference (there is nothing to compare); a
    lattice where some cells are unknown gets one note saying how many.
    """
    cells = [c for c in cells if c.get("status") in ("ok", "stale")]
    msgs: list[str] = []
    for key in P.CONSISTENCY_KEYS:
        groups: dict[str, list[str]] = {}
        for c in cells:
            v = c.get("provenance", {}).get(key, UNKNOWN)
            for one in v.split(" | "):
                if one != UNKNOWN:
                    groups.setdefault(one, []).append(f"{c['variant']}/{c['benchmark']}")
        if len(groups) > 1:
            detail = "; ".join(f"{val}: {_names(sorted(set(ns)))}" for val, ns in groups.items())
            msgs.append(f"the lattice mixes {LABELS[key]}: {detail}")
            by = {(c["variant"], c["benchmark"]): c.get("provenance", {}).get(key, UNKNOWN) for c in cells}
            curs = []
            for enc, var in leave_one_out.items():
                for b in sorted({c["benchmark"] for c in cells}):
                    a, z = by.get((full, b)), by.get((var, b))
                    if a and z and UNKNOWN not in (a, z) and a != z:
                        curs.append(f"CUR({enc}) on {b} ({full}: {a}; {var}: {z})")
            if curs:
                msgs.append(f"{len(curs)} CUR value(s) compare cells of different {LABELS[key]}: "
                            + _names(curs, 12))
    unknown = [f"{c['variant']}/{c['benchmark']}" for c in cells if c.get("provenance", {}).get("sidecar") == "no"]
    if unknown and len(unknown) < len(cells):
        msgs.append(f"{len(unknown)} of {len(cells)} cells have no provenance record (unknown set-up): "
                    + _names(unknown, 12))
    return msgs


def _names(items: Sequence[str], limit: int = 8) -> str:
    items = list(items)
    return ", ".join(items[:limit]) + (f" ... (+{len(items) - limit} more)" if len(items) > limit else "")


def sheet(cells: Iterable[dict[str, Any]]) -> tuple[str, list[str], list[list[Any]]]:
    """The workbook's ``Provenance`` sheet: one row per cell."""
    header = ["variant", "benchmark", "sidecar", *SHEET_KEYS]
    rows = [[c["variant"], c["benchmark"], c.get("provenance", {}).get("sidecar", "no"),
             *[c.get("provenance", {}).get(k, UNKNOWN) for k in SHEET_KEYS]] for c in cells]
    return "Provenance", header, rows


def markdown(cells: Sequence[dict[str, Any]], msgs: Sequence[str], md_table) -> list[str]:
    """The Markdown section: warnings first, then the distinct set-ups and their cells."""
    out = ["## Provenance", ""]
    if msgs:
        out += [f"**Warning:** {m}" for m in msgs] + [""]
    keys = ("vlmeval", "transformers", "torch", "dtype", "device", "mode", "checkpoint", "plugin")
    groups: dict[tuple[str, ...], list[str]] = {}
    for c in cells:
        pr = c.get("provenance", {})
        groups.setdefault(tuple(pr.get(k, UNKNOWN) for k in keys), []).append(f"{c['variant']}/{c['benchmark']}")
    out += [md_table([*keys, "cells"], [[*k, f"{len(v)}: {_names(v, 4)}"] for k, v in groups.items()]), "",
            "Per-cell records (with the command that produced each): sheet 'Provenance' of the workbook.", ""]
    return out
