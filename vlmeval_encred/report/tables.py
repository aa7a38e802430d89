"""Read VLMEvalKit's result tables (CSV, TSV, XLSX, JSON) quickly, column-wise, without pandas.

A report reads hundreds of per-sample sheets; pandas + openpyxl spend ~0.3 s on one
5,000-row sheet.  An .xlsx is a zip of XML: we pull only the wanted columns out of the
sheet XML with a regular expression (cells of one column are found by their ``r="H12"``
reference), resolve shared strings, and return plain lists.  Anything unexpected raises
:class:`TableError` naming the file, so a corrupt sheet becomes an *unreadable* cell.
"""

from __future__ import annotations

import csv
import functools
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
_TYPE = re.compile(rb'\bt="(\w+)"')


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


_SI_ANY = re.compile(rb"<si>(?:<t(?: [^>]*)?>([^<]*)</t>|(.*?))</si>", re.S)


@functools.lru_cache(maxsize=256)
def _col_regex(letters: bytes) -> re.Pattern:
    return re.compile(rb'<c r="' + letters + rb'(\d+)"([^>]*?)(?:/>|>(?:<f>[^<]*</f>)?(?:<v>([^<]*)</v>|<is>(.*?)</is>)?</c>)',
                      re.S)


def read_xlsx(path: Path, columns: list[str] | None = None) -> dict[str, list[Any]]:
    """Columns of the first sheet (row 1 = header) -> lists of str/float/bool/None."""
    try:
        with zipfile.ZipFile(path) as z:
            sheet = z.read(_sheet_path(z))
            shared_raw = z.read("xl/sharedStrings.xml") if "xl/sharedStrings.xml" in z.namelist() else b""
    except (zipfile.BadZipFile, KeyError, OSError, EOFError) as exc:
        raise TableError(f"{path}: not a readable .xlsx ({type(exc).__name__}: {exc})") from None
    shared: list[Any] | None = None

    def sst() -> list[Any]:
        # raw bytes per shared string (plain <t>) or a tuple marking rich text; decoded on use
        nonlocal shared
        if shared is None:
            shared = [a if not b else (b,) for a, b in _SI_ANY.findall(shared_raw)]
        return shared

    def sstr(i: int) -> str:
        v = sst()[i]
        if isinstance(v, tuple):
            return _unesc(b"".join(_T.findall(v[0])))
        return _unesc(v)

    def value(attrs: bytes, v: bytes, inline: bytes) -> Any:
        if b't="' not in attrs:
            return float(v) if v else None
        t = _TYPE.search(attrs).group(1)  # type: ignore[union-attr]
        if t == b"s":
            return sstr(int(v))
        if t == b"b":
            return v == b"1"
        if t == b"inlineStr":
            return _unesc(b"".join(_T.findall(inline)))
        if t in (b"str", b"e"):
            return _unesc(v)
        return float(v) if v else None

    end_row1 = sheet.find(b"</row>")
    if end_row1 < 0:
        raise TableError(f"{path}: the sheet has no rows")
    header: dict[str, str] = {}
    for m in _CELL.finditer(sheet, 0, end_row1):
        if m.group(2) == b"1":
            body = m.group(4) or b""
            vm = _V.search(body)
            header[m.group(1).decode()] = str(value(m.group(3), vm.group(1) if vm else b"", body))
    name_to_col = {v: k for k, v in header.items()}
    wanted = list(header.values()) if columns is None else columns
    missing = [c for c in wanted if c not in name_to_col]
    if missing:
        raise TableError(f"{path}: no column {', '.join(map(repr, missing))}; "
                         f"columns: {', '.join(header.values())}")
    last = sheet.rfind(b'<row r="')
    n_rows = int(re.match(rb'<row r="(\d+)"', sheet[last:]).group(1)) - 1 if last > end_row1 else 0  # type: ignore[union-attr]
    body = sheet[end_row1:]
    out: dict[str, list[Any]] = {}
    try:
        for c in wanted:
            col: list[Any] = [None] * n_rows
            for r, attrs, v, inline in _col_regex(name_to_col[c].encode()).findall(body):
                i = int(r) - 2
                if 0 <= i < n_rows:
                    col[i] = value(attrs, v, inline)
            out[c] = col
    except (ValueError, IndexError, AttributeError) as exc:
        raise TableError(f"{path}: malformed cell data ({type(exc).__name__}: {exc})") from None
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
