"""The suite schema: which file and cell holds each benchmark's score, and how to rescale it.

A suite file (the packaged ``benchmarks.yaml`` or a user's file) has ``presets``,
``suites`` and ``benchmarks``; see docs/benchmarks.md.  This module turns the
raw YAML into frozen dataclasses and rejects anything it does not understand
with an error naming the file, the benchmark, the key and what was expected,
because a typo here would otherwise surface as a silently missing column.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..suites import DEFAULT_FILE, SuiteError, load_raw

RULES = ("column", "pairs", "vqa_match", "mme", "ocrbench", "mathvista")
REDUCERS = ("mean", "max", "anls")
_HEADLINE_KEYS = {"file", "row", "column", "key", "scale"}
_PER_SAMPLE_KEYS = {"file", "rule", "column", "id", "filter", "group_mean", "reducer", "super_category"}
_BENCH_KEYS = {"category", "datasets", "parts", "preset", "headline", "per_sample", "combine", "description"}
_PART_KEYS = {"dataset", "preset", "headline", "per_sample"}
PLACEHOLDERS = ("{model}", "{dataset}", "{judge}")


@dataclass(frozen=True)
class HeadlineSpec:
    """Where the headline number of one dataset is: ``files`` (first existing pattern wins),
    a row selector (column -> value; ``None`` = the only row), the column (CSV/XLSX) or key
    (JSON), and the factor onto 0-100."""

    files: tuple[str, ...]
    column: str
    scale: float
    row: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class PerSampleSpec:
    """Where each sample's outcome is and how to turn it into units for the bootstrap.

    ``rule`` is one of :data:`RULES`; see :mod:`vlmeval_encred.report.scores`."""

    files: tuple[str, ...]
    rule: str
    column: str
    id: str = "index"
    filter: tuple[tuple[str, str], ...] = ()
    group_mean: str | None = None
    reducer: str = "mean"
    super_category: str = "perception"


@dataclass(frozen=True)
class DatasetPart:
    dataset: str
    headline: HeadlineSpec
    per_sample: PerSampleSpec | None


@dataclass(frozen=True)
class Benchmark:
    name: str
    category: str
    parts: tuple[DatasetPart, ...]
    combine: str = "mean"


@dataclass(frozen=True)
class Suite:
    name: str
    categories: tuple[str, ...]
    benchmarks: tuple[Benchmark, ...]
    source: str
    description: str = ""

    def benchmark(self, name: str) -> Benchmark:
        for b in self.benchmarks:
            if b.name == name:
                return b
        raise SuiteError(f"suite {self.name!r} ({self.source}) has no benchmark {name!r}; "
                         f"it has: {', '.join(b.name for b in self.benchmarks)}")

    def by_category(self) -> dict[str, list[Benchmark]]:
        out: dict[str, list[Benchmark]] = {c: [] for c in self.categories}
        for b in self.benchmarks:
            out[b.category].append(b)
        return out


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _patterns(v: Any, where: str) -> tuple[str, ...]:
    pats = [v] if isinstance(v, str) else v
    if not isinstance(pats, list) or not pats or not all(isinstance(p, str) and p for p in pats):
        raise SuiteError(f"{where}: 'file' must be a pattern string or a non-empty list of them, got {v!r}")
    for p in pats:
        if "{model}" not in p:
            raise SuiteError(f"{where}: file pattern {p!r} must contain {{model}} "
                             "(VLMEvalKit prefixes every result file with the model name)")
        stripped = p
        for ph in PLACEHOLDERS:
            stripped = stripped.replace(ph, "")
        if "{" in stripped or "}" in stripped:
            raise SuiteError(f"{where}: file pattern {p!r} has an unknown placeholder; "
                             f"allowed: {', '.join(PLACEHOLDERS)}")
        if "/" in p or "\\" in p:
            raise SuiteError(f"{where}: file pattern {p!r} must be a file name inside the run directory")
    return tuple(pats)


def _selector(v: Any, where: str) -> tuple[tuple[str, str], ...]:
    if v is None:
        return ()
    if not isinstance(v, Mapping) or not v:
        raise SuiteError(f"{where}: expected a mapping column -> value (e.g. {{split: validation}}), got {v!r}")
    return tuple((str(k), str(x)) for k, x in v.items())


def _unknown(d: Mapping[str, Any], allowed: set[str], where: str) -> None:
    bad = sorted(set(d) - allowed)
    if bad:
        raise SuiteError(f"{where}: unknown key(s) {', '.join(map(repr, bad))}; "
                         f"allowed: {', '.join(sorted(allowed))}")


def _headline(d: Any, where: str) -> HeadlineSpec:
    if not isinstance(d, Mapping):
        raise SuiteError(f"{where}: 'headline' is required (a mapping with file, column/key, scale); got {d!r}")
    _unknown(d, _HEADLINE_KEYS, where)
    if "file" not in d:
        raise SuiteError(f"{where}: 'headline.file' is required")
    col = d.get("column", d.get("key"))
    if not isinstance(col, str) or not col:
        raise SuiteError(f"{where}: 'headline' needs 'column' (CSV/XLSX) or 'key' (JSON), got {col!r}")
    scale = d.get("scale", 1)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0:
        raise SuiteError(f"{where}: 'headline.scale' must be a positive number (factor onto 0-100), got {scale!r}")
    return HeadlineSpec(files=_patterns(d["file"], where + ".headline"), column=col, scale=float(scale),
                        row=_selector(d.get("row"), where + ".headline.row"))


def _per_sample(d: Any, where: str) -> PerSampleSpec | None:
    if d is None:
        return None
    if not isinstance(d, Mapping):
        raise SuiteError(f"{where}: 'per_sample' must be a mapping or null, got {d!r}")
    _unknown(d, _PER_SAMPLE_KEYS, where + ".per_sample")
    for k in ("file", "rule", "column"):
        if k not in d:
            raise SuiteError(f"{where}: 'per_sample.{k}' is required")
    if d["rule"] not in RULES:
        raise SuiteError(f"{where}: per_sample.rule {d['rule']!r} is not one of {', '.join(RULES)}")
    reducer = d.get("reducer", "mean")
    if reducer not in REDUCERS:
        raise SuiteError(f"{where}: per_sample.reducer {reducer!r} is not one of {', '.join(REDUCERS)}")
    return PerSampleSpec(files=_patterns(d["file"], where + ".per_sample"), rule=d["rule"],
                         column=str(d["column"]), id=str(d.get("id", "index")),
                         filter=_selector(d.get("filter"), where + ".per_sample.filter"),
                         group_mean=d.get("group_mean"), reducer=reducer,
                         super_category=str(d.get("super_category", "perception")))


def _part(raw: Mapping[str, Any], presets: Mapping[str, Any], where: str) -> DatasetPart:
    preset = raw.get("preset")
    merged: dict[str, Any] = {}
    if preset is not None:
        if preset not in presets:
            raise SuiteError(f"{where}: unknown preset {preset!r}; defined: {', '.join(sorted(presets)) or 'none'}")
        merged = _merge(presets[preset], {})
    merged = _merge(merged, {k: raw[k] for k in ("headline", "per_sample") if k in raw})
    return DatasetPart(dataset=str(raw["dataset"]), headline=_headline(merged.get("headline"), where),
                       per_sample=_per_sample(merged.get("per_sample"), where))


def _benchmark(name: str, raw: Any, presets: Mapping[str, Any], src: str) -> Benchmark:
    where = f"{src}: benchmark {name!r}"
    if not isinstance(raw, Mapping):
        raise SuiteError(f"{where}: expected a mapping, got {raw!r}")
    _unknown(raw, _BENCH_KEYS, where)
    if not isinstance(raw.get("category"), str):
        raise SuiteError(f"{where}: 'category' (a string) is required")
    if ("datasets" in raw) == ("parts" in raw):
        raise SuiteError(f"{where}: give exactly one of 'datasets' (list of names) or 'parts' (list of mappings)")
    parts = []
    if "datasets" in raw:
        ds = raw["datasets"]
        if not isinstance(ds, list) or not ds or not all(isinstance(x, str) for x in ds):
            raise SuiteError(f"{where}: 'datasets' must be a non-empty list of official dataset names, got {ds!r}")
        for d in ds:
            parts.append(_part({"dataset": d, **{k: raw[k] for k in ("preset", "headline", "per_sample")
                                                  if k in raw}}, presets, f"{where} dataset {d!r}"))
    else:
        if not isinstance(raw["parts"], list) or not raw["parts"]:
            raise SuiteError(f"{where}: 'parts' must be a non-empty list")
        for i, p in enumerate(raw["parts"]):
            if not isinstance(p, Mapping) or "dataset" not in p:
                raise SuiteError(f"{where}: parts[{i}] must be a mapping with 'dataset', got {p!r}")
            _unknown(p, _PART_KEYS, f"{where} parts[{i}]")
            inherited = {k: raw[k] for k in ("preset",) if k in raw and "preset" not in p}
            part_raw = _merge({k: raw[k] for k in ("headline", "per_sample") if k in raw}, {**inherited, **p})
            parts.append(_part(part_raw, presets, f"{where} dataset {p['dataset']!r}"))
    combine = raw.get("combine", "mean")
    if combine != "mean":
        raise SuiteError(f"{where}: 'combine' must be 'mean' (the only supported way to merge parts), got {combine!r}")
    return Benchmark(name=name, category=raw["category"], parts=tuple(parts), combine=combine)


def list_suites(suite_file: str | Path | None = None) -> list[str]:
    raw = load_raw(str(suite_file) if suite_file else None)
    return sorted((raw.get("suites") or {}).keys())


def load_suite(name: str = "paper15", suite_file: str | Path | None = None) -> Suite:
    """Load and validate suite ``name`` from ``suite_file`` (default: the packaged benchmarks.yaml).

    Only the benchmarks (and presets) the suite uses are validated, so a broken entry of
    another suite in a shared file does not block this one.
    """
    src = str(suite_file) if suite_file else str(DEFAULT_FILE)
    raw = load_raw(str(suite_file) if suite_file else None)
    suites = raw.get("suites") or {}
    if not isinstance(suites, Mapping):
        raise SuiteError(f"{src}: 'suites' must be a mapping of suite name -> definition")
    if name not in suites:
        raise SuiteError(f"{src}: unknown suite {name!r}; defined: {', '.join(sorted(suites)) or 'none'}")
    sraw = suites[name]
    where = f"{src}: suite {name!r}"
    if not isinstance(sraw, Mapping) or not isinstance(sraw.get("benchmarks"), list) or not sraw["benchmarks"]:
        raise SuiteError(f"{where}: expected a mapping with a non-empty 'benchmarks' list")
    presets = raw.get("presets") or {}
    if not isinstance(presets, Mapping):
        raise SuiteError(f"{src}: 'presets' must be a mapping")
    all_b = raw.get("benchmarks") or {}
    benches = []
    for bname in sraw["benchmarks"]:
        if bname not in all_b:
            raise SuiteError(f"{where}: benchmark {bname!r} is not defined under 'benchmarks' "
                             f"(defined: {', '.join(sorted(all_b))})")
        benches.append(_benchmark(str(bname), all_b[bname], presets, src))
    if len({b.name for b in benches}) != len(benches):
        raise SuiteError(f"{where}: a benchmark is listed twice")
    cats = sraw.get("categories")
    if cats is None:  # order of first appearance
        cats = list(dict.fromkeys(b.category for b in benches))
    if not isinstance(cats, list) or not all(isinstance(c, str) for c in cats):
        raise SuiteError(f"{where}: 'categories' must be a list of names")
    for b in benches:
        if b.category not in cats:
            raise SuiteError(f"{where}: benchmark {b.name!r} has category {b.category!r}, "
                             f"which is not in the suite's categories {cats}")
    empty = [c for c in cats if not any(b.category == c for b in benches)]
    if empty:
        raise SuiteError(f"{where}: categories without benchmarks: {', '.join(empty)}")
    return Suite(name=name, categories=tuple(cats), benchmarks=tuple(benches), source=src,
                 description=str(sraw.get("description", "")))
