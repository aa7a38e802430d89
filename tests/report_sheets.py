"""Result sheets written by VLMEvalKit's own evaluation code, for the report tests.

For every evaluation type of the paper's 15 benchmarks we write a tiny TSV under the
official dataset name into a temporary LMUData, remove that name from the class's
DATASET_MD5 in-process (offline: no download), write a prediction sheet per variant
the way inference does (the TSV rows minus images plus ``prediction``), and call the
dataset class's ``evaluate`` with ``exact_matching`` / ``nproc=1``.  The files in the
run directory are therefore exactly what VLMEvalKit writes.

Not real: the predictions (chosen so each variant has a known accuracy); MathVista's
LLM judge (no endpoint offline): we write the judge's output sheet in the format its
code writes (data + ``res`` + ``log``), and VLMEvalKit's evaluate then scores it.
``multiprocessing.Pool`` in ImageVQADataset.evaluate is swapped for an in-process map
so the fixture does not fork 16 workers per call on a shared 2-core machine.
"""

from __future__ import annotations

import base64
import functools
import io
import os
import random
import sys
from pathlib import Path

BASE = "reptest"
ENCODERS = ("a", "b")
JUDGE = "gpt-4o-mini"  # the MathVista judge name in its files
RUN = "T20250101-120000"
# accuracy of each variant, by kept set
ACC = {("a", "b"): 0.9, ("a",): 0.6, ("b",): 0.7, (): 0.2}


def variant_name(masked: tuple[str, ...]) -> str:
    return BASE if not masked else BASE + "_mask_" + "_".join(masked)


def variants() -> list[tuple[tuple[str, ...], str, float]]:
    out = []
    for masked in [(), ("a",), ("b",), ("a", "b")]:
        kept = tuple(e for e in ENCODERS if e not in masked)
        out.append((masked, variant_name(masked), ACC[kept]))
    return out


@functools.lru_cache(maxsize=1)
def _png() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _mcq_rows(n: int, **extra_cols) -> list[dict]:
    rows = []
    for i in range(n):
        r = dict(index=i, image=_png(), question=f"q{i}?", A="cat", B="dog", C="cow", D="pig",
                 answer="ABCD"[i % 4])
        for k, f in extra_cols.items():
            r[k] = f(i)
        rows.append(r)
    return rows


