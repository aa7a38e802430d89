"""Train the demo model on the CPU: ``python -m vlmeval_encred.demo.train --out DIR [--steps N]``.

The planted structure comes from two things: what each encoder can see (see
``model``: only ``hires`` resolves the digits, ``hires`` is colour-blind,
``colour`` has no spatial information), and *encoder dropout* during training
with the same zero semantics that masking uses at evaluation:

* General and Vision samples zero ``lowres``, ``hires`` and ``colour`` (each
  independently, p = 0.3), so the model learns to answer from whichever
  encoder that carries the information is left: masking one member of the
  redundant pair (``lowres``/``colour`` for colour questions) costs nothing,
  masking both leaves no colour information at all (chance).
* OCR samples zero ``lowres`` and ``colour`` (p = 0.3) and ``hires`` rarely
  (p = 0.1), so nothing but ``hires`` is ever a route to the digit.
* Counting questions come in two training pools.  In one, ``colour`` is always
  zeroed and the images have random colours: the model must count from
  ``lowres``/``hires``.  In the other, ``colour`` and ``lowres`` are always
  present and 90 % of the images carry a shortcut: their colour follows their
  count (``data.SPURIOUS_COLOUR``).  ``colour`` cannot see where or how many
  shapes there are (a normalised hue histogram of one-colour images), but it
  sees the shortcut, so whenever it is present the model leans on it.  The
  benchmark's images have random colours: there the shortcut only misleads, and
  masking ``colour`` helps (the planted harmful encoder, CUR(colour, Vision) < 0).
  With the shortcut active, ``lowres`` is a second witness of the count next to
  ``hires``: masking it lets the shortcut win more often, so its CUR on counting
  is positive although, with ``colour`` masked, it adds nothing (a conditional
  effect, which is what CUR measures; see docs/demo.md).

  The shortcut rate sets the size of the harm, steeply (docs/demo.md has the
  runs): with ``lowres`` dropped at 0.3 in the shortcut pool, 0.6 gave -2.5 %
  (interval not clear of zero), 0.9 -4.4 %, 1.0 (no conflicting training images)
  -38 % with the full model under 80 % on counting; 0.9 with ``lowres`` always
  present (these defaults) gives -9.4 %.

An auxiliary linear probe (answer letter from the mean visual embedding, weight
decaying to 0 over the first half of the steps, not saved) gives the towers a
gradient from the first step; without it the digit features take far longer to
appear, because a random LM passes almost no signal back.

Training data come from the same generators as the benchmark, with other seeds.
Deterministic: one seed fixes data, initialisation, dropout draws and batches.
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import data
from .model import EncredTinyModel, build_model, mcq_prompt

TRAIN_SEED = 1
EVAL_SEED = data.TEST_SEED

KINDS = tuple(d.kind for d in data.DATASETS)
SHORTCUT = "VisionShortcut"
"""Training-only pool of counting questions that are always seen *with* ``colour``."""
DROP_P: dict[str, dict[str, float]] = {
    "General": {"lowres": 0.3, "hires": 0.3, "colour": 0.3},
    "OCR": {"lowres": 0.3, "hires": 0.1, "colour": 0.3},
    "Vision": {"lowres": 0.3, "hires": 0.3, "colour": 1.0},
    SHORTCUT: {"lowres": 0.0, "hires": 0.3, "colour": 0.0},
}

SHORTCUT_RATE = 0.9
"""Share of the shortcut pool's images whose colour follows their count (``data.SPURIOUS_COLOUR``)."""
AUX_FRACTION = 0.5
"""Share of the steps with the auxiliary probe loss (its weight decays linearly to 0)."""


@dataclass
class Batchable:
    """Pre-tokenised samples of one split as tensors (ragged ids padded per batch)."""

    ids: list[list[int]]
    answer_ids: torch.Tensor
    pixels: torch.Tensor  # uint8 (N, 3, H, W)
    kind: np.ndarray
    answers: list[str]


