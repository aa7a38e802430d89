"""Public entry point of the report step: VLMEvalKit result files -> CUR/IG and more.

``build_report`` is what ``encred report`` calls and what other code (the CPU
demo, a notebook, a post-run hook) should call.  It reads, computes and writes
in one go and returns a :class:`ReportResult` that holds every table as plain
Python data, so callers never need to re-read the files it wrote.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence


@dataclass
class ReportResult:
    """Everything one report run produced.

    Scores are on the 0-100 scale; CUR values are in percent (as in the paper).
    ``variants`` are keyed by the tuple of *masked* encoders in the base's order
    (``()`` is the full model, ``encoders`` is the no-vision baseline).
    """

    base_model: str
    suite: str
    encoders: tuple[str, ...]
    out_dir: Path | None
    """Where the files went (``None`` when ``write=False``)."""
    variants: list[dict[str, Any]] = field(default_factory=list)
    """``name, masked, kept, k`` per variant; first the full model, last the no-vision one."""
    levels: list[str] = field(default_factory=list)
    """Benchmarks (suite order), then categories, then ``Overall``."""
    categories: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    """kind -> path: ``xlsx``, ``markdown``, ``json``, ``manifest`` and ``fig_*`` PNGs."""
    scores: dict[str, dict[str, float | None]] = field(default_factory=dict)
    """variant model name -> level (benchmark short name, category name, ``Overall``) -> score."""
    cur: dict[str, dict[str, float | None]] = field(default_factory=dict)
    """encoder -> level -> CUR in % (``None`` when its inputs are missing)."""
    ig: dict[str, float | None] = field(default_factory=dict)
    """level -> IG = max CUR - min CUR, in percentage points."""
    k_curve: list[dict[str, Any]] = field(default_factory=list)
    """Per level and k = 0..n: ``level, k, n_subsets, n_present, max, min, mean, argmax, argmin``."""
    capacity_necessity: list[dict[str, Any]] = field(default_factory=list)
    """One row per encoder: ``encoder, capacity, necessity, cur`` (Overall level)."""
    pairing: dict[str, Any] = field(default_factory=dict)
    """Anchor (highest capacity) + complement (best partner) vs the top-2-capacity pair."""
    shapley: dict[str, Any] | None = None
    """``values`` (encoder -> Shapley), ``banzhaf``, ``interaction`` ((a, b) -> index as
    ``"a|b"`` keys), ``sum``, ``v_all_minus_v_none``, ``efficiency_ok``; ``None`` if the
    lattice is incomplete (see ``missing_metrics``)."""
    shapley_levels: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The same for every level whose lattice is complete."""
    bootstrap: list[dict[str, Any]] = field(default_factory=list)
    """Paired bootstrap rows: ``quantity`` (``CUR`` or ``variant - full``), ``subject`` (encoder or
    ``-a,-b`` mask label), ``level, estimate, lo, hi, distinguishable`` (interval excludes 0)."""
    cells: list[dict[str, Any]] = field(default_factory=list)
    """One row per (variant, benchmark): ``variant, benchmark, status, score, run, path, reason,
    per_sample``; status is ``ok``, ``stale`` (used, but newer predictions exist), ``missing`` or
    ``unreadable``."""
    missing_metrics: list[dict[str, str]] = field(default_factory=list)
    """Metrics that could not be computed: ``metric, level, needs``."""
    per_sample_issues: list[dict[str, str]] = field(default_factory=list)
    """Cells whose headline was read but whose per-sample data cannot serve the bootstrap (no
    per-sample file, unreadable or truncated, or not reproducing the headline): ``variant,
    benchmark, dataset, file, reason``."""
    weakened: list[dict[str, Any]] = field(default_factory=list)
    """Numbers that rest on partial input, each shown with its ``mark`` (``†1``...) wherever the
    number is shown (console, Markdown, figures): ``quantity`` (``CUR``), ``subject`` (encoder),
    ``level, estimate, interval`` (False: no interval because of it), ``why`` (list of
    ``variant/benchmark: reason``), ``mark``."""
    notes: list[str] = field(default_factory=list)
    provenance_warnings: list[str] = field(default_factory=list)
    """Cells of one CUR or of the lattice made with different VLMEvalKit / transformers versions,
    dtypes or mask modes (from the prediction files' provenance sidecars; ``cells[i]["provenance"]``)."""
    n_boot: int = 0
    seed: int = 0
    sampled: list[dict[str, Any]] = field(default_factory=list)
    """Cells whose score is an adaptive sweep's estimate from n of N questions (``variant, benchmark,
    score, note``); their intervals (rows with a ``sampled`` key in ``bootstrap``) are confidence sequences."""
    token_variants: list[dict[str, Any]] = field(default_factory=list)
    """Token-budget variants found in the work dir (``<variant>_keep<NN>[_llm[<K>]]``, docs/report.md,
    'Token budgets'): ``name, mask_variant, masked, keep, stage, layer, series``; empty when none were run."""
    token_curve: list[dict[str, Any]] = field(default_factory=list)
    """Score against kept-token fraction: ``series, stage, layer, mask, variant, keep, unpruned, level, score,
    retained`` (% of the unpruned variant of the same mask; ``keep`` 100 with ``unpruned`` is that variant)."""
    token_budget95: list[dict[str, Any]] = field(default_factory=list)
    """Per series, mask and level: ``budget`` (smallest keep from which on every larger budget keeps >= 95 % of
    the unpruned score; 100 = none does), ``retained``, ``lo``/``hi`` (bootstrap interval of the budget),
    ``retained_lo``/``retained_hi``, ``budgets`` (those present), ``interval`` (``ok`` or why none)."""
    token_cells: list[dict[str, Any]] = field(default_factory=list)
    """The token-budget variants' cells, as ``cells`` (kept apart: the lattice's counts stay the lattice's)."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per stage (read, metrics, bootstrap, write, total)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready content (what ``<base>_<suite>.json`` holds)."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["out_dir"] = str(self.out_dir) if self.out_dir else None
        d["files"] = {k: str(v) for k, v in self.files.items()}
        return d

    @property
    def problems(self) -> list[dict[str, Any]]:
        """Cells that are not ``ok``."""
        return [c for c in self.cells if c["status"] != "ok"]


def build_report(work_dir: str | Path, base_model: str, suite: str = "paper15",
                 out_dir: str | Path | None = None, suite_file: str | Path | None = None,
                 n_boot: int = 2000, seed: int = 0, *,
                 encoders: Sequence[str] | None = None, write: bool = True,
                 figures: bool = True, force: bool = False,
                 cache: bool | str | Path = True) -> ReportResult:
    """Read every variant's VLMEvalKit results for ``base_model`` and write the report.

    Parameters
    ----------
    work_dir:
        VLMEvalKit's ``--work-dir`` (``outputs`` by default in run.py).  Results of
        model ``M`` are looked for in ``<work_dir>/M/`` in all three layouts
        (``T<date>-<time>/``, ``T<date>_G<hash>/``, flat); the newest complete run wins.
    base_model:
        A base registered in :mod:`vlmeval_encred.registry` (e.g. ``eagle_x5``);
        variant names are ``<base>`` and ``<base>_mask_<enc>...``.
    suite, suite_file:
        Suite name in ``suite_file`` (default: the packaged ``benchmarks.yaml``).
    out_dir:
        Where to write; default ``<work_dir>/encred_report/<base_model>/<suite>``.
        Only this report's own unchanged files (per our manifest there) are replaced;
        other files, including other reports sharing the folder, are left alone
        (:mod:`vlmeval_encred.safe_files`, docs/report.md).
    n_boot, seed:
        Paired bootstrap resamples (0 disables the bootstrap) and RNG seed.
    encoders:
        Explicit encoder names (in order) for a base that is not registered; the
        variant names are then derived with the same ``_mask_`` convention.
    write, figures, force:
        ``write=False`` computes only; ``figures=False`` skips the PNGs; ``force=True``
        replaces same-named files that are not (or no longer) ours.
    cache:
        ``True``: reuse parsed per-sample sheets and bootstrap results from the score cache
        (``$ENCRED_SCORE_CACHE``, default ``~/.cache/vlmeval-encred/report``; entries are keyed
        by file path, size and mtime, see :mod:`.score_cache`); ``False``: no cache; a path:
        that cache directory.

    Raises
    ------
    vlmeval_encred.suites.SuiteError
        The suite file or suite name is invalid.
    vlmeval_encred.safe_files.OutputConflict
        The output directory holds a same-named file we did not write, one edited since, or
        one of another report sharing the folder (nothing is written; the message names them).
    vlmeval_encred.safe_files.OutputError
        The output directory cannot be created or written (the base class of OutputConflict).
    ReportError
        Nothing at all could be read (no results for any variant), or the base
        model is unknown and no ``encoders`` were given.
    """
    from .pipeline import run_pipeline
    from .score_cache import ScoreCache

    sc = ScoreCache.default() if cache is True else ScoreCache(Path(cache) if cache else None)

    t0 = time.perf_counter()
    res = run_pipeline(work_dir=Path(work_dir), base_model=base_model, suite=suite,
                       out_dir=Path(out_dir) if out_dir is not None else None,
                       suite_file=Path(suite_file) if suite_file is not None else None,
                       n_boot=n_boot, seed=seed, encoders=tuple(encoders) if encoders else None,
                       write=write, figures=figures, force=force, cache=sc)
    res.timings["total"] = time.perf_counter() - t0
    return res


class ReportError(RuntimeError):
    """The report cannot be produced at all (as opposed to individual missing cells)."""
