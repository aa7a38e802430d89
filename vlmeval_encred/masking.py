"""Family-independent encoder masking: the mask specification and the adapter contract.

The paper's semantics (``zero``): the masked encoder's output is replaced, at
the point where encoder outputs are fused, by zeros of exactly the shape it
would have had; everything else (projector, LLM, prompt, decoding) is
untouched.  We add two guarantees the authors' scripts did not give: a masked
encoder is never run, and its weights do not stay in memory.

Each family implements :class:`EncoderAdapter` in one module under
``vlmeval_encred.model_wrappers``.  Encoder names, order and output shapes
are read from the loaded model (its config and modules) by the adapter; this
module never hard-codes them.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

MASK_MODES: dict[str, str] = {
    "zero": "replace the encoder's output by zeros of its exact shape at the fusion point (paper)",
    "drop": "remove the encoder from the fusion exactly (family-defined; see docs/masking.md)",
    "zero_context": "as zero, and also zero derived context computed from the masked encoder",
}


class MaskError(ValueError):
    """A mask cannot be applied to this model (unknown encoder, unsupported mode, ...)."""


@dataclass(frozen=True)
class MaskSpec:
    """Which encoders to mask and how.  Order-free; validated against a model."""

    masked: tuple[str, ...] = ()
    mode: str = "zero"

    def __post_init__(self) -> None:
        if isinstance(self.masked, str):
            object.__setattr__(self, "masked", tuple(m for m in self.masked.split(",") if m))
        object.__setattr__(self, "masked", tuple(self.masked))
        if self.mode not in MASK_MODES:
            raise MaskError(f"unknown mask mode {self.mode!r}; valid modes: {', '.join(MASK_MODES)}")
        dup = {m for m in self.masked if self.masked.count(m) > 1}
        if dup:
            raise MaskError(f"encoder(s) {sorted(dup)} listed more than once in the mask")

    def validate(self, available: Sequence[str], modes: Iterable[str] = ("zero",),
                 model: str = "model") -> "MaskSpec":
        """Check names against the loaded model's encoders; return the spec in model order."""
        modes = tuple(modes)
        unknown = [m for m in self.masked if m not in available]
        if unknown:
            raise MaskError(f"{model} has no encoder named {', '.join(map(repr, unknown))}; "
                            f"its encoders, in order, are: {', '.join(available)}")
        if self.masked and self.mode not in modes:
            raise MaskError(f"{model} does not support mask mode {self.mode!r}; "
                            f"supported: {', '.join(modes)} (see docs/masking.md)")
        return MaskSpec(tuple(a for a in available if a in self.masked), self.mode)

    def is_masked(self, name: str) -> bool:
        return name in self.masked


@dataclass
class EncoderInfo:
    """One vision encoder of a loaded model, as the adapter found it."""

    name: str
    index: int
    output_shape: tuple[int, ...]
    """Per-image shape at the fusion point, without the batch dimension."""
    module: Any = None
    """The tower module (None once released)."""
    params: int = 0


@dataclass
class MaskReport:
    """What :meth:`EncoderAdapter.apply` did; kept on the wrapper for logs and tests."""

    spec: MaskSpec
    encoders: list[EncoderInfo]
    released_params: int = 0
    resident_params: int = 0
    notes: list[str] = field(default_factory=list)


def count_params(module: Any) -> int:
    """Parameters and buffers actually allocated (meta tensors count zero)."""
    if module is None:
        return 0
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        if not t.is_meta:
            total += t.numel()
    return total


class EncoderAdapter(abc.ABC):
    """What a family must tell the core about a loaded model.

    Implementations live in ``vlmeval_encred.model_wrappers.<family>``.
    """

    family: str = ""
    modes: tuple[str, ...] = ("zero",)
    drop_equals_zero: bool | None = None
    """True when ``drop`` gives outputs identical to ``zero`` (documented per family)."""

    @abc.abstractmethod
    def encoders(self, model: Any) -> list[EncoderInfo]:
        """The model's encoders in fusion order, with their output shapes."""

    @abc.abstractmethod
    def install(self, model: Any, spec: MaskSpec, infos: list[EncoderInfo]) -> None:
        """Make the fusion see the masked encoders as the mode says, without running them."""

    @abc.abstractmethod
    def release(self, model: Any, spec: MaskSpec, infos: list[EncoderInfo]) -> int:
        """Free the masked towers' weights; return the number of parameters freed."""

    def names(self, model: Any) -> list[str]:
        return [e.name for e in self.encoders(model)]

    def apply(self, model: Any, spec: MaskSpec, model_name: str = "model") -> MaskReport:
        """Validate, install and release; the one call wrappers make after loading."""
        infos = self.encoders(model)
        spec = spec.validate([e.name for e in infos], self.modes, model_name)
        report = MaskReport(spec, infos)
        if spec.masked:
            self.install(model, spec, infos)
            report.released_params = self.release(model, spec, infos)
        report.resident_params = count_params(model) if hasattr(model, "parameters") else 0
        return report


def forward_call_recorder(modules: dict[str, Any]) -> tuple[dict[str, int], list[Any]]:
    """Attach forward hooks that count calls per named module (for tests and audits)."""
    calls = {name: 0 for name in modules}
    handles = []
    for name, mod in modules.items():
        def hook(_m, _i, _o, _name=name):
            calls[_name] += 1
        handles.append(mod.register_forward_hook(hook))
    return calls, handles
