"""Write the report: Excel workbook, Markdown summary, JSON, PNG figures; atomically.

Overwrite policy (docs/report.md): every file is first written to a temporary name in
the output directory; only when all of them are complete are they moved into place
with ``os.replace``.  A manifest (``.encred-report-manifest.json``) lists the files we
wrote with their SHA-256.  We replace a file only if it is absent or listed in our
manifest with an unchanged hash; a file of the same name that we did not write, or
that was edited since, stops the run with an error naming it (``force=True`` /
``--force`` overrides).  Files of an older report that this run no longer produces are
removed only if they are ours and unchanged.  Nothing else in the directory is touched.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from ..hashing import file_sha256

MANIFEST = ".encred-report-manifest.json"


def _umask_mode() -> int:
    m = os.umask(0)
    os.umask(m)
    return 0o666 & ~m
NUM_FMT = "0.00"


class OutputConflict(RuntimeError):
    """The output directory holds a file of ours by name that we did not write (or that was edited)."""


_sha = file_sha256  # manifest hashes of the files we write


class Stager:
    """Collects files in temporary names next to their targets, then commits them together."""

    def __init__(self, out_dir: Path, force: bool = False) -> None:
        self.out_dir = out_dir
        self.force = force
        self.staged: dict[str, Path] = {}
        out_dir.mkdir(parents=True, exist_ok=True)
        mpath = out_dir / MANIFEST
        self.manifest: dict[str, str] = {}
        if mpath.exists():
            try:
                self.manifest = dict(json.loads(mpath.read_text())["files"])
            except (ValueError, KeyError, TypeError):
                raise OutputConflict(f"{mpath} is not a manifest this tool wrote; refusing to guess "
                                     "which files are ours (remove it or pick another --out)") from None

    def check(self, names: list[str]) -> None:
        """Fail before writing anything if a target is not ours to replace."""
        if self.force:
            return
        for name in names:
            p = self.out_dir / name
            if not p.exists():
                continue
            if name not in self.manifest:
                raise OutputConflict(f"{p} exists and was not written by encred report (not in {MANIFEST}); "
                                     "move it away, choose another --out, or pass --force")
            if _sha(p) != self.manifest[name]:
                raise OutputConflict(f"{p} was changed since encred report wrote it; move it away or pass --force")

    def write(self, name: str, producer: Callable[[Path], None]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.out_dir)
        os.close(fd)
        try:
            producer(Path(tmp))
        except BaseException:
            os.unlink(tmp)
            raise
        os.chmod(tmp, _umask_mode())  # mkstemp makes 0600; a report is meant to be shared
        self.staged[name] = Path(tmp)

    def abort(self) -> None:
        for tmp in self.staged.values():
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        self.staged.clear()

    def commit(self) -> dict[str, Path]:
        hashes = {name: _sha(tmp) for name, tmp in self.staged.items()}
        for name, tmp in self.staged.items():
            os.replace(tmp, self.out_dir / name)
        for old, h in self.manifest.items():  # our files from an older report that we no longer make
            p = self.out_dir / old
            if old not in hashes and p.exists() and (self.force or _sha(p) == h):
                p.unlink()
        man = {"tool": "vlmeval-encred report", "files": hashes}
        fd, tmp = tempfile.mkstemp(prefix=".manifest.", suffix=".tmp", dir=self.out_dir)
        with os.fdopen(fd, "w") as f:
            json.dump(man, f, indent=1)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, self.out_dir / MANIFEST)
        done = {name: self.out_dir / name for name in self.staged}
        self.staged.clear()
        return done


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
                    cur: dict[str, dict[str, float | None]], title: str) -> None:
    import numpy as np

    plt = _plt()
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
            ax.text(j, i, "n/a" if not np.isfinite(data[i, j]) else f"{data[i, j]:.1f}",
                    ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label="CUR (%)")
    _save(plt, fig, ax, path, title)


def _save(plt, fig, ax, path: Path, title: str) -> None:
    """Title, layout, PNG, and free the figure: the common ending of every report figure."""
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
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


def fig_intervals(path: Path, rows: list[dict], title: str) -> None:
    plt = _plt()
    rows = [r for r in rows if r["lo"] is not None]
    fig, ax = plt.subplots(figsize=(6, 0.9 + 0.32 * max(1, len(rows))))
    for i, r in enumerate(rows):
        color = "C3" if r["distinguishable"] else "C0"
        ax.plot([r["lo"], r["hi"]], [i, i], color=color, lw=2)
        ax.plot([r["estimate"]], [i], "o", color=color)
    ax.axvline(0, color="grey", lw=1)
    ax.set_yticks(range(len(rows)), [f"{r['subject']} ({r['level']})" for r in rows], fontsize=8)
    ax.set_xlabel("CUR (%) with 95% paired-bootstrap interval (red: excludes 0)")
    ax.invert_yaxis()
    _save(plt, fig, ax, path, title)
