"""Greedy decoding of one sample's subsets as one batch, for families whose fusion ends in
``inputs_embeds`` of a transformers causal LM.  Used from a family's
``SweepSupport.fuse_and_generate``; it knows no family.

What it saves over ``generate(inputs_embeds=...)`` on the ``S`` rows (one per subset):

* **Shared prefix.**  The leading positions whose embeddings are equal in every
  row (the chat template's text before the image: the same for every subset)
  are run once, at batch 1, and their key/value cache is repeated to the ``S``
  rows; only the rest (image and question) is prefilled per subset.  The prefix
  cache is also kept for the next sample: if its prefix embeddings are equal
  (``torch.equal``), the prefix is not run again -- for a chat template's system
  prompt, that is once per dataset.
* **Finished rows leave the batch.**  A row that produced an end-of-sequence
  token is removed from the batch and from the cache (``generate`` would keep
  decoding it on padding until every row is done).

Why it is exact: causal attention makes a prefix position's keys and values
independent of what follows it, so computing them alone gives the cache a full
prefill would build; every row then sees the same token positions as a batch of
one.  Floating-point reduction order may differ with the matrix shapes, as
batching itself may; ``tests/test_sweep.py`` compares answers with VLMEvalKit's
own per-variant runs.

**Rows of several samples** (:func:`decode` with ``batch_tokens > 0``; the engine's
``--decode-batch-tokens``): consecutive requests share a batch of at most that many
prompt positions, padding included.  Their prompts differ in length, so each row is
left-padded *after* the prefix every row shares (before everything when there is
none), with an attention mask that hides the padding and explicit position ids that
give each row its own positions 0..T_i-1 and T_i, T_i+1... while decoding: in exact
arithmetic each row computes what it computes alone.  In floating point the padded,
larger matrices may round differently, so a near-tied argmax can flip; exactness
(``batch_tokens=0``) stays the default, and docs/sweeps.md counts the changed answers.

Counters of what was saved go to the :class:`DecodeStats` made current by
:func:`collect` (the engine opens one per dataset and reports it).
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import functools
import inspect
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

if TYPE_CHECKING:  # torch is imported where used: the engine (and `encred status`) import this module
    import torch


@dataclass
class DecodeStats:
    """What :func:`greedy_subsets` did (summed over calls)."""

    calls: int = 0
    rows: int = 0
    prompt_tokens: int = 0  # per row: the prompt length (what each row would prefill without sharing)
    prefix_tokens: int = 0  # per call: the shared prefix length found
    prefix_runs: int = 0  # prefix forwards actually run (cache misses)
    prefilled_tokens: int = 0  # token positions prefilled, all rows and prefix runs together
    decode_row_steps: int = 0  # rows x decoding steps actually run
    rows_dropped_early: int = 0  # rows that finished before the last decoding step of their batch
    padding_tokens: int = 0  # padding positions prefilled (rows of unequal length in one batch)
    shared_batches: int = 0  # decode batches holding rows of several requests (``decode(batch_tokens > 0)``)


_CURRENT: contextvars.ContextVar[DecodeStats | None] = contextvars.ContextVar("encred_decode_stats", default=None)


@contextlib.contextmanager
def collect() -> Iterator[DecodeStats]:
    """Make a fresh :class:`DecodeStats` current for the block (the engine: one per dataset)."""
    stats = DecodeStats()
    token = _CURRENT.set(stats)
    try:
        yield stats
    finally:
        _CURRENT.reset(token)


# per language model: (prefix embeddings, their batch-1 cache) of the last sample
_PREFIX: "weakref.WeakKeyDictionary[Any, tuple[Any, Any]]" = weakref.WeakKeyDictionary()


def shared_prefix_length(embeds: torch.Tensor) -> int:
    """Number of leading positions whose embedding is bit-identical in every row of ``embeds`` (S, T, d)."""
    if embeds.shape[0] == 1:
        return embeds.shape[1]
    same = (embeds == embeds[:1]).all(dim=2).all(dim=0)  # (T,)
    diff = (~same).nonzero()
    return int(diff[0]) if len(diff) else embeds.shape[1]


@functools.lru_cache(maxsize=32)
def _kw_names(cls: type) -> tuple[str, str | None]:
    """(cache keyword, last-logits keyword) of ``cls.forward`` across transformers versions:
    ``cache`` / ``past_key_values``; ``logits_to_keep`` (>= 4.50) / ``num_logits_to_keep`` / none."""
    params = inspect.signature(cls.forward).parameters
    cache = "cache" if "cache" in params else "past_key_values"
    keep = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
    return cache, keep


def _forward(lm: Any, embeds: torch.Tensor, length: int, cache: Any, mask: torch.Tensor | None = None,
             positions: torch.Tensor | None = None) -> Any:
    """``lm`` on ``embeds`` after ``length - embeds.shape[1]`` cached positions; logits of the last one.

    ``mask`` (rows, length) and ``positions`` (rows, embeds.shape[1]) are given for padded
    batches only: without padding the all-ones mask and the model's default positions are
    what a batch of one gets, so the exact path passes neither."""
    import torch

    cache_kw, keep_kw = _kw_names(type(lm))
    if mask is None:
        mask = torch.ones((embeds.shape[0], length), dtype=torch.long, device=embeds.device)
    kw: dict[str, Any] = {cache_kw: cache, "use_cache": True, "attention_mask": mask}
    if positions is not None:
        kw["position_ids"] = positions
    if keep_kw:
        kw[keep_kw] = 1
    return lm(inputs_embeds=embeds, **kw)


def _out_cache(out: Any) -> Any:
    """The output's cache: ``cache`` (transformers >= 5.x; ``past_key_values`` there is a warning alias)
    or ``past_key_values`` (4.x)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _prefix_cache(lm: Any, prefix: torch.Tensor, stats: DecodeStats | None) -> Any:
    """Batch-1 key/value cache of ``prefix`` (1, P, d): the previous sample's if its prefix was equal."""
    import torch

    hit = _PREFIX.get(lm)
    if hit is not None and hit[0].shape == prefix.shape and torch.equal(hit[0], prefix):
        return hit[1]
    out = _forward(lm, prefix, prefix.shape[1], None)
    cache = _out_cache(out)
    _PREFIX[lm] = (prefix.clone(), cache)
    if stats is not None:
        stats.prefix_runs += 1
        stats.prefilled_tokens += prefix.shape[1]
    return cache


