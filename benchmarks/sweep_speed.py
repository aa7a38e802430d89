"""Sweep vs one-by-one VLMEvalKit inference on the CPU, arms alternated and repeated.  Prints figures.

**These CPU figures say nothing about a GPU run of a real checkpoint** (use
`encred profile --plan` for that): the models here are tiny, so per-call Python overhead
dominates, not the language model's arithmetic.

Why alternated and repeated: one pass of each arm in sequence is at the mercy of whatever
else the machine runs (the same script once gave 9.9x on a quiet machine and 2.0x on a
loaded one).  Here every repetition runs every arm once, each repetition in another order
(rotated), and each arm is reported by its **minimum** (the run least disturbed) with its
spread ((max - min) / min); the ratios are taken between minima.  Size ``--samples`` so that
every arm takes seconds, not fractions of one.

Arms, per model (the same questions, the same already built models; every arm writes into a
fresh work dir, so VLMEvalKit never reuses a file):

* ``per-variant``: VLMEvalKit's own ``infer_data_job`` once per variant, each variant's model
  built once beforehand (builds untimed: this is inference only; 32 separate ``python run.py``
  processes would also pay ~14 s of ``import vlmeval`` each);
* ``sweep, generate`` ("before"): ``encred sweep``'s engine, every encoder once per image, each
  sample's subsets decoded by one ``lm.generate(inputs_embeds=...)`` call (what the families did
  before the shared-prefix decoder; built here from the family's ``fuse``);
* ``sweep, shared prefix`` ("after", the default): the same, decoded by
  :func:`vlmeval_encred.sweep.decoding.decode` -- template prefix run once and its cache reused,
  finished rows dropped;
* ``sweep, batches N``: the same with ``--decode-batch-tokens N`` (rows of several samples in one
  decode batch).

Also printed: the cost model's FLOP ratio from measured components, and whether every arm's
answers equal the per-variant run's.

Models (CPU, fp32): ``concat5_standin`` (tests/standins/concat5.py: five towers with Eagle-X5-like
vision-FLOP shares, a 30-token template before the image, 32 variants) and ``encred_tiny`` (the
trained demo model, 8 variants), on ``--samples`` MCQ questions of five lengths with random-noise
images (benchmarks/decode_batching.py's, so cross-sample batches are padded).

Usage: python benchmarks/sweep_speed.py [--samples 64] [--repeats 3] [--batch-tokens 16384]
       [--models concat5_standin encred_tiny]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


class GenerateDecoding:
    """A SweepSupport that decodes each sample's fused subsets with one ``lm.generate`` call (the
    "before" arm): prepare/encode/fuse are the family's own, only the decoding differs."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def prepare(self, wrapper: Any, message: Any, dataset: Any) -> Any:
        return self.inner.prepare(wrapper, message, dataset)

    def encode(self, wrapper: Any, inputs: Any, encoders: Any) -> Any:
        return self.inner.encode(wrapper, inputs, encoders)

    def fuse_and_generate(self, wrapper: Any, inputs: Any, features_per_subset: Any, mask_mode: str) -> list[str]:
        import torch

        req = self.inner.fuse(wrapper, inputs, features_per_subset, mask_mode)
        eos = list(req.eos_ids)
        with torch.inference_mode():
            out = req.lm.generate(inputs_embeds=req.embeds, attention_mask=torch.ones(req.embeds.shape[:2],
                                                                                        dtype=torch.long),
                                  max_new_tokens=req.max_new_tokens, do_sample=False, num_beams=1,
                                  eos_token_id=eos, pad_token_id=eos[0])
        return req.finish(out.tolist())


def lm_side_flops(base, model, dataset_name: str) -> float:
    """FLOPs of fuse_and_generate for one subset with every tower masked, on the dataset's first sample."""
    import torch

    from vlmeval_encred.sweep.engine import _build_dataset, build_message
    from vlmeval_encred.sweep.profile import _flops
    from vlmeval_encred.sweep.protocol import support_for

    support = support_for(model)
    dataset = _build_dataset(dataset_name)
    model.set_dump_image(dataset.dump_image)
    inputs = support.prepare(model, build_message(model, dataset, dataset.data.iloc[0]), dataset_name)
    with torch.inference_mode():
        return float(_flops(lambda: support.fuse_and_generate(model, inputs, [{x: None for x in base.encoders}],
                                                              base.modes[0])))