def tsvs() -> dict[str, list[dict]]:
    """Official name -> rows of a tiny TSV in that dataset's format."""
    img = _png()
    d: dict[str, list[dict]] = {}
    for name in ("AI2D_TEST", "SEEDBench_IMG", "ScienceQA_TEST", "RealWorldQA"):
        d[name] = _mcq_rows(10)
    d["MMBench_DEV_EN"] = _mcq_rows(10, category=lambda i: "attribute_recognition",
                                    **{"l2-category": lambda i: "FP-S"}, split=lambda i: "dev")
    d["MMMU_DEV_VAL"] = _mcq_rows(12, split=lambda i: "dev" if i < 2 else "validation")
    d["CV-Bench-2D"] = [dict(r, split="2D", source=("ADE20K" if i < 4 else "COCO"), prompt=r["question"])
                        for i, r in enumerate(_mcq_rows(10))]
    d["CV-Bench-3D"] = [dict(r, split="3D", source="Omni3D", prompt=r["question"]) for r in _mcq_rows(8)]
    d["MMVP"] = [dict(index=i, image=img, question=f"pair {i // 2}?", A="yes", B="no",
                      answer="AB"[i % 2]) for i in range(12)]
    d["MME"] = [dict(index=i, image=img, question=f"Is it {i}? Please answer yes or no.",
                     answer="Yes" if i % 2 == 0 else "No", category=["color", "count", "OCR", "code_reasoning"][i // 4 % 4],
                     image_path=f"img{i // 2}.jpg") for i in range(16)]
    for name in ("GQA_TestDev_Balanced", "DocVQA_VAL", "ChartQA_TEST"):
        d[name] = [dict(index=i, image=img, question=f"what {i}?", answer=str(["['rome']", "['12']"][i % 2]))
                   for i in range(10)]
    d["TextVQA_VAL"] = [dict(index=i, image=img, question=f"text {i}?",
                             answer=str(["stop"] * 7 + ["halt"] * 3)) for i in range(10)]
    d["OCRBench"] = [dict(index=i, image=img, question=f"read {i}", answer=str(["hello", "hi"]),
                          category=["Regular Text Recognition", "Scene Text-centric VQA"][i % 2])
                     for i in range(10)]
    d["MathVista_MINI"] = [dict(index=i, image=img, question=f"math {i}", answer=["3", "1.5", "B"][i % 3],
                                question_type=["free_form", "free_form", "multi_choice"][i % 3],
                                answer_type=["integer", "float", "text"][i % 3],
                                precision=1.0, choices=str(["x", "y"]) if i % 3 == 2 else "[]",
                                answer_option="B" if i % 3 == 2 else "",
                                task="figure question answering", skills=str(["arithmetic reasoning"]))
                           for i in range(9)]
    return d


def _correct_pred(name: str, row: dict) -> str:
    if name == "MME":
        return row["answer"]
    if name in ("GQA_TestDev_Balanced", "DocVQA_VAL", "ChartQA_TEST"):
        return eval(row["answer"])[0]
    if name == "TextVQA_VAL":
        return "stop"
    if name == "OCRBench":
        return "it says hello"
    if name == "MathVista_MINI":
        return row["answer"]
    return row["answer"]


def _wrong_pred(name: str, row: dict) -> str:
    if name == "MME":
        return "No" if row["answer"] == "Yes" else "Yes"
    if name in ("GQA_TestDev_Balanced", "DocVQA_VAL", "ChartQA_TEST", "TextVQA_VAL", "OCRBench"):
        return "zzzz"
    if name == "MathVista_MINI":
        return "7"
    return "ABCD"[("ABCD".index(row["answer"]) + 1) % 4] if row["answer"] in "ABCD" else "A"


def _predictions(name: str, rows: list[dict], acc: float, seed: str) -> list[dict]:
    rng = random.Random(f"{seed}/{name}")
    out = []
    for r in rows:
        pr = _correct_pred(name, r) if rng.random() < acc else _wrong_pred(name, r)
        out.append({**{k: v for k, v in r.items() if k != "image"}, "prediction": pr})
    return out


def _nested_predictions(name: str, rows: list[dict], acc: float) -> list[dict]:
    """Exactly ``round(acc * n)`` correct answers, the *same* questions first for every model: one
    order of the questions per dataset, and a model of accuracy ``acc`` answers its first
    ``round(acc * n)`` correctly.  Correct sets are nested across models (a better model answers a
    superset), so paired resamples have known properties (equal accuracies: identical answers)."""
    order = list(range(len(rows)))
    random.Random(f"nested/{name}").shuffle(order)
    good = set(order[:round(acc * len(rows))])
    return [{**{k: v for k, v in r.items() if k != "image"},
             "prediction": _correct_pred(name, r) if i in good else _wrong_pred(name, r)}
            for i, r in enumerate(rows)]


class _SerialPool:
    def __init__(self, *a, **k) -> None:
        pass

    def map(self, f, it):
        return [f(x) for x in it]

    def close(self):
        pass

    def join(self):
        pass


def _prepare(rootp: Path, data: dict[str, list[dict]]):
    """LMUData TSVs + VLMEvalKit patched for offline use; returns (build_dataset, dump, pandas)."""
    import pandas as pd

    lmu = rootp / "LMUData"
    lmu.mkdir(parents=True, exist_ok=True)
    for name, rows in data.items():
        pd.DataFrame(rows).to_csv(lmu / f"{name}.tsv", sep="\t", index=False)
    os.environ["LMUData"] = str(lmu)
    os.environ.setdefault("PRED_FORMAT", "xlsx")
    import vlmeval.dataset as vd
    import vlmeval.dataset.image_vqa as vqa_mod
    from vlmeval.dataset import build_dataset
    from vlmeval.smp import dump

    for cls in {type(None)} | set(_dataset_classes(vd)):
        md5 = getattr(cls, "DATASET_MD5", None)
        if isinstance(md5, dict):
            for name in data:
                md5.pop(name, None)
    vqa_mod.mp.Pool = _SerialPool  # in-process map; see module docstring
    return build_dataset, dump, pd


def _evaluate_variant(work: Path, model: str, acc: float, data: dict[str, list[dict]], build_dataset, dump,
                      pd, nested: bool = False) -> None:
    run = work / model / RUN
    run.mkdir(parents=True, exist_ok=True)
    for name, rows in data.items():
        ds = build_dataset(name)
        assert ds is not None, name
        pred = run / f"{model}_{name}.xlsx"
        preds = _nested_predictions(name, rows, acc) if nested else _predictions(name, rows, acc, model)
        dump(pd.DataFrame(preds), str(pred))
        if name == "MathVista_MINI":
            storage = pd.DataFrame(preds)
            storage["res"] = storage["prediction"]
            storage["log"] = "Prefetch succeed"
            dump(storage, str(run / f"{model}_{name}_{JUDGE}.xlsx"))
            ds.evaluate(str(pred), model=JUDGE, nproc=1)
        else:
            ds.evaluate(str(pred), model="exact_matching", nproc=1)
    # upstream head: relative links to the newest files in <work>/<model>/
    for f in run.iterdir():
        link = work / model / f.name
        if not link.exists():
            link.symlink_to(Path(RUN) / f.name)


@functools.lru_cache(maxsize=1)
def build(root: str) -> Path:
    """Write the LMUData TSVs and, for every variant, a run directory of evaluated results.

    Returns ``<root>/work`` with ``<work>/<variant>/T20250101-120000/`` (upstream layout,
    plus links in ``<work>/<variant>/``).  Cached per process: built once per test session.
    """
    rootp = Path(root)
    data = tsvs()
    tools = _prepare(rootp, data)
    work = rootp / "work"
    for masked, model, acc in variants():
        _evaluate_variant(work, model, acc, data, *tools)
    return work


def build_lattices(root: str, bases: dict[str, dict[tuple[str, ...], float]], datasets: list[str]) -> Path:
    """Evaluated results of every variant of several *registered* bases on ``datasets``.

    ``bases``: base name -> (kept encoders, sorted in the base's order) -> accuracy; every
    subset of the base's encoders must be given.  Variant names come from the registry.
    """
    from vlmeval_encred.registry import get_base

    rootp = Path(root)
    data = {k: v for k, v in tsvs().items() if k in datasets}
    tools = _prepare(rootp, data)
    work = rootp / "work"
    for base, acc in bases.items():
        spec = get_base(base)
        for kept, a in acc.items():
            masked = tuple(e for e in spec.encoders if e not in kept)
            _evaluate_variant(work, spec.entry_name(masked), a, data, *tools)
    return work


def _dataset_classes(vd) -> list[type]:
    out = []
    for v in vars(vd).values():
        if isinstance(v, type) and hasattr(v, "DATASET_MD5"):
            out.append(v)
    mods = [m for k, m in sys.modules.items() if k.startswith("vlmeval.dataset")]
    for m in mods:
        for v in vars(m).values():
            if isinstance(v, type) and hasattr(v, "DATASET_MD5"):
                out.append(v)
    return out


def mcq_data(datasets: list[str], n: int) -> dict[str, list[dict]]:
    """``n``-question TSVs of plain MCQ datasets (``index, image, question, A-D, answer``)."""
    return {name: _mcq_rows(n) for name in datasets}


def build_models(root: str, models: dict[str, float], data: dict[str, list[dict]]) -> Path:
    """Evaluated results of any model names (e.g. token-budget variants ``<variant>_keep25``) with
    *exact*, nested accuracies (:func:`_nested_predictions`) on ``data`` (:func:`mcq_data`)."""
    rootp = Path(root)
    tools = _prepare(rootp, data)
    work = rootp / "work"
    for model, acc in models.items():
        _evaluate_variant(work, model, acc, data, *tools, nested=True)
    return work
