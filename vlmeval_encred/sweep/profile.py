"""Per-variant cost: vision FLOPs, total FLOPs per sample, latency, memory -- each relative to the full model.

* Vision FLOPs: each encoder's FLOPs are counted once on the full model through
  the family's :class:`~.protocol.SweepSupport` ``encode`` (the only
  family-specific piece needed); a variant's vision FLOPs are the sum over the
  encoders it keeps.  This is exact for masking that never runs a masked tower.
* Total FLOPs, latency, memory: the variant itself, loaded through
  ``vlmeval.config.supported_VLM`` as any run loads it, answering the same
  messages with ``model.generate`` (VLMEvalKit's call).  FLOPs come from
  ``torch.utils.flop_counter.FlopCounterMode`` (matmul/conv/attention FLOPs;
  element-wise ops are not counted) and include decoding, so they depend on how
  many tokens the variant generates.  Latency: median of ``repeats`` timed runs
  after ``warmup`` untimed ones.  Memory: resident parameter bytes of the
  variant (masked towers are released) and, on a GPU, peak allocated bytes
  during generation (``torch.cuda.max_memory_allocated``); on the CPU torch
  offers no peak counter, so that column is empty there.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from ..registry import BaseModelSpec, Entry


def synthetic_messages(n: int, folder: str) -> list[list[dict[str, str]]]:
    """``n`` messages with a seeded noise image and a fixed question (no dataset needed)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        path = os.path.join(folder, f"profile_{i}.png")
        Image.fromarray(rng.integers(0, 255, (336, 336, 3), dtype=np.uint8)).save(path)
        out.append([{"type": "image", "value": path},
                    {"type": "text", "value": "What is shown in the image? Answer briefly."}])
    return out


def _flops(fn: Any) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _param_bytes(wrapper: Any) -> int:
    model = getattr(wrapper, "model", None)
    if model is None or not hasattr(model, "parameters"):
        return 0
    return sum(p.numel() * p.element_size() for p in model.parameters() if not p.is_meta)


def encoder_flops(base: BaseModelSpec, messages: Sequence[list[dict[str, str]]]) -> dict[str, float]:
    """Mean FLOPs per sample of each encoder, counted on the full model."""
    import torch

    from .engine import load_model
    from .protocol import support_for

    full = load_model(base, [Entry(base, ())])
    support = support_for(full)
    totals = {e: 0 for e in base.encoders}
    with torch.inference_mode():
        for msg in messages:
            inputs = support.prepare(full, full.preproc_content(msg), None)
            for enc in base.encoders:
                totals[enc] += _flops(lambda: support.encode(full, inputs, [enc]))
    del full
    return {e: t / len(messages) for e, t in totals.items()}


def profile_variants(base: BaseModelSpec, entries: Sequence[Entry], messages: Sequence[list[dict[str, str]]],
                     repeats: int = 5, warmup: int = 1) -> list[dict[str, Any]]:
    """One row per entry (see the module docstring); the full model is always measured as reference."""
    import gc

    import torch
    from vlmeval.config import supported_VLM

    enc_flops = encoder_flops(base, messages)
    full = Entry(base, ())
    # the reference is the unpruned full model (a token-budget variant masks nothing either)
    todo = list(entries) if any(e.name == full.name for e in entries) else [full, *entries]
    rows = []
    for e in todo:
        model = supported_VLM[e.name]()
        cuda = torch.cuda.is_available()
        for _ in range(warmup):
            for msg in messages:
                model.generate(message=[dict(m) for m in msg], dataset=None)
        flops = sum(_flops(lambda: model.generate(message=[dict(m) for m in msg], dataset=None))
                    for msg in messages) / len(messages)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for msg in messages:
                model.generate(message=[dict(m) for m in msg], dataset=None)
            if cuda:
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) / len(messages))
        rows.append(dict(variant=e.name, masked=",".join(e.masked) or "-", kept=",".join(e.kept) or "-",
                         vision_flops=sum(enc_flops[k] for k in e.kept), total_flops=flops,
                         latency_ms=1000 * statistics.median(times), param_bytes=_param_bytes(model),
                         peak_bytes=torch.cuda.max_memory_allocated() if cuda else float("nan"),
                         device="cuda" if cuda else "cpu"))
        del model
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    ref = next(r for r in rows if r["variant"] == full.name)
    for r in rows:
        for k in ("vision_flops", "total_flops", "latency_ms", "param_bytes", "peak_bytes"):
            r[f"{k}_rel"] = r[k] / ref[k] if ref[k] else float("nan")
    want = {e.name for e in entries}
    return [r for r in rows if r["variant"] in want]


def _atomic(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_outputs(rows: list[dict[str, Any]], out_prefix: str | os.PathLike) -> dict[str, Path]:
    """``<prefix>.xlsx`` (openpyxl), ``<prefix>.csv`` and ``<prefix>.png``; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    prefix = Path(out_prefix)
    df = pd.DataFrame(rows)
    paths = {"xlsx": prefix.with_suffix(".xlsx"), "csv": prefix.with_suffix(".csv"),
             "png": prefix.with_suffix(".png")}
    _atomic(paths["xlsx"], lambda p: df.to_excel(p, index=False, engine="openpyxl", sheet_name="profile"))
    _atomic(paths["csv"], lambda p: df.to_csv(p, index=False))

    def fig(p: str) -> None:
        labels = [r["kept"] for r in rows]
        x = range(len(rows))
        w = 0.27
        f, ax = plt.subplots(figsize=(max(6, 0.45 * len(rows) + 2), 4))
        for i, (key, name) in enumerate([("vision_flops_rel", "vision FLOPs"), ("total_flops_rel", "total FLOPs"),
                                         ("latency_ms_rel", "latency")]):
            ax.bar([j + (i - 1) * w for j in x], [r[key] for r in rows], w, label=name)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xticks(list(x))
        ax.set_xticklabels(labels, rotation=70, ha="right", fontsize=7)
        ax.set_xlabel("encoders kept")
        ax.set_ylabel("relative to the full model")
        ax.set_title(f"cost per variant ({rows[0]['device'] if rows else ''})")
        ax.legend(fontsize=8)
        f.tight_layout()
        f.savefig(p, dpi=120, format="png")
        plt.close(f)

    _atomic(paths["png"], fig)
    return paths
