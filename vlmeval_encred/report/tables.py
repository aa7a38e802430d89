"""Read VLMEvalKit's result tables (CSV, TSV, XLSX, JSON) column-wise, without pandas.

A report reads hundreds of per-sample sheets; pandas + openpyxl spend ~0.3 s on one
5,000-row sheet.  .xlsx goes through python-calamine (openpyxl as the fallback, see
:mod:`.xlsx`); CSV/TSV/JSON through the standard library.  Anything unexpected raises
:class:`TableError` naming the file, so a corrupt sheet becomes an *unreadable* cell.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

csv.field_size_limit(1 << 30)


class TableError(ValueError):
    """A result file cannot be read as a table (corrupt, truncated, wrong format)."""


def read_xlsx(path: Path, columns: list[str] | None = None) -> dict[str, list[Any]]:
    """Columns of the first sheet (row 1 = header); engine and value types: :mod:`.xlsx`."""
    from .xlsx import read_xlsx as _read

    return _read(path, columns)


def read_delimited(path: Path, sep: str, columns: list[str] | None = None) -> dict[str, list[Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TableError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None
    rows = list(csv.reader(io.StringIO(text), delimiter=sep))
    if not rows:
        raise TableError(f"{path}: empty file")
    header = rows[0]
    if header and header[0] == "" and columns is not None and "" not in columns:
        pass  # pandas index column; harmless
    wanted = header if columns is None else columns
    missing = [c for c in wanted if c not in header]
    if missing:
        raise TableError(f"{path}: no column {', '.join(map(repr, missing))}; columns: {', '.join(header)}")
    idx = {c: header.index(c) for c in wanted}
    out: dict[str, list[Any]] = {c: [] for c in wanted}
    for r in rows[1:]:
        if not r:
            continue
        if len(r) != len(header):
            raise TableError(f"{path}: row {len(out[wanted[0]]) + 2} has {len(r)} fields, header has {len(header)}")
        for c, i in idx.items():
            out[c].append(_num(r[i]))
    return out


def _num(s: str) -> Any:
    try:
        return float(s)
    except ValueError:
        return s


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TableError(f"{path}: not valid JSON ({type(exc).__name__}: {exc})") from None


def json_columns(path: Path, data: Any, columns: list[str] | None) -> dict[str, list[Any]]:
    """Accept the shapes pandas/VLMEvalKit write: records, {col: [..]}, {col: {row: v}}."""
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):
        keys = list(dict.fromkeys(k for r in data for k in r))
        cols = {k: [r.get(k) for r in data] for k in keys}
    elif isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        cols = {k: list(v) for k, v in data.items()}
    elif isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        rows = list(dict.fromkeys(r for v in data.values() for r in v))
        cols = {k: [v.get(r) for r in rows] for k, v in data.items()}
    elif isinstance(data, dict):  # a one-row table
        cols = {k: [v] for k, v in data.items()}
    else:
        raise TableError(f"{path}: JSON is not a table (records or columns)")
    wanted = list(cols) if columns is None else columns
    missing = [c for c in wanted if c not in cols]
    if missing:
        raise TableError(f"{path}: no column/key {', '.join(map(repr, missing))}; has: {', '.join(map(str, cols))}")
    return {c: cols[c] for c in wanted}


def read_table(path: Path, columns: list[str] | None = None) -> dict[str, list[Any]]:
    """Column-wise contents of a result file, by extension."""
    ext = path.suffix.lower()
    if ext == ".xlsx":
        return read_xlsx(path, columns)
    if ext == ".csv":
        return read_delimited(path, ",", columns)
    if ext == ".tsv":
        return read_delimited(path, "\t", columns)
    if ext == ".json":
        return json_columns(path, read_json(path), columns)
    raise TableError(f"{path}: unsupported result format {ext!r} (expected .xlsx, .csv, .tsv or .json)")