def make_arms(base, entries, ds: str, batch_tokens: int) -> tuple[dict[str, Callable[[Path], None]], Any]:
    """(arm name -> fn(work dir), the sweep's model); every model the arms use is built here, once."""
    from vlmeval.config import supported_VLM
    from vlmeval.dataset import build_dataset
    from vlmeval.inference import infer_data_job

    from vlmeval_encred.sweep.engine import load_model, run_sweep
    from vlmeval_encred.sweep.protocol import support_for

    models = {e.name: supported_VLM[e.name]() for e in entries}
    sweep_model = load_model(base, entries)
    support = support_for(sweep_model)
    klass = type(sweep_model)

    def per_variant(work: Path) -> None:
        for e in entries:
            (work / e.name).mkdir(parents=True, exist_ok=True)
            infer_data_job(models[e.name], work_dir=str(work / e.name), model_name=e.name, dataset=build_dataset(ds))

    def sweep(tokens: int = 0, before: bool = False) -> Callable[[Path], None]:
        def run(work: Path) -> None:
            own = klass.__dict__.get("sweep_support")
            if before:
                klass.sweep_support = GenerateDecoding(support)
            try:
                run_sweep(base, entries, [ds], str(work), progress=False, model=sweep_model,
                          decode_batch_tokens=tokens)
            finally:
                if own is None:
                    del klass.sweep_support
                else:
                    klass.sweep_support = own
        return run

    arms = {"per-variant": per_variant}
    if not callable(getattr(support, "fuse", None)):  # the family decodes itself: one sweep arm
        arms["sweep (family's own decoding)"] = sweep()
        return arms, sweep_model
    arms["sweep, generate (before)"] = sweep(before=True)
    arms["sweep, shared prefix (after)"] = sweep()
    arms[f"sweep, batches {batch_tokens}"] = sweep(tokens=batch_tokens)
    return arms, sweep_model


def answers(work: Path, entries, ds: str) -> dict[str, list[str]]:
    from vlmeval.smp import load

    out = {}
    for e in entries:
        f = next(iter(sorted((work / e.name).rglob(f"{e.name}_{ds}.xlsx"))), None)
        out[e.name] = [] if f is None else [str(x) for x in load(str(f))["prediction"]]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-tokens", type=int, default=16384, help="--decode-batch-tokens of the last arm")
    ap.add_argument("--models", nargs="+", default=["concat5_standin", "encred_tiny"])
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared, loaded machine more threads spin against each other)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(max(1, args.threads))
    if args.samples < 1 or args.repeats < 1 or args.batch_tokens < 1:
        ap.error("--samples, --repeats and --batch-tokens must be >= 1")
    tmp = Path(tempfile.mkdtemp(prefix="encred_bench_"))
    from decode_batching import write_standin_tsv

    lmu = tmp / "LMUData"
    lmu.mkdir()
    ds = "EncredBench_MCQ"
    write_standin_tsv(lmu / f"{ds}.tsv", n=args.samples)  # noise images, questions of five lengths
    os.environ.update(LMUData=str(lmu), PRED_FORMAT="xlsx", HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    from standins import concat5

    concat5.register()
    import vlmeval.config  # noqa: F401

    from vlmeval_encred.registry import get_base
    from vlmeval_encred.sweep.costmodel import lattice_flop_ratio
    from vlmeval_encred.sweep.profile import encoder_flops, synthetic_messages
    from vlmeval_encred.sweep.selection import select_entries

    print(f"import vlmeval (paid once here; each separate run.py process pays it again): "
          f"{time.perf_counter() - t0:.1f} s")
    print(f"CPU figures of tiny models: they would mislead about a GPU run of a real checkpoint "
          f"(see `encred profile --plan`). Load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs.")
    for name in args.models:
        base = get_base(name)
        entries = select_entries(base, "all")
        try:
            enc = encoder_flops(base, synthetic_messages(1, str(tmp)))
        except Exception as exc:  # e.g. demo checkpoint not installed
            print(f"\n{name}: skipped ({type(exc).__name__}: {exc})")
            continue
        arms, sweep_model = make_arms(base, entries, ds, args.batch_tokens)
        lm = lm_side_flops(base, sweep_model, ds)
        predicted = lattice_flop_ratio(enc, lm, [e.kept for e in entries])
        names = list(arms)
        times: dict[str, list[float]] = {a: [] for a in names}
        agree: dict[str, tuple[int, int]] = {}
        ref = None
        for r in range(args.repeats):
            order = names[r % len(names):] + names[:r % len(names)]  # each arm leads once per len(names) repeats
            for a in order:
                work = tmp / f"{name}_{r}_{names.index(a)}"
                t = time.perf_counter()
                arms[a](work)
                times[a].append(time.perf_counter() - t)
                if r == 0:
                    got = answers(work, entries, ds)
                    if a == "per-variant":
                        ref = got
                    agree[a] = got
                shutil.rmtree(work, ignore_errors=True)
        print(f"\n{name}: {len(base.encoders)} encoders, {len(entries)} variants, {args.samples} samples, "
              f"{args.repeats} repetitions, arms alternated (load average now {os.getloadavg()[0]:.1f})")
        print(f"  {'arm':32s} {'min s':>8s} {'median s':>9s} {'spread':>7s} {'per-variant / arm':>18s}  "
              f"answers equal to per-variant")
        base_min = min(times["per-variant"])
        for a in names:
            ts = times[a]
            same = sum(x == y for v in ref for x, y in zip(ref[v], agree[a][v]))
            total = sum(len(ref[v]) for v in ref)
            print(f"  {a:32s} {min(ts):8.2f} {statistics.median(ts):9.2f} {(max(ts) - min(ts)) / min(ts):7.0%} "
                  f"{base_min / min(ts):17.2f}x  {same}/{total}")
        print(f"  predicted by FLOPs (cost model from measured components): {predicted:.2f}x")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
