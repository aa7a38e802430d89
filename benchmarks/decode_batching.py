"""How many answers cross-sample decode batches change, and whether the cached decoder equals per-variant runs.  Prints counts.

``encred sweep --decode-batch-tokens N`` decodes rows of several consecutive samples in one
batch, left-padded with an attention mask and explicit position ids: the same answers in
exact arithmetic, but padded batches run other matrix shapes, so a near-tied argmax can
flip.  This script fuses every sample of every dataset once (``SweepSupport.fuse``) and
decodes the same requests with :func:`vlmeval_encred.sweep.decoding.decode` at
``batch_tokens = 0`` (the exact default) and at each ``--budgets`` value, and counts the
answers that differ from the exact default.  With ``--reference`` (default on) it also runs
each variant's own ``generate_inner`` on every sample -- what a per-variant VLMEvalKit run
answers -- and counts how often the exact default differs from it (for the demo model,
whose ``generate_inner`` decodes without a key/value cache while ``decode`` uses one).

Models (CPU, fp32):
* ``encred_tiny``: the trained demo model on the three demo datasets (``--demo-samples`` per
  category, default all 300 of ``encred demo``), 8 variants;
* ``concat5_standin`` (tests/standins/concat5.py): five towers, 32 variants, on
  ``--standin-samples`` random-noise images with questions of varying length (so that batches
  are padded).

Usage: python benchmarks/decode_batching.py [--budgets 256 2048 16384] [--demo-samples 300]
       [--standin-samples 64] [--models encred_tiny concat5_standin] [--no-reference]
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

STANDIN_DS = "EncredDecodeBatch_MCQ"
FILLERS = ("", " Look carefully.", " Look at the whole image carefully.", " Take your time and look at the colours.",
           " Answer with one letter; look at the image and its colours carefully before answering.")


def write_standin_tsv(path: Path, n: int, seed: int = 0) -> None:
    """``n`` MCQ rows: random-noise images (answers depend on the image) and questions of five lengths."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
        rows.append(dict(index=i, image=base64.b64encode(buf.getvalue()).decode(),
                         question="What colour is the image?" + FILLERS[i % len(FILLERS)],
                         A="red", B="green", C="blue", D="yellow", answer="ABCD"[i % 4], category="colour"))
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)


def fuse_all(base, entries, datasets):
    """(requests, (dataset, message) per request) for every sample: each tower once, every subset fused."""
    from vlmeval_encred.sweep.engine import _build_dataset, build_message, load_model
    from vlmeval_encred.sweep.protocol import support_for

    model = load_model(base, entries)
    support = support_for(model)
    reqs, msgs = [], []
    for ds in datasets:
        dataset = _build_dataset(ds)
        model.set_dump_image(dataset.dump_image)
        for pos in range(len(dataset.data)):
            message = build_message(model, dataset, dataset.data.iloc[pos])
            inputs = support.prepare(model, message, ds)
            feats = support.encode(model, inputs, list(base.encoders))
            per = [{x: (feats[x] if x in e.kept else None) for x in base.encoders} for e in entries]
            reqs.append(support.fuse(model, inputs, per, base.modes[0]))
            msgs.append((ds, message))
    return reqs, msgs


def per_variant(base, entries, msgs):
    """Each variant's own ``generate_inner`` on every message: [request][entry] -> answer."""
    from vlmeval_encred.sweep.engine import _build_dataset, load_model

    dumps = {ds: _build_dataset(ds).dump_image for ds in {d for d, _ in msgs}}
    out = [[None] * len(entries) for _ in msgs]
    for j, e in enumerate(entries):
        model = load_model(base, [e])
        for i, (ds, message) in enumerate(msgs):
            model.set_dump_image(dumps[ds])
            out[i][j] = model.generate_inner(message, ds)
        del model
    return out


def changed(a, b) -> int:
    return sum(x != y for ra, rb in zip(a, b) for x, y in zip(ra, rb))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", type=int, nargs="+", default=[256, 2048, 16384])
    ap.add_argument("--demo-samples", type=int, default=None, help="per demo category (default: encred demo's)")
    ap.add_argument("--standin-samples", type=int, default=64)
    ap.add_argument("--models", nargs="+", default=["encred_tiny", "concat5_standin"])
    ap.add_argument("--no-reference", action="store_true", help="skip the per-variant generate_inner runs")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared, loaded machine more threads spin against each other)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(max(1, args.threads))
    tmp = Path(tempfile.mkdtemp(prefix="encred_decbatch_"))
    lmu = tmp / "LMUData"
    lmu.mkdir()
    from vlmeval_encred.demo import data

    demo = data.write_datasets(lmu, samples_per_category=args.demo_samples or data.DEFAULT_SAMPLES)
    write_standin_tsv(lmu / f"{STANDIN_DS}.tsv", args.standin_samples)
    os.environ.update(LMUData=str(lmu), HF_HUB_OFFLINE="1")
    from standins import concat5

    concat5.register()
    import vlmeval.config  # noqa: F401

    from vlmeval_encred.registry import get_base
    from vlmeval_encred.sweep.decoding import collect, decode
    from vlmeval_encred.sweep.selection import select_entries

    print("CPU, fp32; answers compared string by string")
    for name in args.models:
        base = get_base(name)
        entries = select_entries(base, "all")
        datasets = [d.name for d in demo] if name == "encred_tiny" else [STANDIN_DS]
        t = time.perf_counter()
        reqs, msgs = fuse_all(base, entries, datasets)
        lengths = sorted({r.prompt_len for r in reqs})
        n_ans = sum(r.rows for r in reqs)
        print(f"\n{name}: {len(reqs)} samples x {len(entries)} variants = {n_ans} answers "
              f"({', '.join(datasets)}); prompt lengths {lengths[0]}-{lengths[-1]} positions, "
              f"{reqs[0].rows * lengths[-1]} per sample at most (fused in {time.perf_counter() - t:.1f} s)")
        t = time.perf_counter()
        exact = decode(reqs)
        print(f"  batch_tokens 0 (exact default)   {time.perf_counter() - t:6.1f} s")
        for b in args.budgets:
            t = time.perf_counter()
            with collect() as st:
                got = decode(reqs, batch_tokens=b)
            print(f"  batch_tokens {b:<6}  changed {changed(exact, got):5d} / {n_ans}   "
                  f"{st.calls} decode batches ({st.shared_batches} with rows of several samples), "
                  f"{st.padding_tokens} padding positions of {st.prefilled_tokens} prefilled   "
                  f"{time.perf_counter() - t:6.1f} s")
        if not args.no_reference:
            t = time.perf_counter()
            ref = per_variant(base, entries, msgs)
            print(f"  exact default vs each variant's generate_inner: changed {changed(ref, exact)} / {n_ans} "
                  f"({time.perf_counter() - t:.1f} s)")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