def greedy_subsets(lm: Any, embeds: torch.Tensor, embed_tokens: Callable[[torch.Tensor], torch.Tensor],
                   eos_ids: Sequence[int], max_new_tokens: int, share_prefix: bool = True) -> list[list[int]]:
    """Greedy answers (token ids, end-of-sequence token included when produced) of the rows of
    ``embeds`` (S, T, d), each as ``lm.generate(inputs_embeds=row, do_sample=False)`` would give
    at batch 1 without padding.  ``lm``: a transformers causal LM (``inputs_embeds``, a
    ``DynamicCache`` as ``cache``/``past_key_values``, optionally ``logits_to_keep``); ``embed_tokens``: ids (n, 1) -> embeddings (n, 1, d).
    ``share_prefix=False`` prefills every row in full (for comparisons)."""
    import torch

    s = embeds.shape[0]
    with torch.inference_mode():
        return _greedy_rows(lm, list(embeds.unbind(0)), embed_tokens, [set(int(e) for e in eos_ids)] * s,
                            [int(max_new_tokens)] * s, share_prefix)


def _common_prefix(rows: Sequence["torch.Tensor"], upto: int) -> int:
    """Leading positions (at most ``upto``) whose embedding is bit-identical in every row."""
    import torch

    return shared_prefix_length(torch.stack([r[:upto] for r in rows]))


def _left_pad(rows: Sequence["torch.Tensor"], p: int, longest: int) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
    """Rows of unequal length after a shared prefix of ``p`` positions, left-padded after the prefix:
    row i is ``[prefix p][padding longest - T_i][own T_i - p]``.  Returns the part to prefill
    (R, longest - p, d), the attention mask over every position (R, longest; 0 on padding) and
    position ids of the prefilled part (R, longest - p): each row's own positions p..T_i-1,
    exactly those of a batch of one, so padding changes nothing but the masked keys."""
    import torch

    r, d = len(rows), rows[0].shape[-1]
    dev = rows[0].device
    rest = rows[0].new_zeros(r, longest - p, d)
    mask = torch.zeros(r, longest, dtype=torch.long, device=dev)
    pos = torch.full((r, longest - p), p, dtype=torch.long, device=dev)  # padding: any position, masked
    mask[:, :p] = 1
    for i, row in enumerate(rows):
        pad = longest - row.shape[0]
        rest[i, pad:] = row[p:]
        mask[i, p + pad:] = 1
        pos[i, pad:] = torch.arange(p, row.shape[0], device=dev)
    return rest, mask, pos


