"""Write the report: Excel workbook, Markdown summary, JSON, PNG figures; atomically.

Which files may be replaced, and how they are written, is :mod:`vlmeval_encred.safe_files`
(one policy for every file the project writes): every file goes to a temporary name first
and is moved into place only when all are complete; only this report's own unchanged
files are replaced; a same-named file we did not write, one edited since, or one of
another report sharing the folder stops the run with a message naming them (``--force``
overrides); other reports' files in the same folder are never removed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..hashing import file_sha256
from ..safe_files import MANIFEST, OutputConflict, OutputError, SafeWriter

NUM_FMT = "0.00"
Stager = SafeWriter  # the name the report's modules used first
_sha = file_sha256  # manifest hashes of the files we write
__all__ = ["MANIFEST", "OutputConflict", "OutputError", "SafeWriter", "Stager"]


# ---------------------------------------------------------------- tables


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    return v


def write_xlsx(path: Path, tables: list[tuple[str, list[str], list[list[Any]]]]) -> None:
    """One sheet per table; numbers stay numbers (formatted 0.00), header bold and frozen."""
    from openpyxl import Workbook
    from openpyxl.styles import Font
    from openpyxl.utils import get_column_letter

    wb = Workbook()
    wb.remove(wb.active)
    bold = Font(bold=True)
    for title, header, rows in tables:
        ws = wb.create_sheet(title[:31])
        ws.append(header)
        for c in ws[1]:
            c.font = bold
        widths = [len(str(h)) for h in header]
        for r in rows:
            vals = [_clean(v) for v in r]
            ws.append(vals)
            for i, v in enumerate(vals):
                widths[i] = max(widths[i], 8 if isinstance(v, float) else min(60, len(str(v or ""))))
        for row in ws.iter_rows(min_row=2):
            for c in row:
                if isinstance(c.value, float):
                    c.number_format = NUM_FMT
        for i, w in enumerate(widths, 1):
            ws.column_dimensions[get_column_letter(i)].width = w + 2
        ws.freeze_panes = "B2"
    wb.save(path)


def fmt(v: Any, nd: int = 2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(v) for v in r) + " |")
    return "\n".join(lines)


def write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def write_json(path: Path, data: Any) -> None:
    def default(o: Any) -> Any:
        if isinstance(o, Path):
            return str(o)
        if isinstance(o, (set, frozenset)):
            return sorted(o)
        if hasattr(o, "item"):
            return o.item()
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")

    def scrub(o: Any) -> Any:
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {str(k): scrub(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [scrub(v) for v in o]
        return o

    path.write_text(json.dumps(scrub(data), indent=1, default=default), encoding="utf-8")


# ---------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def fig_cur_heatmap(path: Path, levels: list[str], encoders: list[str],
                    cur: dict[str, dict[str, float | None]], title: str,
                    marks: dict[tuple[str, str], str] | None = None, notes: list[str] | None = None) -> None:
    """CUR heat map; ``marks`` ((encoder, level) -> ``†n``) flag values resting on partial input,
    explained by ``notes`` under the plot."""
    import numpy as np

    plt = _plt()
    marks = marks or {}
    data = np.array([[np.nan if cur[e].get(l) is None else cur[e][l] for e in encoders] for l in levels],
                    dtype=float)
    fig, ax = plt.subplots(figsize=(1.3 + 1.1 * len(encoders), 0.9 + 0.55 * len(levels)))
    finite = data[np.isfinite(data)]
    lim = max(1.0, float(np.abs(finite).max())) if finite.size else 1.0
    im = ax.imshow(np.ma.masked_invalid(data), cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(encoders)), encoders, rotation=30, ha="right")
    ax.set_yticks(range(len(levels)), levels)
    for i in range(len(levels)):
        for j in range(len(encoders)):
            txt = "n/a" if not np.isfinite(data[i, j]) else f"{data[i, j]:.1f}"
            m = marks.get((encoders[j], levels[i]))
            ax.text(j, i, txt + (f" {m}" if m else ""), ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label="CUR (%)")
    _save(plt, fig, ax, path, title, notes)


def _save(plt, fig, ax, path: Path, title: str, notes: list[str] | None = None) -> None:
    """Title, layout, footnotes, PNG, and free the figure: the common ending of every report figure."""
    import textwrap

    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    if notes:
        width_chars = max(40, int(fig.get_figwidth() * 14))
        lines = [ln for n in notes[:6] for ln in textwrap.wrap(n, width_chars)]
        if len(notes) > 6:
            lines.append(f"... {len(notes) - 6} more (Markdown summary, sheet 'Weakened numbers')")
        h = fig.get_figheight()
        extra = 0.16 * len(lines) + 0.15
        fig.set_figheight(h + extra)
        fig.subplots_adjust(bottom=(fig.subplotpars.bottom * h + extra) / (h + extra),
                            top=1 - (1 - fig.subplotpars.top) * h / (h + extra))
        fig.text(0.01, 0.01, "\n".join(lines), fontsize=6.5, ha="left", va="bottom")
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def fig_k_curve(path: Path, rows: list[dict], title: str) -> None:
    plt = _plt()
    ks = [r["k"] for r in rows if r["mean"] is not None]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for key, style in (("max", "^-"), ("mean", "o-"), ("min", "v-")):
        ax.plot(ks, [r[key] for r in rows if r["mean"] is not None], style, label=key)
    last = rows[-1]
    if last["mean"] is not None:
        ax.axhline(last["mean"], color="grey", ls="--", lw=1, label="no vision (all masked)")
    ax.set_xlabel("encoders masked (k)")
    ax.set_ylabel("Overall score (0-100)")
    ax.set_xticks([r["k"] for r in rows])
    ax.legend(fontsize=8)
    _save(plt, fig, ax, path, title)


def fig_intervals(path: Path | Any, rows: list[dict], title: str, notes: list[str] | None = None,
                  xlabel: str = "CUR (%) with 95% paired-bootstrap interval") -> None:
    """Estimates (CUR by default) with their intervals; a row without one (partial input) is drawn as a
    hollow estimate with its mark, explained by ``notes`` under the plot, instead of being left out.
    ``path`` may be a binary file object (the PNG is written to it)."""
    plt = _plt()
    rows = [r for r in rows if r["lo"] is not None or r.get("mark")]
    fig, ax = plt.subplots(figsize=(6, 0.9 + 0.32 * max(1, len(rows))))
    for i, r in enumerate(rows):
        if r["lo"] is None:
            ax.plot([r["estimate"]], [i], "o", mfc="none", color="grey")
            continue
        color = "C3" if r["distinguishable"] else "C0"
        ax.plot([r["lo"], r["hi"]], [i, i], color=color, lw=2)
        ax.plot([r["estimate"]], [i], "o", color=color)
    ax.axvline(0, color="grey", lw=1)
    labels = [f"{r['subject']} ({r['level']})" + (f" {r['mark']}" if r.get("mark") else "")
              + (" no interval" if r["lo"] is None else "") for r in rows]
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.set_xlabel(f"{xlabel} (red: excludes 0)")
    ax.invert_yaxis()
    _save(plt, fig, ax, path, title, notes)
