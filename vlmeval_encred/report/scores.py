"""Headline numbers and per-sample outcomes of one (variant, dataset), on the 0-100 scale.

Per-sample outcomes become *units* for the bootstrap: ``score = norm * sum(w x) / sum(w)``
over units, which reproduces every headline VLMEvalKit computes for the paper's suite:

* ``column``: x = a 0/1 (or fractional) column such as ``hit``; optional ``group_mean``
  (CV-Bench-2D: mean over sources of per-source means -> w = 1 / size of the group);
* ``pairs``: MMVP, a unit is a pair of consecutive questions, x = both right;
* ``vqa_match``: ``eval_match`` list per sample, reduced like VLMEvalKit's
  ``hit_calculate`` (TextVQA/GQA mean, ChartQA max, DocVQA ANLS with the 0.5 threshold);
* ``mme``: a unit is an image (two questions), x = acc + acc_plus, w = 1 / images in its
  task, norm = 100 * tasks * scale (perception is a *sum* of task scores);
* ``ocrbench``: re-scored from the predictions with OCRBench's substring rule
  (its evaluate writes no per-sample file); norm = samples * scale (a count, not a mean);
* ``mathvista``: the judge's extracted answer ``res`` checked as VLMEvalKit's post_check does.

Every reconstruction is checked against the headline; a mismatch makes the per-sample
data *inconsistent* (reported, and left out of the bootstrap) instead of silently wrong.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .schema import HeadlineSpec, PerSampleSpec
from .tables import TableError, read_json, read_table

CONSISTENCY_TOL = 0.05  # points on the 0-100 scale
MME_TASKS = {
    "perception": ["OCR", "artwork", "celebrity", "color", "count", "existence",
                   "landmark", "position", "posters", "scene"],
    "reasoning": ["code_reasoning", "commonsense_reasoning", "numerical_calculation", "text_translation"],
}


class ScoreError(ValueError):
    """A result file was found but does not hold what the suite schema says it holds."""


@dataclass
class Units:
    """Per-sample outcomes: ``score = norm * sum(w * x) / sum(w)``."""

    ids: np.ndarray  # str
    x: np.ndarray  # float64
    w: np.ndarray  # float64
    norm: float

    def score(self) -> float:
        return float(self.norm * np.dot(self.w, self.x) / self.w.sum()) if len(self.x) else float("nan")

    def subset(self, keep: np.ndarray) -> "Units":
        return Units(self.ids[keep], self.x[keep], self.w[keep], self.norm)


def _match(v: Any, want: str) -> bool:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v) == want


def headline(path: Path, spec: HeadlineSpec) -> float:
    """The headline cell of ``path`` mapped onto 0-100 (``value * spec.scale``)."""
    try:
        if path.suffix.lower() == ".json":
            data = read_json(path)
            if isinstance(data, dict) and spec.column in data and not isinstance(data[spec.column], (dict, list)):
                if spec.row:
                    raise ScoreError(f"{path}: a row selector {dict(spec.row)} was given but the JSON is one record")
                raw = data[spec.column]
                return _scaled(path, spec, raw)
        cols = read_table(path, None)
    except TableError as exc:
        raise ScoreError(str(exc)) from None
    if spec.column not in cols:
        raise ScoreError(f"{path}: no column {spec.column!r} (expected by the suite's headline spec); "
                         f"columns: {', '.join(map(str, cols))}")
    n = len(cols[spec.column])
    rows = list(range(n))
    for col, want in spec.row:
        if col not in cols:
            raise ScoreError(f"{path}: row selector column {col!r} not found; columns: {', '.join(map(str, cols))}")
        rows = [i for i in rows if _match(cols[col][i], want)]
    if not spec.row and n > 1:
        raise ScoreError(f"{path}: {n} rows and no row selector in the suite's headline spec "
                         f"(add e.g. row: {{split: ...}})")
    if len(rows) != 1:
        raise ScoreError(f"{path}: row selector {dict(spec.row)} matched {len(rows)} rows, expected exactly 1")
    return _scaled(path, spec, cols[spec.column][rows[0]])


def _scaled(path: Path, spec: HeadlineSpec, raw: Any) -> float:
    try:
        v = float(raw)
    except (TypeError, ValueError):
        raise ScoreError(f"{path}: cell {spec.column!r} holds {raw!r}, expected a number") from None
    if not np.isfinite(v):
        raise ScoreError(f"{path}: cell {spec.column!r} is {raw!r}")
    v *= spec.scale
    if not -1e-6 <= v <= 100 + 1e-6:
        raise ScoreError(f"{path}: {spec.column!r} = {raw!r} x scale {spec.scale} = {v:.4g} is outside 0-100; "
                         "check the suite's 'scale'")
    return v


def _to_float(v: Any, path: Path, col: str) -> float:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    s = str(v).strip().lower()
    if s in ("true", "false"):
        return float(s == "true")
    try:
        return float(s)
    except ValueError:
        raise ScoreError(f"{path}: column {col!r} holds {v!r}, expected a number or True/False") from None


def _floats(col: list[Any], path: Path, name: str) -> np.ndarray:
    try:
        x = np.array(col, dtype=np.float64)  # numbers and bools: the common case
    except (TypeError, ValueError):
        x = np.array([_to_float(v, path, name) for v in col])
    if np.isnan(x).any():
        raise ScoreError(f"{path}: column {name!r} has {int(np.isnan(x).sum())} empty cell(s), "
                         "expected a number per sample")
    return x


def _ids(vals: list[Any]) -> np.ndarray:
    if vals and all(type(v) is float for v in vals):  # the usual integer index read back as floats
        a = np.array(vals, dtype=np.float64)
        if np.all(np.isfinite(a)) and np.all(a == np.floor(a)) and np.all(np.abs(a) < 2 ** 53):
            return a.astype(np.int64).astype(str).astype(object)
    return np.array([str(int(v)) if isinstance(v, float) and v.is_integer() else str(v) for v in vals], dtype=object)


def per_sample(path: Path, spec: PerSampleSpec, headline_spec: HeadlineSpec) -> Units:
    """Units of one per-sample file; raises :class:`ScoreError` with the file and column."""
    rule = spec.rule
    need = {spec.id, spec.column, *(c for c, _ in spec.filter)}
    if spec.group_mean:
        need.add(spec.group_mean)
    if rule == "pairs":
        need.add("question")
    if rule == "mme":
        need |= {"category"}
    if rule == "ocrbench":
        need |= {"answer", "category"}
    if rule == "mathvista":
        need |= {"answer", "question_type", "answer_type", "answer_option", "choices"}
    try:
        cols = read_table(path, sorted(need))
    except TableError as exc:
        raise ScoreError(str(exc)) from None
    n = len(cols[spec.column])
    if spec.filter:
        keep = [all(_match(cols[c][i], w) for c, w in spec.filter) for i in range(n)]
        cols = {k: [v for v, k2 in zip(vals, keep) if k2] for k, vals in cols.items()}
        n = len(cols[spec.column])
    if n == 0:
        raise ScoreError(f"{path}: no rows left after filter {dict(spec.filter)}")
    col = cols[spec.column]
    if rule == "column":
        x = _floats(col, path, spec.column)
        ids = _ids(cols[spec.id])
        w = np.ones(n)
        if spec.group_mean:
            g = np.array([str(v) for v in cols[spec.group_mean]], dtype=object)
            _, inv, counts = np.unique(g, return_inverse=True, return_counts=True)
            w = 1.0 / counts[inv]
        return Units(ids, x, w, 100.0)
    if rule == "pairs":
        order = np.argsort(np.array([_to_float(v, path, spec.id) for v in cols[spec.id]]), kind="stable")
        if n % 2:
            raise ScoreError(f"{path}: {n} rows; MMVP-style pairs need an even number")
        q = [cols["question"][i] for i in order]
        if any(q[2 * i] != q[2 * i + 1] for i in range(n // 2)):
            raise ScoreError(f"{path}: consecutive rows do not form question pairs (rule 'pairs')")
        h = np.array([_to_float(col[i], path, spec.column) for i in order])
        x = np.minimum(h[0::2], h[1::2]).astype(float)
        return Units(_ids([cols[spec.id][i] for i in order[0::2]]), x, np.ones(n // 2), 100.0)
    if rule == "vqa_match":
        x = np.array([_reduce(_parse_list(v, path, spec.column), spec.reducer) for v in col])
        return Units(_ids(cols[spec.id]), x, np.ones(n), 100.0)
    if rule == "mme":
        tasks = set(MME_TASKS.get(spec.super_category, []))
        if not tasks:
            raise ScoreError(f"per_sample.super_category {spec.super_category!r}: expected one of {list(MME_TASKS)}")
        groups: dict[tuple[str, str], list[float]] = {}
        for c, img, s in zip(cols["category"], cols[spec.id], col):
            if c in tasks:
                groups.setdefault((str(c), str(img)), []).append(_to_float(s, path, spec.column))
        if not groups:
            raise ScoreError(f"{path}: no {spec.super_category} rows (categories {sorted(tasks)})")
        keys = list(groups)
        x = np.array([sum(g) / len(g) + math.prod(g) for g in groups.values()])
        cats = np.array([k[0] for k in keys], dtype=object)
        _, inv, counts = np.unique(cats, return_inverse=True, return_counts=True)
        n_tasks = len(counts)
        return Units(np.array([f"{c}|{i}" for c, i in keys], dtype=object), x, 1.0 / counts[inv],
                     100.0 * n_tasks * headline_spec.scale)
    if rule == "ocrbench":
        x = np.array([_ocrbench_hit(str(p), a, str(c), path) for p, a, c
                      in zip(col, cols["answer"], cols["category"])])
        return Units(_ids(cols[spec.id]), x, np.ones(n), n * headline_spec.scale)
    if rule == "mathvista":
        x = np.array([_mathvista_hit({k: cols[k][i] for k in cols}, spec.column) for i in range(n)])
        return Units(_ids(cols[spec.id]), x, np.ones(n), 100.0)
    raise ScoreError(f"unknown per-sample rule {rule!r}")


def _parse_list(v: Any, path: Path, col: str) -> list[float]:
    if isinstance(v, (int, float)):
        return [float(v)]
    s = str(v).strip()
    if s.startswith("[") and s.endswith("]"):
        inner = s[1:-1].strip()
        if "," not in inner:
            try:
                return [float(inner)]
            except ValueError:
                pass
        if not inner:
            raise ScoreError(f"{path}: column {col!r} holds an empty list")
        out = []
        for tok in inner.split(","):
            t = tok.strip()
            if t in ("True", "False"):
                out.append(float(t == "True"))
                continue
            try:
                out.append(float(t.removeprefix("np.float64(").removesuffix(")")))
            except ValueError:
                try:
                    return [float(y) for y in ast.literal_eval(s)]
                except (ValueError, SyntaxError, TypeError):
                    raise ScoreError(f"{path}: column {col!r} holds {s[:60]!r}, expected a list of numbers") from None
        return out
    return [_to_float(s, path, col)]


def _reduce(m: list[float], reducer: str) -> float:
    if reducer == "max":
        return max(m)
    if reducer == "anls":  # match values are normalised edit distances
        v = 1.0 - min(m)
        return 0.0 if v < 0.5 else v
    return sum(m) / len(m)


def _ocrbench_hit(pred: str, answer: Any, category: str, path: Path) -> float:
    try:
        answers = ast.literal_eval(answer) if isinstance(answer, str) and answer.strip().startswith("[") else [answer]
    except (ValueError, SyntaxError):
        raise ScoreError(f"{path}: OCRBench answer {answer!r} is not a list literal") from None
    if category == "Handwritten Mathematical Expression Recognition":
        p = pred.strip().replace("\n", " ").replace(" ", "")
        return float(any(str(a).strip().replace("\n", " ").replace(" ", "") in p for a in answers))
    p = pred.lower().strip().replace("\n", " ")
    return float(any(str(a).lower().strip().replace("\n", " ") in p for a in answers))


def _mathvista_hit(line: dict[str, Any], res_col: str) -> float:
    res: Any = line[res_col]
    ans: Any = line["answer"]
    try:
        if line["question_type"] == "multi_choice":
            ans = line["answer_option"]
            choices = ast.literal_eval(str(line["choices"]))
            res = _infer_option(str(res), choices)
        elif line["answer_type"] == "integer":
            res, ans = int(_plain(res)), int(_plain(ans))
        elif line["answer_type"] == "float":
            res, ans = float(_plain(res)), float(_plain(ans))
        else:  # VLMEvalKit compares str(None) here: free-text answers never count
            res, ans = "None", str(ans)
    except (ValueError, SyntaxError, TypeError):
        return 0.0
    return float(res == ans)


def _infer_option(res: str, choices: list[Any]) -> str | None:
    letters = [chr(65 + i) for i in range(len(choices))]
    r = res.strip()
    if r in letters:
        return r
    for letter, c in zip(letters, choices):
        if r == str(c).strip():
            return letter
    return None


def _plain(v: Any) -> Any:
    """Numbers read back from a sheet arrive as floats; pandas would give ints for whole numbers."""
    return int(v) if isinstance(v, float) and v.is_integer() else v