def _greedy_rows(lm: Any, rows: Sequence["torch.Tensor"], embed_tokens: Callable[["torch.Tensor"], "torch.Tensor"],
                 eos: Sequence[set[int]], max_new: Sequence[int], share_prefix: bool) -> list[list[int]]:
    """Greedy ids of each row (T_i, d) of ``rows``, row i stopping at a token of ``eos[i]`` or after
    ``max_new[i]`` tokens.  Equal lengths: one unpadded batch (the exact path).  Unequal lengths:
    left-padded after the shared prefix (:func:`_left_pad`), mask and position ids explicit, so each
    row sees the positions of a batch of one (equal in exact arithmetic; floating-point results may
    differ in the last bits, as batching itself may)."""
    import torch

    stats = _CURRENT.get()
    n = len(rows)
    lengths = [int(r.shape[0]) for r in rows]
    longest, shortest = max(lengths), min(lengths)
    dev = rows[0].device
    # one row alone shows no shared prefix (everything would look shared)
    p = _common_prefix(rows, shortest) if share_prefix and n > 1 else 0
    p = min(p, shortest - 1)  # the last prompt position must be run per row: it gives the first answer token
    if p > 0:
        cache = copy.deepcopy(_prefix_cache(lm, rows[0][None, :p], stats))
        if n > 1:
            cache.batch_repeat_interleave(n)
    else:
        cache = None
    if longest == shortest:
        rest, mask, positions = torch.stack([r[p:] for r in rows]), None, None
    else:
        rest, mask, positions = _left_pad(rows, p, longest)
    out = _forward(lm, rest, longest, cache, mask, positions)
    cache = _out_cache(out)
    if stats is not None:
        stats.calls += 1
        stats.rows += n
        stats.prompt_tokens += sum(lengths)
        stats.prefix_tokens += p
        stats.prefilled_tokens += n * (longest - p)
        stats.padding_tokens += n * longest - sum(lengths)
    answers: list[list[int]] = [[] for _ in range(n)]
    live = list(range(n))
    nxt_pos = torch.tensor(lengths, device=dev)  # next position of each live row (padded batches)
    logits = out.logits[:, -1]
    length = longest
    for _ in range(max(max_new)):
        nxt = torch.argmax(logits, dim=-1).tolist()
        keep = []
        for i, tok in enumerate(nxt):
            row = live[i]
            answers[row].append(tok)
            if tok not in eos[row] and len(answers[row]) < max_new[row]:
                keep.append(i)
        if not keep:
            break
        if len(keep) < len(live):  # finished rows leave the batch and the cache
            if stats is not None:
                stats.rows_dropped_early += len(live) - len(keep)
            sel = torch.tensor(keep, device=dev)
            cache.batch_select_indices(sel)
            if mask is not None:
                mask, nxt_pos = mask[sel], nxt_pos[sel]
        live = [live[i] for i in keep]
        ids = torch.tensor([[nxt[i]] for i in keep], device=dev)
        length += 1
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(len(keep), 1)], dim=1)
            positions, nxt_pos = nxt_pos[:, None], nxt_pos + 1
        out = _forward(lm, embed_tokens(ids), length, cache, mask, positions)
        cache = _out_cache(out)
        logits = out.logits[:, -1]
        if stats is not None:
            stats.decode_row_steps += len(live)
    return answers


