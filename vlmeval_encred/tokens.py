"""Training-free visual-token budgets beside the encoder masks (issue 19; docs/tokens.md).

A token-budget variant keeps ``keep`` percent of an image's visual tokens and drops the
rest, at one of two stages:

``fusion`` (default)
    Before the language model.  Each visual token position ``t`` gets an importance from
    every unmasked encoder ``e``: ``s_e(t)`` (an attention signal where the encoder has one,
    e.g. the [CLS]->patch attention of a ViT's last layer, otherwise the L2 norm of the
    token's features at the fusion point), normalised per encoder to a distribution
    ``p_e(t) = s_e(t) / sum_u s_e(u)`` and combined with weights from each encoder's
    effective rank on that image, ``w_e = erank(F_e) / sum_f erank(F_f)``
    (:mod:`vlmeval_encred.report.effrank`, ``F_e`` the encoder's tokens x channels features):
    ``I(t) = sum_e w_e p_e(t)``.  The ``k = ceil(T * keep / 100)`` positions of largest
    ``I`` (ties: lower position first) are kept, in their original order, at their
    original positions.  Families that keep encoders as separate token groups split
    ``k`` across encoders by the same weights (:func:`split_budget`).
``llm``
    Inside the language model, after its first ``K`` decoder layers (name suffix
    ``_llm<K>``; ``_llm`` is the base's default, 2 unless its catalog says otherwise).
    During prefill, layer ``K-1``'s attention from the last prompt token to every visual
    token (softmax over all prompt keys, mean over heads) scores the visual tokens; the
    ``k`` best are kept, and layers ``K..`` run on the shorter sequence: hidden states,
    rotary position embeddings (original positions), position ids and any attention mask
    are sliced (:class:`LlmPruner`), so those layers' KV cache holds only kept tokens.

Everything above the ``# --- torch`` line is free of torch imports: the registry uses
:class:`TokenSpec` and the grammar while ``encred models`` must stay instant.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .masking import MaskError

STAGES: dict[str, str] = {
    "fusion": "before the LLM: rank-weighted per-encoder importance at the fusion point",
    "llm": "after LLM layer K: attention from the last prompt token; later layers see kept tokens only",
}
DEFAULT_STAGE = "fusion"
DEFAULT_LLM_LAYER = 2
REGISTERED_KEEPS: tuple[int, ...] = (25, 50, 75)
"""Keep percentages registered in VLMEvalKit up front; any other ``keepNN`` (1..100) is
parsed and registered on first lookup (``vlmeval_plugin.GuardedModels``)."""
KEEP_SEP = "_keep"
TOKEN_SUFFIX_RE = re.compile(r"_keep(?P<keep>[0-9]+)(?:_(?P<stage>[a-z]+?)(?P<layer>[0-9]*))?$")
"""``<...>_keep<NN>[_<stage>[<K>]]`` at the end of a model name."""
RESERVED_ENCODER_RE = re.compile(r"^(keep[0-9]+|fusion[0-9]*|llm[0-9]*)$")


class TokenError(MaskError):
    """A token budget cannot be applied to this model (stage, layer, sequence layout...)."""


@dataclass(frozen=True)
class TokenSpec:
    """How many visual tokens to keep, and where."""

    keep: int
    """Percent of each image's visual tokens kept, 1..100."""
    stage: str = DEFAULT_STAGE
    layer: int | None = None
    """``llm`` stage: prune after this many decoder layers (K >= 1); None for ``fusion``."""
    adaptive: bool = False
    """``llm`` stage only: scale the keep fraction by the prompt's attention spread (see
    :func:`adaptive_fraction`); a loader keyword (``tokens={"adaptive": True, ...}``), not a name."""

    def __post_init__(self) -> None:
        if isinstance(self.keep, bool) or not isinstance(self.keep, int) or not 1 <= self.keep <= 100:
            raise TokenError(f"keep must be an integer percentage 1..100, got {self.keep!r}")
        if self.stage not in STAGES:
            raise TokenError(f"unknown token stage {self.stage!r}; stages: {', '.join(STAGES)}")
        if self.stage == "llm":
            if self.layer is None or isinstance(self.layer, bool) or int(self.layer) < 1:
                raise TokenError(f"the llm stage prunes after layer K >= 1, got K={self.layer!r}")
            object.__setattr__(self, "layer", int(self.layer))
        elif self.layer is not None:
            raise TokenError("a layer is given only for the llm stage")
        if self.adaptive and self.stage != "llm":
            raise TokenError("the prompt-adaptive ratio is defined for the llm stage only")

    def suffix(self, default_layer: int = DEFAULT_LLM_LAYER) -> str:
        """The canonical name suffix: ``_keep25``, ``_keep25_llm`` (default K), ``_keep25_llm3``."""
        s = f"{KEEP_SEP}{self.keep}"
        if self.stage == "llm":
            s += "_llm" + ("" if self.layer == default_layer else str(self.layer))
        return s

    def as_kwargs(self) -> dict[str, Any]:
        d: dict[str, Any] = {"keep": self.keep, "stage": self.stage}
        if self.layer is not None:
            d["layer"] = self.layer
        if self.adaptive:
            d["adaptive"] = True
        return d

    @classmethod
    def from_kwargs(cls, value: Any, default_layer: int = DEFAULT_LLM_LAYER) -> "TokenSpec | None":
        """``None``, a TokenSpec, or the dict :meth:`as_kwargs` gives (a loader keyword)."""
        if value is None or isinstance(value, TokenSpec):
            return value
        if not isinstance(value, Mapping):
            raise TokenError(f"tokens= takes a mapping like {{'keep': 25, 'stage': 'llm'}}, got {value!r}")
        unknown = set(value) - {"keep", "stage", "layer", "adaptive"}
        if unknown:
            raise TokenError(f"tokens= has unknown keys {sorted(unknown)}; valid: keep, stage, layer, adaptive")
        stage = value.get("stage", DEFAULT_STAGE)
        layer = value.get("layer", default_layer if stage == "llm" else None)
        return cls(value["keep"], stage, layer, bool(value.get("adaptive", False)))

    def budget(self, n: int) -> int:
        """Tokens kept out of ``n``: ``ceil(n * keep / 100)``, at least 1 (exact integer arithmetic)."""
        if n <= 0:
            return 0
        return min(n, max(1, -(-n * self.keep // 100)))


def split_token_suffix(name: str) -> tuple[str, str | None]:
    """``'x_mask_sam_keep25_llm'`` -> ``('x_mask_sam', '_keep25_llm')``; no suffix -> ``(name, None)``."""
    m = TOKEN_SUFFIX_RE.search(name)
    if not m:
        return name, None
    return name[:m.start()], name[m.start():]


def parse_token_suffix(suffix: str, default_layer: int = DEFAULT_LLM_LAYER) -> tuple[TokenSpec, str | None]:
    """Parse a suffix from :func:`split_token_suffix`; returns (spec, canonical suffix if different).

    Raises :class:`TokenError` with the reason for anything that is not a valid budget.
    """
    m = TOKEN_SUFFIX_RE.fullmatch(suffix)
    if not m:
        raise TokenError(f"{suffix!r} is not a token budget; the form is _keep<NN>[_llm[<K>]]")
    keep_s, stage, layer_s = m.group("keep"), m.group("stage"), m.group("layer")
    keep = int(keep_s)
    if not 1 <= keep <= 100:
        raise TokenError(f"keep{keep_s}: the kept percentage must be 1..100")
    stage = stage or DEFAULT_STAGE
    if stage not in STAGES:
        raise TokenError(f"unknown token stage {stage!r}; stages: {', '.join(STAGES)} "
                         f"({DEFAULT_STAGE} is the default and is not written)")
    if stage == "fusion" and layer_s:
        raise TokenError("the fusion stage takes no layer number (only _llm<K> does)")
    layer = (int(layer_s) if layer_s else default_layer) if stage == "llm" else None
    spec = TokenSpec(keep, stage, layer)
    canon = spec.suffix(default_layer)
    return spec, (canon if canon != suffix else None)


def adaptive_fraction(keep: int, attention: Sequence[float]) -> float:
    """The llm stage's prompt-adaptive keep fraction (docs/tokens.md).

    ``a`` = the last prompt token's attention over the visual tokens, renormalised to sum 1;
    ``h = H(a) / ln(n)`` its normalised entropy in [0, 1] (n = number of visual tokens);
    fraction ``f = min(1, keep/100 * (0.5 + h))``: a prompt that spreads its attention over the
    image (h ~ 1) keeps up to 1.5x the budget, one that looks at a few tokens (h ~ 0) half of it.
    """
    a = [max(float(x), 0.0) for x in attention]
    n, tot = len(a), sum(a)
    if n <= 1 or tot <= 0:
        return keep / 100
    p = [x / tot for x in a if x > 0]
    h = -sum(x * math.log(x) for x in p) / math.log(n)
    return min(1.0, keep / 100 * (0.5 + h))


def split_budget(k: int, weights: Sequence[float], caps: Sequence[int]) -> list[int]:
    """Split ``k`` tokens across groups in proportion to ``weights`` (largest remainder).

    Each group gets ``floor(k * w_g / sum w)``, then the remaining tokens go one by one to the
    groups of largest fractional remainder (ties: earlier group); no group gets more than its
    ``caps`` entry, and what a capped group cannot take goes to the others the same way.
    """
    if len(weights) != len(caps):
        raise ValueError("one weight and one cap per group")
    k = min(int(k), sum(caps))
    out = [0] * len(caps)
    open_ = [i for i, c in enumerate(caps) if c > 0]
    while k > sum(out) and open_:
        left = k - sum(out)
        w = [max(float(weights[i]), 0.0) for i in open_]
        tot = sum(w)
        w = [x / tot for x in w] if tot > 0 else [1 / len(open_)] * len(open_)
        share = [left * x for x in w]
        base = [min(int(math.floor(s)), caps[i] - out[i]) for s, i in zip(share, open_)]
        for b, i in zip(base, open_):
            out[i] += b
        rest = k - sum(out)
        order = sorted(range(len(open_)), key=lambda j: (-(share[j] - math.floor(share[j])), j))
        for j in order:
            if rest <= 0:
                break
            i = open_[j]
            if out[i] < caps[i]:
                out[i] += 1
                rest -= 1
        open_ = [i for i in open_ if out[i] < caps[i]]
    return out


# --- torch ------------------------------------------------------------------------------------
# Scoring, selection and the LLM-stage pruner.  torch is imported inside the functions.


def l2_scores(features: Any) -> Any:
    """Per-token L2 norm of a (T, C) feature matrix, in float64: the fusion stage's feature
    statistic for encoders without an attention signal."""
    return features.detach().double().norm(dim=-1)


def cls_attention_scores(query: Any, keys: Any, scaling: float | None = None) -> Any:
    """[CLS]->patch attention: ``query`` (H, D) the [CLS] query per head, ``keys`` (H, 1+T, D)
    the keys of [CLS] and the T patches; softmax over all 1+T keys, mean over heads, the T
    patch columns.  Float64."""
    import torch

    q, k = query.double(), keys.double()
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    att = torch.softmax(torch.einsum("hd,htd->ht", q, k) * scale, dim=-1)
    return att.mean(0)[1:]


def normalise(scores: Any) -> Any:
    """``p(t) = s(t) / sum_u s(u)`` over non-negative scores (negative ones count 0); uniform when
    every score is 0."""
    import torch

    s = scores.detach().double().clamp_min(0)
    tot = s.sum()
    return s / tot if float(tot) > 0 else torch.full_like(s, 1.0 / max(1, s.numel()))


def rank_weights(features: Mapping[str, Any]) -> dict[str, float]:
    """``w_e = erank(F_e) / sum_f erank(F_f)`` over the given encoders' (T, C_e) features on one
    image (:func:`vlmeval_encred.report.effrank.effective_rank`); uniform if all are 0."""
    from .report.effrank import effective_rank

    ranks = {e: effective_rank(f.detach().double().cpu().numpy()) for e, f in features.items()}
    tot = sum(ranks.values())
    if tot <= 0:
        return {e: 1.0 / len(ranks) for e in ranks}
    return {e: r / tot for e, r in ranks.items()}


def top_positions(importance: Any, k: int) -> Any:
    """The ``k`` positions of largest importance (ties: lower position), sorted ascending."""
    import torch

    imp = importance.detach().double().flatten()
    order = torch.sort(-imp, stable=True).indices[:k]
    return torch.sort(order).values


@dataclass
class FusionSelection:
    kept: Any
    """LongTensor (k,) of kept token positions, ascending."""
    importance: Any
    weights: dict[str, float]
    scores: dict[str, Any]


def fusion_select(features: Mapping[str, Any], spec: TokenSpec,
                  scores: Mapping[str, Any] | None = None) -> FusionSelection:
    """The fusion stage on one image: ``features`` maps each *unmasked* encoder to its (T, C_e)
    tokens at the fusion point (same T for all, one shared token grid); ``scores`` optionally
    gives an encoder's attention signal (T,) instead of the L2 norm."""
    if not features:
        raise TokenError("the fusion stage needs at least one unmasked encoder to score tokens")
    t = {f.shape[0] for f in features.values()}
    if len(t) != 1:
        raise TokenError(f"the fusion stage needs one shared token grid; encoders give {sorted(t)} tokens")
    n = t.pop()
    raw = {e: (scores[e] if scores and e in scores else l2_scores(f)) for e, f in features.items()}
    w = rank_weights(features)
    imp = sum(w[e] * normalise(raw[e]) for e in features)
    return FusionSelection(top_positions(imp, spec.budget(n)), imp, w, raw)


def grouped_select(features: Mapping[str, Any], spec: TokenSpec,
                   scores: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The fusion stage where each encoder keeps its own token group (I-MoF style): the budget
    ``k = ceil(sum_e T_e * keep / 100)`` is split by the rank weights (:func:`split_budget`), and
    each group keeps its ``k_e`` best tokens by its own normalised score."""
    if not features:
        raise TokenError("the fusion stage needs at least one unmasked encoder to score tokens")
    names = list(features)
    w = rank_weights(features)
    sizes = [features[e].shape[0] for e in names]
    ks = split_budget(spec.budget(sum(sizes)), [w[e] for e in names], sizes)
    out = {}
    for e, k in zip(names, ks):
        s = scores[e] if scores and e in scores else l2_scores(features[e])
        out[e] = top_positions(normalise(s), k)
    return out


def splice_positions(seq_len: int, visual: Sequence[int], kept_visual: Sequence[int]) -> list[int]:
    """Positions of a sequence of ``seq_len`` that remain when only ``kept_visual`` of the
    ``visual`` positions stay: every non-visual position, plus the kept visual ones, ascending."""
    drop = set(int(v) for v in visual) - set(int(v) for v in kept_visual)
    return [i for i in range(seq_len) if i not in drop]


def _rotate_half(x: Any) -> Any:
    import torch

    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def _rope(x: Any, cos: Any, sin: Any) -> Any:
    """Llama-style rotary embedding: ``x cos + rotate_half(x) sin`` (cos/sin (B, L, D))."""
    return x * cos.unsqueeze(1) + _rotate_half(x) * sin.unsqueeze(1)


class LlmPruner:
    """The ``llm`` stage on a HF Llama-style decoder (a list of decoder layers).

    Hooks (installed once; inert until :meth:`arm`):

    * layer 0, forward pre-hook: the length ``q`` of this forward's sequence; ``q >= S`` (the
      armed prompt length) is a prefill from position 0 (or a cache-less recomputation of
      prompt + generated tokens), anything shorter a cached decoding step;
    * layer ``K-1``'s attention, forward pre-hook: on the first prefill, the scores (the last
      prompt token's attention over all ``S`` prompt keys from its own normalised input,
      queries and keys with rotary embeddings, grouped heads repeated; softmax in float32;
      mean over heads) and the kept set;
    * layer ``K-1``, forward hook: its output hidden states are sliced to the kept positions;
    * layers ``K..``, forward pre-hooks: ``position_embeddings`` (cos, sin), ``position_ids``,
      ``cache_position`` and a tensor ``attention_mask`` are sliced the same way (query and key
      dimensions in prefill; the key dimension in cached decoding, where the mask -- if the
      model builds one -- still spans every position).

    Batch size 1 (VLMEvalKit's); rotary embeddings of the rotate-half kind; no sliding-window
    or static caches.
    """

    def __init__(self, layers: Sequence[Any], spec: TokenSpec) -> None:
        if spec.stage != "llm":
            raise TokenError(f"LlmPruner is the llm stage, not {spec.stage!r}")
        n = len(layers)
        if not 1 <= spec.layer < n:
            raise TokenError(f"llm stage: K={spec.layer} must be between 1 and {n - 1} (the language model has "
                             f"{n} decoder layers; pruning after the last one would change nothing)")
        self.spec, self.layers = spec, list(layers)
        self.visual: list[int] | None = None
        self.prompt_len = 0
        self.kept_visual: list[int] | None = None
        self.scores: Any = None
        self.fraction: float | None = None
        self.select: Any = None
        """Optional ``select(scores, k) -> LongTensor`` of ``k`` indices into the visual positions, used
        instead of the ``k`` best by score: a control selection of the same size and at the same point
        (the demo's token check compares the scored selection with a seeded random one)."""
        self._idx: Any = None  # positions of the current forward that continue past layer K-1
        self._prefill = False
        attn = self.layers[spec.layer - 1].self_attn
        self._handles = [
            self.layers[0].register_forward_pre_hook(self._start, with_kwargs=True),
            attn.register_forward_pre_hook(self._score, with_kwargs=True),
            self.layers[spec.layer - 1].register_forward_hook(self._cut),
        ] + [layer.register_forward_pre_hook(self._slice, with_kwargs=True) for layer in self.layers[spec.layer:]]

    # -- control ----------------------------------------------------------------------------
    def arm(self, visual: Sequence[int], prompt_len: int) -> None:
        """Prune the next generation: ``visual`` positions of the ``prompt_len``-token prompt."""
        self.visual = sorted(int(v) for v in visual)
        if self.visual and (self.visual[0] < 0 or self.visual[-1] >= prompt_len - 1):
            raise TokenError("visual positions must lie inside the prompt, before its last token")
        self.prompt_len, self.kept_visual, self.scores, self._idx = int(prompt_len), None, None, None

    def disarm(self) -> None:
        self.visual, self._idx, self._prefill = None, None, False

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @property
    def pruned(self) -> int:
        return 0 if self.kept_visual is None or self.visual is None else len(self.visual) - len(self.kept_visual)

    # -- hooks ------------------------------------------------------------------------------
    @staticmethod
    def _hidden(args: tuple, kwargs: dict) -> Any:
        return args[0] if args else kwargs["hidden_states"]

    def _start(self, _m: Any, args: tuple, kwargs: dict) -> None:
        self._idx = None
        if self.visual is None:
            return
        q = self._hidden(args, kwargs).shape[1]
        self._prefill = q >= self.prompt_len
        if self._prefill and self.kept_visual is not None:
            self._idx = self._index(q)

    def _index(self, q: int) -> Any:
        import torch

        keep = splice_positions(self.prompt_len, self.visual, self.kept_visual) + list(range(self.prompt_len, q))
        return torch.tensor(keep, dtype=torch.long)

    def _score(self, attn: Any, args: tuple, kwargs: dict) -> None:
        import torch

        if self.visual is None or not self._prefill or self.kept_visual is not None:
            return
        h = self._hidden(args, kwargs)
        if h.shape[0] != 1:
            raise TokenError("the llm token stage runs one sample at a time (batch size 1)")
        s = self.prompt_len
        pe = kwargs.get("position_embeddings")
        if pe is None:
            pos = kwargs.get("position_ids")
            if pos is None or not hasattr(attn, "rotary_emb"):
                raise TokenError("llm stage: the attention layer gets no rotary position embeddings")
            pe = attn.rotary_emb(h, pos)
        cos, sin = pe
        hd = attn.head_dim
        with torch.no_grad():
            q = attn.q_proj(h[:, s - 1:s]).view(1, 1, -1, hd).transpose(1, 2)
            k = attn.k_proj(h[:, :s]).view(1, s, -1, hd).transpose(1, 2)
            if getattr(attn, "q_norm", None) is not None:
                q, k = attn.q_norm(q), attn.k_norm(k)
            q = _rope(q, cos[:, s - 1:s], sin[:, s - 1:s])
            k = _rope(k, cos[:, :s], sin[:, :s])
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            scale = getattr(attn, "scaling", hd ** -0.5)
            logits = (q @ k.transpose(2, 3)).float() * scale  # (1, H, 1, S)
            mask = kwargs.get("attention_mask")
            if torch.is_tensor(mask) and mask.dim() == 4:
                m = mask[:, :, s - 1:s, :s]
                logits = logits.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else logits + m.float()
            att = torch.softmax(logits, dim=-1).mean(dim=1)[0, 0]  # (S,)
        vis = torch.tensor(self.visual, dtype=torch.long, device=att.device)
        self.scores = att[vis].double().cpu()
        n = len(self.visual)
        if self.spec.adaptive:
            self.fraction = adaptive_fraction(self.spec.keep, self.scores.tolist())
            k_keep = min(n, max(1, math.ceil(n * self.fraction - 1e-9)))
        else:
            self.fraction, k_keep = self.spec.keep / 100, self.spec.budget(n)
        chosen = top_positions(self.scores, k_keep)
        if self.select is not None:
            chosen = torch.as_tensor(self.select(self.scores, k_keep), dtype=torch.long)
            if chosen.numel() != k_keep or len(set(chosen.tolist())) != k_keep or not 0 <= int(chosen.min()) \
                    or int(chosen.max()) >= n:
                raise TokenError(f"llm stage: the control selection must be {k_keep} distinct indices into the "
                                 f"{n} visual positions, got {chosen.tolist()}")
            chosen = torch.sort(chosen).values
        self.kept_visual = [self.visual[i] for i in chosen.tolist()]
        self._idx = self._index(h.shape[1])

    def _cut(self, _m: Any, _args: tuple, out: Any) -> Any:
        if self._idx is None:
            return None
        idx = self._idx.to(self._first(out).device)
        if isinstance(out, tuple):
            return (out[0][:, idx],) + tuple(out[1:])
        return out[:, idx]

    @staticmethod
    def _first(out: Any) -> Any:
        return out[0] if isinstance(out, tuple) else out

    def _slice(self, _m: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        import torch

        if self.visual is None or self.kept_visual is None:
            return None
        kw = dict(kwargs)
        if self._idx is not None:  # prefill / cache-less recomputation: query and key positions
            idx = self._idx.to(self._hidden(args, kwargs).device)
            if kw.get("position_embeddings") is not None:
                kw["position_embeddings"] = tuple(t[:, idx] for t in kw["position_embeddings"])
            for name in ("position_ids",):
                if torch.is_tensor(kw.get(name)):
                    kw[name] = kw[name][..., idx]
            if torch.is_tensor(kw.get("cache_position")):
                kw["cache_position"] = kw["cache_position"][idx]
            mask = kw.get("attention_mask")
            if torch.is_tensor(mask):
                if mask.dim() != 4 or mask.shape[-1] != mask.shape[-2]:
                    raise TokenError(f"llm stage: unsupported attention mask of shape {tuple(mask.shape)} in prefill")
                kw["attention_mask"] = mask[:, :, idx][:, :, :, idx]
        else:  # cached decoding: only the mask's key dimension still spans every position
            mask = kw.get("attention_mask")
            if torch.is_tensor(mask):
                if mask.dim() != 4 or mask.shape[-1] < self.prompt_len:
                    raise TokenError(f"llm stage: unsupported attention mask of shape {tuple(mask.shape)}")
                keys = self._index(mask.shape[-1]).to(mask.device)
                kw["attention_mask"] = mask[..., keys]
        return args, kw
