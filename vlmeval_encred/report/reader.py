"""Find the result files VLMEvalKit wrote for one model and one dataset, in every layout.

Layouts of ``<work_dir>/<model>/``:

* ``T<YYYYMMDD>-<HHMMSS>/`` run directories (upstream head), with relative links to the
  newest files directly in ``<work_dir>/<model>/`` (links are resolved, not double counted);
* ``T<YYYYMMDD>_G<githash>/`` (older upstream, nvidia-vlmeval);
* flat: files directly in ``<work_dir>/<model>/`` (ms-vlmeval 0.0.20's run.py sets
  ``pred_root = osp.join(work_dir, model_name)``).

The newest run that has the dataset's headline file wins; a newer prediction without a
score file makes the cell *stale* (the number shown is older than the newest predictions).
"""

from __future__ import annotations

import datetime as _dt
import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .schema import DatasetPart

_NEW_RUN = re.compile(r"^T(\d{8})-(\d{6})$")
_OLD_RUN = re.compile(r"^T(\d{8})_G([0-9a-fA-F]+)$")
_JUDGE = r"(?P<judge>[a-z0-9][a-z0-9.\-]*(?:_[a-z0-9.\-]+)*)"
PRED_EXTS = ("xlsx", "tsv", "json", "pkl")
STALE_SLACK_S = 1.0


@dataclass(frozen=True)
class RunDir:
    path: Path
    layout: str  # "timestamped", "legacy" or "flat"
    stamp: float | None  # from the directory name; None for flat (use file mtimes)

    @property
    def label(self) -> str:
        return self.path.name if self.layout != "flat" else "(flat)"


@dataclass
class Located:
    """Result of looking up one (model, dataset)."""

    model: str
    dataset: str
    status: str  # ok | stale | missing
    headline: Path | None = None
    per_sample: Path | None = None
    run: RunDir | None = None
    judge: str | None = None
    reason: str = ""
    notes: list[str] = field(default_factory=list)


class _Listing:
    """One ``os.scandir`` per directory: 480 cells must not cost 480 x N stat calls."""

    def __init__(self) -> None:
        self._cache: dict[Path, dict[str, os.DirEntry]] = {}

    def entries(self, d: Path) -> dict[str, os.DirEntry]:
        if d not in self._cache:
            try:
                with os.scandir(d) as it:
                    self._cache[d] = {e.name: e for e in it}
            except (FileNotFoundError, NotADirectoryError):
                self._cache[d] = {}
        return self._cache[d]


def _stamp(name: str) -> tuple[str, float] | None:
    m = _NEW_RUN.match(name)
    if m:
        return "timestamped", _dt.datetime.strptime(m.group(1) + m.group(2), "%Y%m%d%H%M%S").timestamp()
    m = _OLD_RUN.match(name)
    if m:
        return "legacy", _dt.datetime.strptime(m.group(1), "%Y%m%d").timestamp()
    return None