@dataclass
class DecodeRequest:
    """One sample's subsets, fused and ready for greedy decoding.

    What a family's optional ``SweepSupport.fuse`` returns instead of decoding itself, so
    that the engine decides how rows are batched (one sample's subsets together, by
    default; rows of several samples together with a token budget, see :func:`decode`).
    A family builds it only where the wrapper's generation is plain greedy decoding of
    ``inputs_embeds`` (``do_sample=False``, one beam, no repetition penalty); otherwise it
    keeps its own ``fuse_and_generate``.
    """

    lm: Any
    """A transformers causal LM that accepts ``inputs_embeds`` and a dynamic cache."""
    embeds: "torch.Tensor"
    """(S, T, d): one row per subset, in the order of ``features_per_subset``, unpadded."""
    embed_tokens: Callable[["torch.Tensor"], "torch.Tensor"]
    """Token ids (n, 1) -> embeddings (n, 1, d), as the model embeds generated tokens."""
    eos_ids: Sequence[int]
    max_new_tokens: int
    finish: Callable[[list[list[int]]], list[str]]
    """Generated ids per row (end-of-sequence token included when produced) -> the answer
    strings, post-processed exactly as the wrapper's ``generate_inner`` post-processes."""
    lm_kwargs: dict[str, Any] = field(default_factory=dict)
    """Reserved: extra keyword arguments every forward of ``lm`` needs (none so far; a request
    with any is decoded on its own, never batched with others)."""

    def __post_init__(self) -> None:
        shape = tuple(getattr(self.embeds, "shape", ()))
        if len(shape) != 3 or shape[0] < 1 or shape[1] < 1:
            raise ValueError(f"DecodeRequest.embeds must be (subsets >= 1, prompt positions >= 1, hidden), "
                             f"got shape {shape}")
        if int(self.max_new_tokens) < 1:
            raise ValueError(f"DecodeRequest.max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def rows(self) -> int:
        return int(self.embeds.shape[0])

    @property
    def prompt_len(self) -> int:
        return int(self.embeds.shape[1])


def padded_tokens(requests: Sequence[DecodeRequest]) -> int:
    """Prompt positions one decode batch of ``requests`` prefills, padding included:
    all their rows times the longest prompt (what ``batch_tokens`` bounds)."""
    if not requests:
        return 0
    return sum(r.rows for r in requests) * max(r.prompt_len for r in requests)


def _joinable(a: DecodeRequest, b: DecodeRequest) -> bool:
    """Whether rows of ``a`` and ``b`` can share one batch: the same language model and token
    embedding, embeddings of one dtype, device and width, and no extra forward arguments."""
    return (a.lm is b.lm and (a.embed_tokens is b.embed_tokens or a.embed_tokens == b.embed_tokens)
            and a.embeds.dtype == b.embeds.dtype and a.embeds.device == b.embeds.device
            and a.embeds.shape[2] == b.embeds.shape[2] and not a.lm_kwargs and not b.lm_kwargs)


def plan_batches(requests: Sequence[DecodeRequest], batch_tokens: int) -> list[list[int]]:
    """Indices of ``requests`` per decode batch: consecutive requests that can share a batch
    (:func:`_joinable`) while :func:`padded_tokens` stays within ``batch_tokens``; a request
    larger than the budget alone gets a batch of its own.  ``batch_tokens=0``: one per request."""
    groups: list[list[int]] = []
    for i, r in enumerate(requests):
        cur = groups[-1] if groups else None
        if (batch_tokens and cur and _joinable(requests[cur[0]], r)
                and padded_tokens([requests[j] for j in cur] + [r]) <= batch_tokens):
            cur.append(i)
        else:
            groups.append([i])
    return groups


def decode(requests: Sequence[DecodeRequest], batch_tokens: int = 0, share_prefix: bool = True) -> list[list[str]]:
    """Answers of every request (one list of strings per request, one string per row).

    ``batch_tokens=0`` (the default, exact): each request is decoded on its own, as
    :func:`greedy_subsets` decodes it, so every row sees the positions of a batch of one
    without padding.  ``batch_tokens > 0``: consecutive requests share decode batches of at
    most that many prompt positions, padding included (:func:`plan_batches`); rows of unequal
    length are left-padded after the prefix all rows share (before everything if none), with
    an attention mask and explicit position ids (:func:`_left_pad`): equal answers in exact
    arithmetic, not always bit-identical logits (docs/sweeps.md counts the answers that change).
    The engine's ``--decode-batch-tokens``.
    """
    import torch

    if int(batch_tokens) < 0:
        raise ValueError(f"batch_tokens must be >= 0 (0 = each request on its own), got {batch_tokens}")
    out: list[list[str]] = [[] for _ in requests]
    stats = _CURRENT.get()
    for group in plan_batches(requests, int(batch_tokens)):
        reqs = [requests[i] for i in group]
        rows, eos, max_new = [], [], []
        for r in reqs:
            rows.extend(r.embeds.unbind(0))
            eos.extend([set(int(e) for e in r.eos_ids)] * r.rows)
            max_new.extend([int(r.max_new_tokens)] * r.rows)
        with torch.inference_mode():
            ids = _greedy_rows(reqs[0].lm, rows, reqs[0].embed_tokens, eos, max_new, share_prefix)
        if stats is not None and len(reqs) > 1:
            stats.shared_batches += 1
        start = 0
        for i, r in zip(group, reqs):
            answers = r.finish(ids[start:start + r.rows])
            if len(answers) != r.rows:
                raise ValueError(f"DecodeRequest.finish returned {len(answers)} answers for {r.rows} rows")
            out[i] = answers
            start += r.rows
    return out
