"""Evaluate a limited sweep's predictions where ``run.py`` cannot (a VLMEvalKit without ``--limit``).

``python -m vlmeval_encred.sweep.limited_eval --model V... --data D... --work-dir W --limit N [--judge J]``

For each (variant, dataset): VLMEvalKit's own ``build_dataset(D)``, its data cut to the first N
rows (what ``run.py --limit N`` does where it exists), and ``dataset.evaluate(prediction, **judge
kwargs)`` on the prediction file ``run.py`` would take from ``W``.  It never builds a model: a
prediction that misses any of the N samples (or holds a failed answer) is reported and skipped,
and the exit status is 1.  Evaluation outputs land beside the prediction, as ``run.py`` puts them.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vlmeval_encred.sweep.limited_eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", required=True)
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--work-dir", required=True, help="the limited sweep's work dir (<work-dir>/encred_limit<N>)")
    p.add_argument("--limit", type=int, required=True)
    p.add_argument("--judge", default="exact_matching",
                   help="judge model passed to dataset.evaluate (default exact_matching: no API needed)")
    p.add_argument("--api-nproc", type=int, default=4)
    args = p.parse_args(argv)

    from vlmeval.dataset import build_dataset

    from . import predfiles

    bad = 0
    for ds_name in args.data:
        for v in args.model:
            dataset = build_dataset(ds_name)
            if dataset is None:
                print(f"{v} x {ds_name}: VLMEvalKit could not build dataset {ds_name!r}", file=sys.stderr)
                bad += 1
                continue
            dataset.data = dataset.data.iloc[:args.limit]
            indices = list(dataset.data["index"])
            path = predfiles.find_pred_file(args.work_dir, v, ds_name)
            if path is None or not predfiles.is_complete(path, indices):
                print(f"{v} x {ds_name}: {'no' if path is None else 'an incomplete'} prediction of the first "
                      f"{len(indices)} samples under {predfiles.model_dir(args.work_dir, v)}; not evaluated "
                      "(run the limited sweep again to finish it)", file=sys.stderr)
                bad += 1
                continue
            result = dataset.evaluate(path, model=args.judge, nproc=args.api_nproc)
            print(f"{v} x {ds_name} (first {len(indices)} samples, {path}):\n{result}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
