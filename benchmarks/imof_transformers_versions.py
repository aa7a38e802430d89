"""The MMVP fork's tiny I-MoF model under two transformers versions: how far apart are the outputs?

The fork pins transformers 4.31; the tested recipe ``imof`` runs it under 4.44 (ms-vlmeval does
not import under 4.31).  Run this script once in each environment (same seeds, so the same random
weights), then once more with ``--compare`` in either::

    bash scripts/env.sh --env imof python benchmarks/imof_transformers_versions.py OUT_DIR
    <venv with transformers==4.31.0 tokenizers==0.13.3 huggingface_hub<1 sentencepiece, this package
     installed --no-deps>/bin/python benchmarks/imof_transformers_versions.py OUT_DIR
    python benchmarks/imof_transformers_versions.py OUT_DIR --compare

Each run also runs the real-code self-test (all subsets x zero/drop) and prints its lines, so the
adapter is checked under the authors' pin too.  Prints: float32 logits max |diff|, whether greedy
generations are equal, float16 logits max |diff|.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path


def record(out_dir: Path) -> None:
    import torch
    import transformers

    from vlmeval_encred.realcode.checks import run_selftest
    from vlmeval_encred.model_wrappers.imof.selftest import SELFTEST

    work = Path(tempfile.mkdtemp())
    print(SELFTEST.import_upstream())
    model = SELFTEST.build(work)
    logits, gen = SELFTEST.run(model)
    ids, attn, images = SELFTEST.inputs()
    with torch.no_grad():
        half = model.half()(input_ids=ids, attention_mask=attn, images=images.half()).logits.float()
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"logits": logits, "gen": gen, "fp16_logits": half}, out_dir / f"{transformers.__version__}.pt")
    for r in run_selftest(SELFTEST, work / "selftest"):
        print(r.line())


def compare(out_dir: Path) -> None:
    import torch

    runs = {p.stem: torch.load(p) for p in sorted(out_dir.glob("*.pt"))}
    if len(runs) != 2:
        raise SystemExit(f"{out_dir}: expected two runs (one per transformers version), found {sorted(runs)}")
    (va, a), (vb, b) = runs.items()
    print(f"transformers {va} vs {vb} (tiny random I-MoF, CPU)")
    print(f"  float32 logits max |diff| {(a['logits'] - b['logits']).abs().max().item():.3g} "
          f"(largest |logit| {b['logits'].abs().max().item():.3g})")
    print(f"  greedy generations equal: {torch.equal(a['gen'], b['gen'])}")
    print(f"  float16 logits max |diff| {(a['fp16_logits'] - b['fp16_logits']).abs().max().item():.3g}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    (compare if "--compare" in sys.argv else record)(Path(sys.argv[1]))
