"""Analytic cost of a lattice evaluation at real model sizes: per-variant runs versus the sweep.

Why: the sweep's measured CPU speed-ups come from tiny models whose language
model costs almost nothing; on a GPU with a 7B language model every subset
still pays its own prefill, so the figure users plan GPU-hours with has to come
from the real architectures.  Inputs are data, each number with its source: the shared
``costdata.yaml`` beside this module (reference GPUs, question counts, towers and LLMs
several families use) merged with each family's ``model_wrappers/<family>/costdata.yaml``
(its bases' towers, LLM and prompt layout, and towers/LLMs only it uses); this module only
does the arithmetic:

* FLOPs: 2 x multiply-accumulates of matrix products, convolutions and the two
  attention products (``QK^T`` and ``AV``, causal half for the LLM);
  normalisation, activations and softmax are not counted.
* Time: a roofline per forward call, ``max(FLOPs / (peak * mfu), bytes /
  (bandwidth * mbu))``; bytes = the LLM's bf16 weights read once per forward plus
  the key/value cache read per decoding step.  Vision towers are taken as
  compute-bound (their weights are read once per image batch).
* Per-variant: one VLMEvalKit run per subset (batch 1): the kept towers, the
  connector, a prefill of the whole prompt, ``answer_tokens - 1`` decoding steps.
* Sweep: each tower some subset keeps once per sample, the connector per
  subset, one batched prefill over the subsets (weights read once), decoding at
  batch = subsets; with ``share_prefix`` the template text before the image
  (identical for every subset and sample) is prefilled once per dataset and its
  key/value cache reused by every subset of every sample.

* Token budgets (docs/tokens.md): a budget keeps ``k = ceil(image_tokens * keep / 100)``
  visual tokens per image, so ``r = images * (image_tokens - k)`` prompt tokens are removed
  (:func:`pruning`).  With ``n`` prompt tokens, ``L`` decoder layers, one layer's prefill
  ``f(m) = 2 P m + 2 d m (m + 1)`` (``P`` = matrix parameters per layer, ``d`` = hidden size;
  the causal attention term of :meth:`LLM.prefill_flops`) and the output head ``h = 2 d V``:

  - ``fusion``: the tokens never enter the LLM: prefill ``L f(n - r) + h``;
  - ``llm`` after layer ``K``: layers ``0..K-1`` see the whole prompt, layers ``K..`` the
    rest: prefill ``K f(n) + (L - K) f(n - r) + h``;
  - decoding step with ``c`` tokens before the new one: the same split of the layers, each
    attending to its own cache, ``2 P L + 4 d (s (c + 1) + (L - s)(c - r + 1)) + h`` FLOPs and
    ``(kv bytes per token and layer) x (s (c + 1) + (L - s)(c - r + 1))`` cache bytes read,
    ``s`` = the first pruned layer (0 for ``fusion``, ``K`` for ``llm``).

  Prefill saving = 1 - budget prefill / unpruned prefill.  The towers and the connector are
  unchanged (the connector runs on every token, the budget selects among its outputs); the
  token scoring (norms, an SVD of each encoder's T x C features, one attention row at layer
  ``K-1``) is not counted.  In the sweep, rows of one fusion budget prefill and decode as one
  batch; llm-stage rows run at batch 1 (the pruner handles one sequence); only unpruned rows
  share the template prefix.

Not modelled: model loading (per-variant runs load the model once per variant),
image pre-processing, Cambrian's in-LLM SVA layers, multi-image questions.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..tokens import TokenSpec

DATA_FILE = Path(__file__).with_name("costdata.yaml")
_WHERE = f"{DATA_FILE} and the families' model_wrappers/<family>/costdata.yaml"
BYTES = 2  # bf16 weights and key/value cache


class CostDataError(ValueError):
    """costdata.yaml lacks or mis-states something the plan needs."""


# --------------------------------------------------------------------------- FLOP formulas
def vit_flops(tokens: int, width: int, depth: int, mlp: int, mlp_mats: int = 2, patch: int = 16,
              window: int | None = None, window_tokens: int | None = None, window_layers: int = 0) -> float:
    """One image through a ViT: patch embedding, ``depth`` blocks (QKV+O = 4 w^2, MLP
    ``mlp_mats`` x w x mlp per token) and attention (4 x n x ctx x w per layer).  Windowed
    layers (SAM / ViTDet) partition the grid, padded to ``window_tokens``, into windows of
    ``window`` tokens before QKV: projections and attention run on the padded tokens."""
    embed = 2 * tokens * 3 * patch * patch * width
    mlp_part = depth * 2 * tokens * mlp_mats * width * mlp
    global_layers = depth - window_layers
    proj = global_layers * 2 * tokens * 4 * width * width
    attn = global_layers * 4 * tokens * tokens * width
    if window_layers:
        if not window or not window_tokens:
            raise CostDataError("a ViT with window_layers needs window and window_tokens")
        proj += window_layers * 2 * window_tokens * 4 * width * width
        attn += window_layers * 4 * window_tokens * window * width
    return float(embed + mlp_part + proj + attn)


def convnext_flops(input: int, depths: Sequence[int], widths: Sequence[int]) -> float:
    """One image through a ConvNeXt: 4x4/4 stem, 2x2/2 downsampling, blocks of a 7x7 depthwise
    convolution and a 4x MLP (2 x (49 c + 8 c^2) per position)."""
    if len(depths) != len(widths):
        raise CostDataError(f"convnext: {len(depths)} depths but {len(widths)} widths")
    side = input // 4
    total = 2 * side * side * 3 * 16 * widths[0]
    for s, (d, c) in enumerate(zip(depths, widths)):
        if s:
            side //= 2
            total += 2 * side * side * 4 * widths[s - 1] * c
        total += d * 2 * side * side * (49 * c + 8 * c * c)
    return float(total)


def tower_flops(spec: dict[str, Any], name: str = "?") -> float:
    kind = spec.get("kind")
    args = {k: v for k, v in spec.items() if k not in ("kind", "source", "check")}
    try:
        if kind == "vit":
            return vit_flops(**args)
        if kind == "convnext":
            return convnext_flops(**args)
        if kind == "flops":
            return float(args["flops"])
    except TypeError as exc:
        raise CostDataError(f"tower {name!r}: {exc}") from None
    raise CostDataError(f"tower {name!r}: unknown kind {kind!r} (expected vit, convnext or flops)")


@dataclass(frozen=True)
class LLM:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def linear_params(self) -> int:
        """Per-token matrix parameters of all blocks (q, k, v, o, gated MLP)."""
        d, kv = self.hidden, self.kv_heads * self.head_dim
        return self.layers * (2 * d * d + 2 * d * kv + 3 * d * self.intermediate)

    @property
    def weight_bytes(self) -> float:
        """Bytes read per forward: block matrices and the output head (bf16)."""
        return BYTES * (self.linear_params + self.vocab * self.hidden)

    @property
    def kv_bytes_per_token(self) -> float:
        return BYTES * 2 * self.layers * self.kv_heads * self.head_dim

    def prefill_flops(self, n: int, offset: int = 0, logits: bool = True) -> float:
        """``n`` new tokens after ``offset`` cached ones; causal attention counts only the
        visible keys; output head on the last token (``logits_to_keep=1`` as ``generate`` does)."""
        attn = 4 * self.layers * self.hidden * (n * offset + n * (n + 1) / 2)
        return 2 * self.linear_params * n + attn + (2 * self.hidden * self.vocab if logits else 0)

    def decode_step_flops(self, context: int) -> float:
        """One generated token for one row that sees ``context`` earlier tokens."""
        return 2 * self.linear_params + 4 * self.layers * self.hidden * (context + 1) + 2 * self.hidden * self.vocab

    def layer_prefill_flops(self, n: int) -> float:
        """One decoder layer on ``n`` tokens from position 0: ``f(n) = 2 P n + 2 d n (n + 1)``."""
        return 2 * (self.linear_params / self.layers) * n + 4 * self.hidden * n * (n + 1) / 2

    def pruned_prefill_flops(self, n: int, cut: "Pruning") -> float:
        """Prefill of an ``n``-token prompt whose ``cut.removed`` tokens are gone from layer
        ``cut.start`` on (module docstring); output head on the last token."""
        s, L = cut.start, self.layers
        return s * self.layer_prefill_flops(n) + (L - s) * self.layer_prefill_flops(n - cut.removed) \
            + 2 * self.hidden * self.vocab

    def attended(self, context: int, cut: "Pruning") -> int:
        """Cache entries (summed over layers) a decoding step with ``context`` earlier tokens attends to,
        its own new token included."""
        return cut.start * (context + 1) + (self.layers - cut.start) * (context - cut.removed + 1)

    def pruned_decode_step_flops(self, context: int, cut: "Pruning") -> float:
        """:meth:`decode_step_flops` with each layer attending to its own (possibly pruned) cache."""
        return 2 * self.linear_params + 4 * self.hidden * self.attended(context, cut) + 2 * self.hidden * self.vocab

    def pruned_kv_bytes(self, context: int, cut: "Pruning") -> float:
        """Key/value cache bytes a decoding step reads (every layer's cache, new token included)."""
        return self.kv_bytes_per_token / self.layers * self.attended(context, cut)


@dataclass(frozen=True)
class Pruning:
    """What a token budget does to the LLM's sequence: ``removed`` prompt tokens are absent from
    decoder layer ``start`` on (0: the fusion stage; K: the llm stage)."""

    removed: int = 0
    start: int = 0


@dataclass(frozen=True)
class GPU:
    name: str
    peak_tflops: float
    bandwidth_gbs: float
    memory_gb: float
    mfu: float
    mbu: float

    def seconds(self, flops: float, bytes_: float = 0.0) -> float:
        return max(flops / (self.peak_tflops * 1e12 * self.mfu), bytes_ / (self.bandwidth_gbs * 1e9 * self.mbu))


@dataclass(frozen=True)
class Dataset:
    name: str
    questions: int
    question_tokens: int
    answer_tokens: int


@dataclass(frozen=True)
class BaseCost:
    """One registered base at real size (see ``costdata.yaml``)."""

    name: str
    towers: dict[str, float]  # encoder -> FLOPs per image
    tower_names: dict[str, str]
    llm: LLM
    llm_name: str
    connector_in: int
    prefix_tokens: int
    image_tokens: int
    suffix_tokens: int
    images: int = 1

    def prompt_tokens(self, ds: Dataset) -> int:
        return self.prefix_tokens + self.images * self.image_tokens + ds.question_tokens + self.suffix_tokens

    def connector_flops(self) -> float:
        d = self.llm.hidden
        return 2.0 * self.images * self.image_tokens * (self.connector_in * d + d * d)

    def vision_flops(self, kept: Iterable[str]) -> float:
        return self.images * sum(self.towers[k] for k in kept)

    def visual_tokens(self, tokens: TokenSpec | None = None) -> int:
        """Visual tokens the LLM receives per sample: ``images x ceil(image_tokens x keep / 100)``."""
        per_image = self.image_tokens if tokens is None else tokens.budget(self.image_tokens)
        return self.images * per_image


def pruning(base: BaseCost, tokens: TokenSpec | None) -> Pruning:
    """The :class:`Pruning` of budget ``tokens`` on ``base`` (unpruned: nothing removed)."""
    if tokens is None:
        return Pruning()
    start = 0 if tokens.stage == "fusion" else int(tokens.layer)
    if not 0 <= start < base.llm.layers:
        raise CostDataError(f"base {base.name!r}: the llm stage after layer K={start} needs 1 <= K < "
                            f"{base.llm.layers} (its LLM's decoder layers)")
    return Pruning(base.visual_tokens() - base.visual_tokens(tokens), start)


@dataclass
class Phases:
    """FLOPs and seconds of one way of running, by phase."""

    flops: dict[str, float] = field(default_factory=lambda: dict(towers=0.0, connector=0.0, prefill=0.0, decode=0.0))
    seconds: dict[str, float] = field(default_factory=lambda: dict(towers=0.0, connector=0.0, prefill=0.0, decode=0.0))

    def add(self, other: "Phases", times: float = 1.0) -> None:
        for k in self.flops:
            self.flops[k] += times * other.flops[k]
            self.seconds[k] += times * other.seconds[k]

    @property
    def total_flops(self) -> float:
        return sum(self.flops.values())

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    def dominant(self) -> tuple[str, float]:
        k = max(self.seconds, key=self.seconds.get)
        return k, self.seconds[k] / self.total_seconds if self.total_seconds else 0.0


def _decode(base: BaseCost, gpu: GPU, ds: Dataset, rows: int, tokens: TokenSpec | None = None) -> tuple[float, float]:
    """(FLOPs, seconds) of ``answer_tokens - 1`` decoding steps at batch ``rows`` (every row
    generates the same number of tokens: answers of a sample are short and alike); with a
    budget, each layer's cache holds only what reached it (module docstring)."""
    t0 = base.prompt_tokens(ds)
    cut = pruning(base, tokens)
    flops = secs = 0.0
    for j in range(max(ds.answer_tokens - 1, 0)):
        if tokens is None:
            f = rows * base.llm.decode_step_flops(t0 + j)
            b = base.llm.weight_bytes + rows * base.llm.kv_bytes_per_token * (t0 + j + 1)
        else:
            f = rows * base.llm.pruned_decode_step_flops(t0 + j, cut)
            b = base.llm.weight_bytes + rows * base.llm.pruned_kv_bytes(t0 + j, cut)
        flops += f
        secs += gpu.seconds(f, b)
    return flops, secs


def _prefill(base: BaseCost, ds: Dataset, tokens: TokenSpec | None) -> float:
    """Prefill FLOPs of one row (batch 1, whole prompt), with the budget's pruning."""
    n = base.prompt_tokens(ds)
    if tokens is None:
        return base.llm.prefill_flops(n)
    return base.llm.pruned_prefill_flops(n, pruning(base, tokens))


def per_variant_sample(base: BaseCost, gpu: GPU, ds: Dataset, kept: Sequence[str],
                       tokens: TokenSpec | None = None) -> Phases:
    """One sample of one variant (``tokens``: its budget, None = unpruned) run on its own (batch 1)."""
    p = Phases()
    p.flops["towers"] = base.vision_flops(kept)
    p.seconds["towers"] = gpu.seconds(p.flops["towers"])
    p.flops["connector"] = base.connector_flops()
    p.seconds["connector"] = gpu.seconds(p.flops["connector"])
    p.flops["prefill"] = _prefill(base, ds, tokens)
    p.seconds["prefill"] = gpu.seconds(p.flops["prefill"], base.llm.weight_bytes)
    p.flops["decode"], p.seconds["decode"] = _decode(base, gpu, ds, 1, tokens)
    return p


def _budget_rows(base: BaseCost, gpu: GPU, ds: Dataset, tokens: Sequence[TokenSpec | None]) -> Phases:
    """The LLM side of a sample's budget rows in a sweep (module docstring): rows of one fusion
    budget as one batch, llm-stage rows at batch 1; no shared prefix."""
    p = Phases()
    groups: dict[TokenSpec, int] = {}
    for t in tokens:
        if t is not None:
            groups[t] = groups.get(t, 0) + 1
    for t, count in groups.items():
        batches = [count] if t.stage == "fusion" else [1] * count
        for rows in batches:
            f = rows * _prefill(base, ds, t)
            p.flops["prefill"] += f
            p.seconds["prefill"] += gpu.seconds(f, base.llm.weight_bytes)
            df, dsec = _decode(base, gpu, ds, rows, t)
            p.flops["decode"] += df
            p.seconds["decode"] += dsec
    return p


def sweep_sample(base: BaseCost, gpu: GPU, ds: Dataset, subsets: Sequence[Sequence[str]],
                 share_prefix: bool = False, tokens: Sequence[TokenSpec | None] | None = None) -> Phases:
    """One sample, every subset: towers once, connector per subset, one batched prefill, batched decode.

    ``tokens`` (one per subset, None = unpruned): rows with a budget share the towers and are
    costed by :func:`_budget_rows`; the rest as before."""
    if tokens is not None and any(t is not None for t in tokens):
        if len(tokens) != len(subsets):
            raise ValueError("one token budget (or None) per subset")
        plain = [k for k, t in zip(subsets, tokens) if t is None]
        p = sweep_sample(base, gpu, ds, plain, share_prefix) if plain else Phases()
        union = {k for kept in subsets for k in kept}
        p.flops["towers"] = base.vision_flops(union)
        p.seconds["towers"] = gpu.seconds(p.flops["towers"])
        n_budget = len(subsets) - len(plain)
        p.flops["connector"] += n_budget * base.connector_flops()
        p.seconds["connector"] = gpu.seconds(p.flops["connector"])
        p.add(_budget_rows(base, gpu, ds, tokens))
        return p
    s = len(subsets)
    union = {k for kept in subsets for k in kept}
    p = Phases()
    p.flops["towers"] = base.vision_flops(union)
    p.seconds["towers"] = gpu.seconds(p.flops["towers"])
    p.flops["connector"] = s * base.connector_flops()
    p.seconds["connector"] = gpu.seconds(p.flops["connector"])
    n = base.prompt_tokens(ds)
    if share_prefix and base.prefix_tokens:
        # the prefix (template text before the image) is the same for every sample: its cache is
        # computed once per dataset (see :func:`plan`), each subset prefills only the rest
        p.flops["prefill"] = s * base.llm.prefill_flops(n - base.prefix_tokens, offset=base.prefix_tokens)
        p.seconds["prefill"] = gpu.seconds(p.flops["prefill"], base.llm.weight_bytes)
    else:
        p.flops["prefill"] = s * base.llm.prefill_flops(n)
        p.seconds["prefill"] = gpu.seconds(p.flops["prefill"], base.llm.weight_bytes)
    p.flops["decode"], p.seconds["decode"] = _decode(base, gpu, ds, s)
    return p


@dataclass(frozen=True)
class VariantCost:
    """One variant run on its own (batch 1), per sample: question-weighted means over the datasets."""

    kept: tuple[str, ...]
    vision_flops: float
    connector_flops: float
    prefill_flops: float
    decode_flops: float
    seconds: float
    tokens: TokenSpec | None = None
    visual_tokens: int = 0
    """Visual tokens the LLM receives per sample (after the budget)."""

    @property
    def total_flops(self) -> float:
        return self.vision_flops + self.connector_flops + self.prefill_flops + self.decode_flops


def variant_costs(base: BaseCost, gpu: GPU, datasets: Sequence[Dataset], subsets: Sequence[Sequence[str]],
                  tokens: Sequence[TokenSpec | None] | None = None) -> list[VariantCost]:
    """:func:`per_variant_sample` of each subset (and its budget in ``tokens``, None = unpruned),
    averaged over ``datasets`` by question count."""
    n = sum(d.questions for d in datasets)
    if not n:
        raise CostDataError("no questions in the datasets given")
    tokens = list(tokens) if tokens is not None else [None] * len(subsets)
    if len(tokens) != len(subsets):
        raise ValueError("one token budget (or None) per subset")
    out = []
    for kept, t in zip(subsets, tokens):
        acc = Phases()
        for ds in datasets:
            acc.add(per_variant_sample(base, gpu, ds, kept, t), ds.questions / n)
        out.append(VariantCost(tuple(kept), acc.flops["towers"], acc.flops["connector"], acc.flops["prefill"],
                               acc.flops["decode"], acc.total_seconds, t, base.visual_tokens(t)))
    return out


@dataclass(frozen=True)
class BudgetSaving:
    """What one token budget saves on the full model, per sample (question-weighted over the datasets)."""

    tokens: TokenSpec
    visual_tokens: int
    removed: int
    prefill_flops: float
    prefill_saving: float
    """1 - budget prefill FLOPs / unpruned prefill FLOPs."""
    decode_saving: float
    seconds_saving: float
    """1 - predicted latency / unpruned latency (towers and connector included)."""


def budget_savings(base: BaseCost, gpu: GPU, datasets: Sequence[Dataset],
                   budgets: Sequence[TokenSpec]) -> list[BudgetSaving]:
    """Each budget's predicted saving on the full model (every encoder kept) against the unpruned model."""
    full = tuple(base.towers)
    ref, *rows = variant_costs(base, gpu, datasets, [full] * (1 + len(budgets)), [None, *budgets])
    return [BudgetSaving(t, r.visual_tokens, base.visual_tokens() - r.visual_tokens, r.prefill_flops,
                         1 - r.prefill_flops / ref.prefill_flops,
                         1 - r.decode_flops / ref.decode_flops if ref.decode_flops else 0.0,
                         1 - r.seconds / ref.seconds)
            for t, r in zip(budgets, rows)]


@dataclass
class Plan:
    base: BaseCost
    gpu: GPU
    datasets: list[Dataset]
    subsets: list[tuple[str, ...]]
    per_variant: Phases
    sweep: Phases
    sweep_shared: Phases
    decode_unbounded_s: float  # sweep decode seconds if batches were unbounded (weights read ~never)
    tokens: list[TokenSpec | None] = field(default_factory=list)
    """Each subset's token budget (None = unpruned); empty: the mask lattice only."""

    @property
    def questions(self) -> int:
        return sum(d.questions for d in self.datasets)

    @property
    def budgets(self) -> list[TokenSpec]:
        """The distinct budgets of the plan, in order of appearance."""
        return list(dict.fromkeys(t for t in self.tokens if t is not None))


def plan(base: BaseCost, gpu: GPU, datasets: Sequence[Dataset], subsets: Sequence[Sequence[str]],
         tokens: Sequence[TokenSpec | None] | None = None) -> Plan:
    """The lattice (``subsets``: kept encoders of each variant; ``tokens``: each one's budget, None
    = unpruned) over ``datasets``, three ways."""
    tok = list(tokens) if tokens is not None else [None] * len(subsets)
    if len(tok) != len(subsets):
        raise ValueError("one token budget (or None) per subset")
    pv, sw, sh = Phases(), Phases(), Phases()
    unbounded = 0.0
    for ds in datasets:
        for kept, t in zip(subsets, tok):
            pv.add(per_variant_sample(base, gpu, ds, kept, t), ds.questions)
        sw.add(sweep_sample(base, gpu, ds, subsets, tokens=tok), ds.questions)
        sh.add(sweep_sample(base, gpu, ds, subsets, share_prefix=True, tokens=tok), ds.questions)
        # (only unpruned rows share the prefix)
        pre = base.llm.prefill_flops(base.prefix_tokens, logits=False) \
            if base.prefix_tokens and any(t is None for t in tok) else 0.0
        sh.flops["prefill"] += pre
        sh.seconds["prefill"] += gpu.seconds(pre, base.llm.weight_bytes) if pre else 0.0
        # decode with the weight reads amortised away: only compute and the rows' own cache
        t0 = base.prompt_tokens(ds)
        for j in range(max(ds.answer_tokens - 1, 0)):
            if any(t is not None for t in tok):
                f = sum(base.llm.pruned_decode_step_flops(t0 + j, pruning(base, t)) if t is not None else
                        base.llm.decode_step_flops(t0 + j) for t in tok)
                b = sum(base.llm.pruned_kv_bytes(t0 + j, pruning(base, t)) if t is not None else
                        base.llm.kv_bytes_per_token * (t0 + j + 1) for t in tok)
            else:
                f = len(subsets) * base.llm.decode_step_flops(t0 + j)
                b = len(subsets) * base.llm.kv_bytes_per_token * (t0 + j + 1)
            unbounded += ds.questions * gpu.seconds(f, b)
    return Plan(base, gpu, list(datasets), [tuple(s) for s in subsets], pv, sw, sh, unbounded,
                tok if any(t is not None for t in tok) else [])


def lattice_flop_ratio(tower_flops_per_sample: dict[str, float], lm_flops_per_subset: float,
                       subsets: Sequence[Sequence[str]]) -> float:
    """Per-variant FLOPs / sweep FLOPs for one sample, from measured components: each variant pays
    its kept towers and the language side; the sweep pays each needed tower once and the language
    side per subset.  (The same arithmetic as :func:`plan`, for models described by measurements.)"""
    per_variant = sum(sum(tower_flops_per_sample[k] for k in kept) + lm_flops_per_subset for kept in subsets)
    union = {k for kept in subsets for k in kept}
    sweep = sum(tower_flops_per_sample[k] for k in union) + len(subsets) * lm_flops_per_subset
    return per_variant / sweep


# --------------------------------------------------------------------------- loading the data
FAMILY_FILE = "costdata.yaml"
MERGED = ("towers", "llms", "bases")
"""The sections a family's file may add to (a name defined twice is an error naming both files)."""


def _read(p: Any) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise CostDataError(f"cost data file {p} does not exist") from None
    except yaml.YAMLError as exc:
        raise CostDataError(f"cost data file {p} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise CostDataError(f"cost data file {p}: expected a mapping at the top")
    return data


def family_files() -> list[Any]:
    """Each family's ``costdata.yaml`` (families without one have no numbers to plan with)."""
    from ..families import folder, names

    return [f for f in (folder(n) / FAMILY_FILE for n in names()) if f.is_file()]


@functools.lru_cache(maxsize=4)
def load_data(path: str | None = None) -> dict[str, Any]:
    """``path`` alone when given; else the shared file merged with every family's."""
    p = Path(path) if path else DATA_FILE
    data = _read(p)
    if not path:
        data.setdefault("bases", {})
        origin = {(sec, name): p for sec in MERGED for name in (data.get(sec) or {})}
        for fp in family_files():
            fam = _read(fp)
            for sec in MERGED:
                part = fam.get(sec) or {}
                if not isinstance(part, dict):
                    raise CostDataError(f"{fp}: expected a mapping under {sec!r}")
                for name, value in part.items():
                    if (sec, name) in origin:
                        raise CostDataError(f"{sec} {name!r} is defined twice: in {origin[sec, name]} and {fp}")
                    origin[sec, name] = fp
                    data.setdefault(sec, {})[name] = value
    for key in ("gpus", "datasets", "towers", "llms", "bases"):
        if not isinstance(data.get(key), dict):
            raise CostDataError(f"{p}: expected a mapping under {key!r}")
    return data


def gpu_names(path: str | None = None) -> dict[str, str]:
    """Every name ``--gpu`` accepts (keys and their ``aliases``, lower-cased) -> the key."""
    data = load_data(path)["gpus"]
    out = {}
    for key, spec in data.items():
        for n in [key, *((spec or {}).get("aliases") or [])]:
            out[str(n).lower()] = key
    return out


def gpu(name: str, mfu: float | None = None, mbu: float | None = None, path: str | None = None) -> GPU:
    """Reference GPU ``name``: a key of ``gpus:`` or one of its aliases (``A100``, ``H100``, ``H200``), any case."""
    data = load_data(path)["gpus"]
    key = gpu_names(path).get(str(name).lower())
    if key is None:
        from ..validate import unknown_name

        valid = [n for k, spec in data.items() for n in [*((spec or {}).get("aliases") or []), k]]
        raise CostDataError(unknown_name("reference GPU", name, valid, hint=f"add one to {path or DATA_FILE}"))
    g = dict(data[key])
    if mfu is not None:
        g["mfu"] = mfu
    if mbu is not None:
        g["mbu"] = mbu
    return GPU(**{k: g[k] for k in ("name", "peak_tflops", "bandwidth_gbs", "memory_gb", "mfu", "mbu")})


def dataset(name: str, answer_tokens: int | None = None, path: str | None = None) -> Dataset:
    data = load_data(path)["datasets"]
    if name not in data:
        from ..validate import nearest

        near = nearest(name, data)
        raise CostDataError(f"no question count for dataset {name!r} in {path or DATA_FILE}"
                            + (f"; nearest: {', '.join(near)}" if near else "") + "; known: "
                            f"{', '.join(sorted(data))}. Add `{name}: {{questions: N, question_tokens: N, "
                            "answer_tokens: N, source: ...}` there")
    d = data[name]
    return Dataset(name, int(d["questions"]), int(d["question_tokens"]),
                   int(answer_tokens if answer_tokens is not None else d["answer_tokens"]))


def base_cost(name: str, encoders: Sequence[str] | None = None, path: str | None = None) -> BaseCost:
    """The architecture of base ``name``; ``encoders`` (the registry's order) must match the data's."""
    data = load_data(path)
    spec = data["bases"].get(name)
    if spec is None:
        raise CostDataError(f"no architecture numbers for base {name!r} in {path or _WHERE}: add an entry "
                            "under `bases:` of its family's costdata.yaml (towers per encoder, llm, connector_in, prefix/image/suffix tokens, "
                            "images) with the source of each number")
    towers = spec.get("towers") or {}
    if encoders is not None and list(towers) != list(encoders):
        raise CostDataError(f"base {name!r}: costdata.yaml lists towers {list(towers)} but the registry's encoders "
                            f"are {list(encoders)} (same names, same order expected)")
    flops = {}
    for enc, tname in towers.items():
        if tname not in data["towers"]:
            raise CostDataError(f"base {name!r}: encoder {enc!r} refers to unknown tower {tname!r}")
        flops[enc] = tower_flops(data["towers"][tname], tname)
    lname = spec.get("llm")
    if lname not in data["llms"]:
        raise CostDataError(f"base {name!r}: unknown llm {lname!r}; known: {', '.join(sorted(data['llms']))}")
    l = data["llms"][lname]
    llm = LLM(**{k: int(l[k]) for k in ("layers", "hidden", "intermediate", "heads", "kv_heads", "vocab")})
    try:
        return BaseCost(name, flops, dict(towers), llm, lname, int(spec["connector_in"]), int(spec["prefix_tokens"]),
                        int(spec["image_tokens"]), int(spec["suffix_tokens"]), int(spec.get("images", 1)))
    except KeyError as exc:
        raise CostDataError(f"base {name!r}: missing {exc.args[0]!r} in {path or _WHERE}") from None
