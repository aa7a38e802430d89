"""Effective rank of each encoder's features at the fusion point (``encred rank``).

The features are the ones the sweep shares between subsets: per sample, the
message VLMEvalKit would build (:func:`.engine.build_message`), the family's
:meth:`SweepSupport.prepare` and :meth:`SweepSupport.encode`, on the full model
loaded through ``vlmeval.config.supported_VLM``.  Each distinct image (by content)
is encoded once per dataset (MMVP/MME ask two questions per image).

Per dataset and encoder the token rows (tokens x images, width C) go into a float64
Gram matrix (:class:`~..report.effrank.GramAccumulator`); the suite's value uses all
datasets' rows together.  Where the family's support has the optional
``project(wrapper, inputs, features) -> {encoder: tensor}`` hook (a per-encoder view of
the projector), the projected features are ranked too.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..registry import BaseModelSpec, Entry
from ..report.effrank import GramAccumulator
from .engine import _build_dataset, build_message, load_model
from .protocol import support_for

log = logging.getLogger("vlmeval_encred")
STAGES = ("fusion", "projected")


@dataclass
class RankRow:
    encoder: str
    stage: str
    """``fusion`` (the tensor masking replaces) or ``projected`` (the family's ``project`` hook)."""
    scope: str
    """A dataset name, or ``all: <d1>, <d2>...`` for the suite."""
    images: int
    tokens: int
    width: int
    effective_rank: float

    @property
    def ratio(self) -> float:
        """Effective rank over its ceiling min(tokens, width)."""
        cap = min(self.tokens, self.width)
        return self.effective_rank / cap if cap else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {"encoder": self.encoder, "stage": self.stage, "scope": self.scope, "images": self.images,
                "tokens": self.tokens, "width": self.width, "effective_rank": self.effective_rank,
                "ratio": self.ratio}


@dataclass
class RankResult:
    base: str
    datasets: list[str]
    encoders: tuple[str, ...]
    limit: int | None
    rows: list[RankRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _arrays(t: Any) -> list[np.ndarray]:
    """One encoder's output for one sample as float64 arrays of shape (..., C)."""
    import torch

    if isinstance(t, torch.Tensor):
        return [t.detach().to(torch.float64).cpu().numpy()]
    if isinstance(t, (list, tuple)):
        return [a for x in t for a in _arrays(x)]
    raise TypeError(f"encoder output of type {type(t).__name__}: expected a tensor or a list of tensors")


def _image_key(message: list[dict[str, Any]]) -> tuple[str, ...]:
    """The sample's images by content (two questions on one image share it), else by path."""
    out = []
    for m in message:
        if m["type"] != "image":
            continue
        p = Path(str(m["value"]))
        try:
            out.append(hashlib.sha1(p.read_bytes()).hexdigest())
        except OSError:
            out.append(str(p))
    return tuple(out)


def effective_ranks(base: BaseModelSpec, datasets: Sequence[str], *, limit: int | None = None,
                    model: Any = None, progress: bool = True,
                    on_dataset: Callable[[str], None] | None = None) -> RankResult:
    """Effective rank of every encoder of ``base`` per dataset and over all ``datasets``."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    res = RankResult(base.name, list(datasets), tuple(base.encoders), limit)
    if model is None:
        model = load_model(base, [Entry(base, ())])
    support = support_for(model)
    project = getattr(support, "project", None)
    stages = STAGES if callable(project) else STAGES[:1]
    if not callable(project):
        res.notes.append(f"{type(support).__name__} has no project() hook: projected features not ranked")
    total: dict[tuple[str, str], GramAccumulator] = {}
    for ds_name in datasets:
        dataset = _build_dataset(ds_name)
        if limit:
            dataset.data = dataset.data.iloc[:limit]
        model.set_dump_image(dataset.dump_image)
        acc: dict[tuple[str, str], GramAccumulator] = {}
        seen: set[tuple[str, ...]] = set()
        data = dataset.data
        for pos in tqdm(range(len(data)), disable=not progress, unit="sample", desc=f"rank {base.name}/{ds_name}"):
            message = build_message(model, dataset, data.iloc[pos])
            key = _image_key(message)
            if not key or key in seen:
                continue
            seen.add(key)
            inputs = support.prepare(model, message, ds_name)
            feats = support.encode(model, inputs, list(base.encoders))
            outs = {"fusion": feats}
            if "projected" in stages:
                outs["projected"] = project(model, inputs, feats)  # type: ignore[misc]
            for stage, by_enc in outs.items():
                for enc in base.encoders:
                    for a in _arrays(by_enc[enc]):
                        k = (enc, stage)
                        if k not in acc:
                            acc[k] = GramAccumulator(a.shape[-1])
                        acc[k].add(a, images=0)
                    acc[(enc, stage)].images += len(key)
        if not seen:
            res.notes.append(f"{ds_name}: no sample with an image; nothing ranked")
        for (enc, stage), g in acc.items():
            res.rows.append(RankRow(enc, stage, ds_name, g.images, g.rows, g.dim, g.effective_rank()))
            if (enc, stage) not in total:
                total[(enc, stage)] = GramAccumulator(g.dim)
            total[(enc, stage)].merge(g)
        if on_dataset is not None:
            on_dataset(ds_name)
    scope = "all: " + ", ".join(datasets)
    for (enc, stage), g in total.items():
        res.rows.append(RankRow(enc, stage, scope, g.images, g.rows, g.dim, g.effective_rank()))
    order = {e: i for i, e in enumerate(base.encoders)}
    res.rows.sort(key=lambda r: (STAGES.index(r.stage), order[r.encoder], r.scope.startswith("all: ")))
    res.seconds = time.perf_counter() - t0
    return res
