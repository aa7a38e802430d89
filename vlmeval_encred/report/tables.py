"""Read VLMEvalKit's result tables (CSV, TSV, XLSX, JSON) quickly, column-wise, without pandas.

A report reads hundreds of per-sample sheets; pandas + openpyxl spend ~0.3 s on one
5,000-row sheet.  An .xlsx is a zip of XML: we pull only the wanted columns out of the
sheet XML with a regular expression (cells of one column are found by their ``r="H12"``
reference), resolve shared strings, and return plain lists.  Anything unexpected raises
:class:`TableError` naming the file, so a corrupt sheet becomes an *unreadable* cell.
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

csv.field_size_limit(1 << 30)


class TableError(ValueError):
    """A result file cannot be read as a table (corrupt, truncated, wrong format)."""


_CELL = re.compile(rb'<c r="([A-Z]+)(\d+)"([^>]*?)(?:/>|>(.*?)</c>)', re.S)
_V = re.compile(rb"<v>(.*?)</v>", re.S)
_T = re.compile(rb"<t(?: [^>]*)?>(.*?)</t>", re.S)
_SI = re.compile(rb"<si>(.*?)</si>", re.S)
_TYPE = re.compile(rb'\bt="(\w+)"')


def _col_letters(i: int) -> str:
    s = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        s = chr(65 + r) + s
    return s


def _unesc(b: bytes) -> str:
    s = b.decode("utf-8")
    return html.unescape(s) if "&" in s else s


def _sheet_path(z: zipfile.ZipFile) -> str:
    names = z.namelist()
    if "xl/worksheets/sheet1.xml" in names:
        return "xl/worksheets/sheet1.xml"
    sheets = sorted(n for n in names if n.startswith("xl/worksheets/") and n.endswith(".xml"))
    if not sheets:
        raise TableError("no worksheet in the workbook")
    return sheets[0]


def read_xlsx(path: Path, columns: list[str] | None = None) -> dict[str, list[Any]]:
    """Columns of the first sheet (row 1 = header) -> lists of str/float/bool/None."""
    try:
        with zipfile.ZipFile(path) as z:
            sheet = z.read(_sheet_path(z))
            shared_raw = z.read("xl/sharedStrings.xml") if "xl/sharedStrings.xml" in z.namelist() else b""
    except (zipfile.BadZipFile, KeyError, OSError, EOFError) as exc:
        raise TableError(f"{path}: not a readable .xlsx ({type(exc).__name__}: {exc})") from None
    shared: list[str] | None = None

    def strings() -> list[str]:
        nonlocal shared
        if shared is None:
            shared = [_unesc(b"".join(_T.findall(si))) for si in _SI.findall(shared_raw)]
        return shared

    def value(attrs: bytes, body: bytes | None) -> Any:
        if body is None:
            return None
        t = _TYPE.search(attrs)
        typ = t.group(1) if t else b"n"
        if typ == b"inlineStr":
            return _unesc(b"".join(_T.findall(body)))
        m = _V.search(body)
        if m is None:
            return None
        v = m.group(1)
        if typ == b"s":
            return strings()[int(v)]
        if typ == b"b":
            return v == b"1"
        if typ in (b"str", b"e"):
            return _unesc(v)
        return float(v)

    # Header: cells of row 1.
    header: dict[str, str] = {}
    end_row1 = sheet.find(b"</row>")
    if end_row1 < 0:
        raise TableError(f"{path}: the sheet has no rows")
    for m in _CELL.finditer(sheet, 0, end_row1):
        if m.group(2) == b"1":
            header[m.group(1).decode()] = str(value(m.group(3), m.group(4)))
    name_to_col = {v: k for k, v in header.items()}
    wanted = list(header.values()) if columns is None else columns
    missing = [c for c in wanted if c not in name_to_col]
    if missing:
        raise TableError(f"{path}: no column {', '.join(map(repr, missing))}; "
                         f"columns: {', '.join(header.values())}")
    n_rows = max((int(r) for r in re.findall(rb'<row r="(\d+)"', sheet)), default=1) - 1
    out: dict[str, list[Any]] = {}
    for c in wanted:
        letters = name_to_col[c].encode()
        col = [None] * n_rows
        rx = re.compile(rb'<c r="' + letters + rb'(\d+)"([^>]*?)(?:/>|>(.*?)</c>)', re.S)
        for m in rx.finditer(sheet, end_row1):
            r = int(m.group(1)) - 2
            if 0 <= r < n_rows:
                col[r] = value(m.group(2), m.group(3))
        out[c] = col
    return out


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