class ModelResults:
    """Run directories of one model, newest first; the flat directory last (ordered by mtime)."""

    def __init__(self, work_dir: Path, model: str, listing: _Listing | None = None) -> None:
        self.model = model
        self.root = work_dir / model
        self.listing = listing or _Listing()
        runs: list[RunDir] = []
        for name, e in self.listing.entries(self.root).items():
            st = _stamp(name)
            if st and e.is_dir():
                runs.append(RunDir(self.root / name, st[0], st[1]))
        # Same-day legacy runs tie on stamp: break ties by directory mtime.
        runs.sort(key=lambda r: (r.stamp or 0.0, _safe_mtime(r.path)), reverse=True)
        self.runs = runs
        self.flat = RunDir(self.root, "flat", None)
        self.exists = self.root.is_dir()

    def _all_dirs(self) -> list[RunDir]:
        return [*self.runs, self.flat]

    def find(self, run: RunDir, patterns: tuple[str, ...], dataset: str,
             judge: str | None = None) -> tuple[Path | None, str | None, list[str]]:
        """First pattern that matches a regular file in ``run`` -> (path, judge, notes).

        In the flat directory, links that resolve into a run directory of this model are
        skipped: they are that run's files and were considered there.
        """
        notes: list[str] = []
        entries = self.listing.entries(run.path)
        for pat in patterns:
            filled = pat.replace("{model}", self.model).replace("{dataset}", dataset)
            if "{judge}" in filled:
                if judge is not None:
                    names = [filled.replace("{judge}", judge)]
                else:
                    rx = _judge_rx(filled)
                    names = [n for n in entries if (m := rx.match(n)) and "vanilla" not in m.group("judge")]
            else:
                names = [filled]
            hits = []
            for n in names:
                e = entries.get(n)
                if e is None:
                    continue
                p = run.path / n
                if e.is_symlink():
                    if not p.exists():
                        notes.append(f"broken link {p} -> {os.readlink(p)}")
                        continue
                    if run.layout == "flat" and _stamp(p.resolve().parent.name):
                        continue  # upstream's convenience link to a run directory's file
                if not e.is_file():
                    continue
                hits.append(p)
            if hits:
                hits.sort(key=_safe_mtime, reverse=True)
                chosen = hits[0]
                j = None
                if "{judge}" in filled:
                    rx = _judge_rx(filled)
                    m = rx.match(chosen.name)
                    j = m.group("judge") if m else judge
                    if len(hits) > 1:
                        notes.append(f"several judges' files for {dataset} in {run.path}: "
                                     f"{', '.join(h.name for h in hits)}; using the newest, {chosen.name}")
                return chosen, j, notes
        return None, None, notes

    def locate(self, part: DatasetPart) -> Located:
        if not self.exists:
            return Located(self.model, part.dataset, "missing",
                           reason=f"no directory {self.root} (variant never run with this --work-dir)")
        candidates = []  # (time, run, headline path, judge, notes)
        all_notes: list[str] = []
        for run in self._all_dirs():
            path, judge, notes = self.find(run, part.headline.files, part.dataset)
            all_notes += notes
            if path is not None:
                t = run.stamp if run.stamp is not None else _safe_mtime(path)
                candidates.append((t, run, path, judge))
        newest_pred = self._newest_prediction(part.dataset)
        if not candidates:
            want = " or ".join(p.replace("{model}", self.model).replace("{dataset}", part.dataset)
                               for p in part.headline.files)
            reason = f"no score file {want} in {self.root} or its run directories"
            if newest_pred is not None:
                reason += (f"; predictions exist ({newest_pred[1]}) but were never evaluated "
                           "(--mode infer, a failed judge, or a run still going)")
            return Located(self.model, part.dataset, "missing", reason=reason, notes=all_notes)
        candidates.sort(key=lambda c: (c[0], _safe_mtime(c[2])), reverse=True)
        t, run, path, judge = candidates[0]
        loc = Located(self.model, part.dataset, "ok", headline=path, run=run, judge=judge, notes=all_notes)
        if part.per_sample is not None:
            ps, _, notes = self.find(run, part.per_sample.files, part.dataset, judge=judge)
            if ps is None and judge is not None:  # per-sample file may use another judge name
                ps, _, notes2 = self.find(run, part.per_sample.files, part.dataset)
                notes += notes2
            loc.notes += notes
            loc.per_sample = ps
        if newest_pred is not None and newest_pred[0] > _safe_mtime(path) + STALE_SLACK_S:
            loc.status = "stale"
            loc.reason = (f"the score file {path} is older than the predictions {newest_pred[1]}; "
                          "re-run the evaluation (the number shown comes from older predictions)")
        return loc

    def _newest_prediction(self, dataset: str) -> tuple[float, Path] | None:
        best: tuple[float, Path] | None = None
        pats = tuple(f"{{model}}_{{dataset}}.{ext}" for ext in PRED_EXTS)
        for run in self._all_dirs():
            p, _, _ = self.find(run, pats, dataset)
            if p is not None:
                t = _safe_mtime(p)
                if best is None or t > best[0]:
                    best = (t, p)
        return best


@functools.lru_cache(maxsize=4096)
def _judge_rx(filled: str) -> re.Pattern:
    return re.compile("^" + re.escape(filled).replace(re.escape("{judge}"), _JUDGE) + "$")


def _safe_mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0
