"""Benchmark suites loaded from ``benchmarks.yaml`` (ours, or a user's file with the same schema)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

DEFAULT_FILE = Path(__file__).with_name("benchmarks.yaml")


class SuiteError(ValueError):
    """benchmarks.yaml (or a user's suite file) does not follow the schema."""


@functools.lru_cache(maxsize=8)
def load_raw(path: str | None = None) -> dict[str, Any]:
    import yaml

    p = Path(path) if path else DEFAULT_FILE
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise SuiteError(f"suite file {p} does not exist") from None
    except yaml.YAMLError as exc:
        raise SuiteError(f"suite file {p} is not valid YAML: {exc}") from None
    if not isinstance(data, dict) or "benchmarks" not in data:
        raise SuiteError(f"suite file {p}: expected a mapping with a 'benchmarks' key")
    return data


def paper_short_names(path: str | None = None) -> dict[str, list[str]]:
    """Short name -> official VLMEvalKit dataset names, for names that are not themselves official.

    Official names (``MME``, ``MMVP``, ``OCRBench``, ``RealWorldQA``) map to themselves
    and are left out: VLMEvalKit handles them exactly as before.
    """
    out = {}
    for short, b in load_raw(path)["benchmarks"].items():
        ds = dataset_names(b)
        if ds != [short]:
            out[short] = ds
    return out


def dataset_names(bench: dict[str, Any]) -> list[str]:
    """Official dataset names of one raw benchmark entry (``datasets: [...]`` or ``parts: [{dataset: ...}]``)."""
    if not isinstance(bench, dict):
        return []
    names = [str(d) for d in bench.get("datasets", []) or []]
    names += [str(p["dataset"]) for p in bench.get("parts", []) or [] if isinstance(p, dict) and "dataset" in p]
    return names
