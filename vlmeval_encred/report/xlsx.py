"""Read the first sheet of an .xlsx column-wise, with python-calamine or openpyxl.

A report reads hundreds of per-sample sheets (VLMEvalKit's ``_result.xlsx``,
``_auxmatch.xlsx``...).  python-calamine (Rust; also a pandas ``read_excel`` engine)
reads them about 20x faster than openpyxl, so it is the default; openpyxl (which
VLMEvalKit itself depends on) is the fallback when calamine is not installed, and
``ENCRED_XLSX_ENGINE=openpyxl`` forces it.  Both engines return the *same* values:

* numbers -> ``float`` (openpyxl gives ``int`` for whole numbers, calamine ``float``),
* booleans -> ``bool``; text -> ``str``; empty cells and empty strings -> ``None``;
* dates and times -> their ``str()``;
* the sheet starts at A1 (calamine would otherwise skip leading empty rows/columns);
* trailing rows that are entirely empty are dropped.

Anything unreadable raises :class:`~vlmeval_encred.report.tables.TableError` naming the file.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from pathlib import Path
from typing import Any, Sequence

ENGINES = ("calamine", "openpyxl")
ENV_VAR = "ENCRED_XLSX_ENGINE"
log = logging.getLogger("vlmeval_encred")
_warned = False


def calamine_available() -> bool:
    try:
        import python_calamine  # noqa: F401
    except ImportError:
        return False
    return True


def engine(requested: str | None = None) -> str:
    """The engine to use: ``requested``, else $ENCRED_XLSX_ENGINE, else calamine if installed."""
    global _warned
    name = requested or os.environ.get(ENV_VAR) or None
    if name is not None:
        if name not in ENGINES:
            raise ValueError(f"xlsx engine {name!r} (from {'the argument' if requested else '$' + ENV_VAR}): "
                             f"expected one of {', '.join(ENGINES)}")
        if name == "calamine" and not calamine_available():
            raise ValueError(f"xlsx engine 'calamine' was asked for (${ENV_VAR} or argument) but python-calamine "
                             "is not installed: `pip install python-calamine`, or use 'openpyxl'")
        return name
    if calamine_available():
        return "calamine"
    if not _warned:
        log.warning("python-calamine is not installed; reading .xlsx result files with openpyxl "
                    "(about 20x slower): `pip install python-calamine`")
        _warned = True
    return "openpyxl"


def _norm(v: Any) -> Any:
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        return v if v != "" else None
    if isinstance(v, (_dt.datetime, _dt.date, _dt.time, _dt.timedelta)):
        return str(v)
    return str(v)


def _rows_calamine(path: Path) -> list[list[Any]]:
    from python_calamine import CalamineWorkbook

    wb = CalamineWorkbook.from_path(str(path))
    try:
        return wb.get_sheet_by_index(0).to_python(skip_empty_area=False)
    finally:
        wb.close()


def _rows_openpyxl(path: Path) -> list[tuple[Any, ...]]:
    import openpyxl

    wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        return list(wb.worksheets[0].iter_rows(values_only=True))
    finally:
        wb.close()


_PLAIN = {float, bool, type(None)}


def _column(rows: Sequence[Sequence[Any]], j: int) -> list[Any]:
    """Column ``j`` normalised; a column of floats/bools (the common case) is taken as is."""
    try:
        col = [r[j] for r in rows]
    except IndexError:  # ragged rows (openpyxl read-only mode trims nothing, calamine pads)
        col = [r[j] if j < len(r) else None for r in rows]
    types = set(map(type, col))
    if types <= _PLAIN:
        return col
    if types <= _PLAIN | {str}:
        return [None if v == "" else v for v in col]
    return [_norm(v) for v in col]


def _raw_rows(path: Path, eng: str) -> Sequence[Sequence[Any]]:
    from .tables import TableError

    try:
        rows = _rows_calamine(path) if eng == "calamine" else _rows_openpyxl(path)
    except Exception as exc:  # OSError, BadZipFile, calamine's CalamineError/XmlError/ZipError, openpyxl's
        raise TableError(f"{path}: not a readable .xlsx ({eng}: {type(exc).__name__}: {exc})") from None
    n = len(rows)
    while n and all(v is None or v == "" for v in rows[n - 1]):
        n -= 1
    return rows[:n]


def read_rows(path: Path, eng: str | None = None) -> list[list[Any]]:
    """All rows of the first sheet, normalised as the module docstring says."""
    rows = _raw_rows(path, engine(eng))
    width = max((len(r) for r in rows), default=0)
    cols = [_column(rows, j) for j in range(width)]
    return [list(r) for r in zip(*cols)] if cols else []


def read_xlsx(path: Path, columns: list[str] | None = None, eng: str | None = None) -> dict[str, list[Any]]:
    """Columns of the first sheet (row 1 = header) -> lists of str/float/bool/None."""
    from .tables import TableError

    rows = _raw_rows(path, engine(eng))
    if not rows:
        raise TableError(f"{path}: the sheet has no rows")
    header: dict[str, int] = {}
    for i, h in enumerate(_column([[v] for v in rows[0]], 0)):
        if h is None:
            continue
        name = str(int(h)) if isinstance(h, float) and h.is_integer() else str(h)
        header.setdefault(name, i)
    wanted = list(header) if columns is None else columns
    missing = [c for c in wanted if c not in header]
    if missing:
        raise TableError(f"{path}: no column {', '.join(map(repr, missing))}; columns: {', '.join(header)}")
    body = rows[1:]
    out: dict[str, list[Any]] = {}
    for c in wanted:
        out[c] = _column(body, header[c])
    return out
