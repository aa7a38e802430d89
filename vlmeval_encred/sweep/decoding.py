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


def _forward(lm: Any, embeds: torch.Tensor, length: int, cache: Any) -> Any:
    """``lm`` on ``embeds`` after ``length - embeds.shape[1]`` cached positions; logits of the last one."""
    import torch

    cache_kw, keep_kw = _kw_names(type(lm))
    kw: dict[str, Any] = {cache_kw: cache, "use_cache": True,
                          "attention_mask": torch.ones((embeds.shape[0], length), dtype=torch.long,
                                                       device=embeds.device)}
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

    with torch.inference_mode():
        return _greedy(lm, embeds, embed_tokens, eos_ids, max_new_tokens, share_prefix)


def _greedy(lm: Any, embeds: "torch.Tensor", embed_tokens: Callable[["torch.Tensor"], "torch.Tensor"],
            eos_ids: Sequence[int], max_new_tokens: int, share_prefix: bool) -> list[list[int]]:
    import torch

    stats = _CURRENT.get()
    s, t = embeds.shape[:2]
    eos = set(int(e) for e in eos_ids)
    dev = embeds.device
    # one row alone shows no shared prefix (everything would look shared)
    p = shared_prefix_length(embeds) if share_prefix and s > 1 else 0
    p = min(p, t - 1)  # the last prompt position must be run per row: it gives the first answer token
    if p > 0:
        cache = copy.deepcopy(_prefix_cache(lm, embeds[:1, :p], stats))
        if s > 1:
            cache.batch_repeat_interleave(s)
    else:
        cache = None
    out = _forward(lm, embeds[:, p:], t, cache)
    cache = _out_cache(out)
    if stats is not None:
        stats.calls += 1
        stats.rows += s
        stats.prompt_tokens += s * t
        stats.prefix_tokens += p
        stats.prefilled_tokens += s * (t - p)
    answers: list[list[int]] = [[] for _ in range(s)]
    live = list(range(s))
    logits = out.logits[:, -1]
    length = t
    for step in range(max_new_tokens):
        nxt = torch.argmax(logits, dim=-1).tolist()
        keep = []
        for i, tok in enumerate(nxt):
            answers[live[i]].append(tok)
            if tok not in eos:
                keep.append(i)
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(live):  # finished rows leave the batch and the cache
            if stats is not None:
                stats.rows_dropped_early += len(live) - len(keep)
            cache.batch_select_indices(torch.tensor(keep, device=dev))
        live = [live[i] for i in keep]
        ids = torch.tensor([[nxt[i]] for i in keep], device=dev)
        length += 1
        out = _forward(lm, embed_tokens(ids), length, cache)
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
    """Reserved: extra keyword arguments every forward of ``lm`` needs (none so far)."""


def decode(requests: Sequence[DecodeRequest], batch_tokens: int = 0, share_prefix: bool = True) -> list[list[str]]:
    """Answers of every request (one list of strings per request, one string per row).

    ``batch_tokens=0`` (the default, exact): each request is decoded on its own by
    :func:`greedy_subsets`, so every row sees the positions of a batch of one.
    ``batch_tokens > 0``: rows of several requests may share one decode batch of at most
    that many prompt tokens (padding included); see the engine's ``--decode-batch-tokens``.
    """
    if batch_tokens:
        raise NotImplementedError("cross-sample decode batches are not implemented yet")
    return [r.finish(greedy_subsets(r.lm, r.embeds, r.embed_tokens, r.eos_ids, r.max_new_tokens,
                                    share_prefix=share_prefix))
            for r in requests]