def encode(model: EncredTinyModel, tok, samples: list[data.Sample]) -> Batchable:
    ids, ans, pix, kinds = [], [], [], []
    for s in samples:
        ids.append(model.build_inputs(tok, mcq_prompt(s.question, s.options)))
        ans.append(tok.convert_tokens_to_ids(s.answer))
        pix.append(np.asarray(s.image.convert("RGB"), dtype=np.uint8))
        kinds.append(s.kind)
    pixels = torch.from_numpy(np.stack(pix)).permute(0, 3, 1, 2).contiguous()
    return Batchable(ids, torch.tensor(ans), pixels, np.array(kinds), [s.answer for s in samples])


def collate(b: Batchable, idx: np.ndarray, pad_id: int, eos_id: int, with_answer: bool):
    """Right-padded ids (+ answer letter and </s> when training), mask, labels, last positions."""
    seqs = [b.ids[i] + ([int(b.answer_ids[i]), eos_id] if with_answer else []) for i in idx]
    n = max(map(len, seqs))
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    labels = torch.full((len(seqs), n), -100, dtype=torch.long)
    last = torch.zeros(len(seqs), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = torch.tensor(s)
        mask[r, :len(s)] = 1
        if with_answer:
            labels[r, len(s) - 2:len(s)] = torch.tensor(s[-2:])
        last[r] = len(s) - 1
    pixels = b.pixels[torch.as_tensor(idx)].float() / 255.0
    return ids, mask, labels, last, pixels


def dropout_keep(kinds: np.ndarray, names: list[str], gen: torch.Generator) -> torch.Tensor:
    p = torch.tensor([[DROP_P[k][n] for n in names] for k in kinds])
    return (torch.rand(p.shape, generator=gen) >= p).float()


@torch.inference_mode()
def evaluate_subsets(model: EncredTinyModel, tok, b: Batchable, batch: int = 200) -> dict[tuple[str, ...], dict[str, float]]:
    """Accuracy (%) per kind for every subset of zero-masked encoders (first greedy token)."""
    model.eval()
    names = model.encoder_names
    out: dict[tuple[str, ...], dict[str, float]] = {}
    for k in range(len(names) + 1):
        for masked in itertools.combinations(names, k):
            hits = np.zeros(len(b.ids), dtype=bool)
            for start in range(0, len(b.ids), batch):
                idx = np.arange(start, min(start + batch, len(b.ids)))
                ids, mask, _, last, pixels = collate(b, idx, tok.pad_token_id, tok.eos_token_id, False)
                keep = torch.tensor([[0.0 if n in masked else 1.0 for n in names]] * len(idx))
                logits = model(ids, pixels, attention_mask=mask, keep=keep).logits
                pred = logits[torch.arange(len(idx)), last].argmax(-1)
                hits[idx] = (pred == b.answer_ids[idx]).numpy()
            out[masked] = {kind: 100.0 * hits[b.kind == kind].mean() for kind in KINDS}
    model.train()
    return out


def format_table(res: dict[tuple[str, ...], dict[str, float]]) -> str:
    lines = [f"{'masked':<22}" + "".join(f"{k:>9}" for k in KINDS)]
    for masked, acc in res.items():
        lines.append(f"{','.join(masked) or '-':<22}" + "".join(f"{acc[k]:9.1f}" for k in KINDS))
    return "\n".join(lines)


def train(out: Path | None, steps: int = 1500, batch_size: int = 48, n_train: int = 2000,
          n_eval: int = 200, lr: float = 3e-3, seed: int = 0, threads: int = 2, log_every: int = 100,
          quiet: bool = False, encoders: Sequence[str] | None = None) -> tuple[EncredTinyModel, object, dict]:
    """Train and (if ``out``) save; returns the model, tokenizer and the eval table.

    ``encoders``: train with only these towers; the others are zeroed at every step, exactly
    as masking zeroes them at evaluation (their projector columns never see a non-zero
    input).  Everything else -- data, seed, steps, dropout of the kept towers -- is unchanged,
    which is what the masking-versus-retraining comparison needs.
    """
    # Importing VLMEvalKit switches autograd off process-wide; training must not depend on
    # whether something imported it first.
    with torch.enable_grad():
        return _train(out, steps, batch_size, n_train, n_eval, lr, seed, threads, log_every, quiet, encoders)


def _train(out: Path | None, steps: int, batch_size: int, n_train: int, n_eval: int, lr: float, seed: int,
           threads: int, log_every: int, quiet: bool,
           encoders: Sequence[str] | None = None) -> tuple[EncredTinyModel, object, dict]:
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    random.seed(seed)
    np.random.seed(seed)
    model, tok = build_model(seed)
    only = None
    if encoders is not None:
        bad = [e for e in encoders if e not in model.encoder_names]
        if bad or not encoders:
            raise ValueError(f"encoders {list(encoders)}: expected a non-empty subset of {model.encoder_names}")
        only = torch.tensor([[1.0 if n in encoders else 0.0 for n in model.encoder_names]])
    samples = [s for kind in KINDS for s in data.generate(kind, n_train, TRAIN_SEED + seed)]
    shortcut = data.generate("Vision", n_train, TRAIN_SEED + seed + 10_000, spurious=SHORTCUT_RATE)
    for s in shortcut:
        s.kind = SHORTCUT
    train_b = encode(model, tok, samples + shortcut)
    eval_b = encode(model, tok, [s for kind in KINDS for s in data.generate(kind, n_eval, EVAL_SEED)])
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    say(f"data ready in {time.perf_counter() - t0:.1f}s: {len(train_b.ids)} train, {len(eval_b.ids)} eval")

    # Auxiliary probe (training only, not saved): answer letter from the mean visual embedding.
    # It gives the towers a direct gradient from step one; without it the random LM passes
    # almost no signal back and the glyph features take thousands of steps to appear.
    width = int(model.config.text_config["hidden_size"])
    probe = torch.nn.Linear(width, len(data.LETTERS))
    letter_index = {tok.convert_tokens_to_ids(c): i for i, c in enumerate(data.LETTERS)}
    opt = torch.optim.AdamW([*model.parameters(), *probe.parameters()], lr=lr, betas=(0.9, 0.98),
                            weight_decay=0.01)
    warm = max(1, min(100, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))))
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    aux_steps = max(1, int(steps * AUX_FRACTION))
    model.train()
    running = 0.0
    for step in range(1, steps + 1):
        idx = rng.choice(len(train_b.ids), size=batch_size, replace=False)
        ids, mask, labels, _, pixels = collate(train_b, idx, tok.pad_token_id, tok.eos_token_id, True)
        keep = dropout_keep(train_b.kind[idx], model.encoder_names, gen)
        if only is not None:
            keep = keep * only
        if step <= aux_steps:
            visual = model.image_embeddings(pixels, keep)
            embeds = model.language_model.get_input_embeddings()(ids)
            t = model.config.n_image_tokens
            embeds = torch.cat([embeds[:, :1], visual, embeds[:, 1 + t:]], dim=1)
            loss = model.language_model(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss
            target = torch.tensor([letter_index[int(a)] for a in train_b.answer_ids[idx]])
            weight = 1.0 - (step - 1) / aux_steps
            loss = loss + weight * F.cross_entropy(probe(visual.mean(1)), target)
        else:
            loss = model(ids, pixels, attention_mask=mask, labels=labels, keep=keep).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running = 0.9 * running + 0.1 * loss.item() if step > 1 else loss.item()
        if log_every and step % log_every == 0:
            say(f"step {step:5d}/{steps}  loss {running:.4f}  lr {sched.get_last_lr()[0]:.2e}  "
                f"{time.perf_counter() - t0:6.1f}s")
    model.eval()
    table = evaluate_subsets(model, tok, eval_b)
    say(format_table(table))
    if out is not None:
        model.save_pretrained(out, tok)
        say(f"saved to {out} ({sum(f.stat().st_size for f in Path(out).iterdir() if f.is_file()) / 1e6:.2f} MB)"
            f" after {time.perf_counter() - t0:.1f}s")
    return model, tok, table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vlmeval_encred.demo.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=48)
    p.add_argument("--n-train", type=int, default=2000, help="training samples per category")
    p.add_argument("--n-eval", type=int, default=200, help="held-out samples per category for the table")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--encoders", help="comma-separated towers to train with (default: all); the others "
                                      "are zeroed at every step")
    a = p.parse_args(argv)
    encs = [e.strip() for e in a.encoders.split(",") if e.strip()] if a.encoders else None
    train(Path(a.out), a.steps, a.batch_size, a.n_train, a.n_eval, a.lr, a.seed, a.threads, encoders=encs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
