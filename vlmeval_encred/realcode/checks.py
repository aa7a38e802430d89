"""Family-independent checks of a masked model against its unmasked original.

A family's self-test (:class:`RealCodeSelfTest`) knows how to build a tiny
model from upstream's classes and how to run its fusion; the checks here know
nothing about any family.  Each returns :class:`CheckResult` objects instead of
raising, so ``encred doctor`` can print every failure and the tests can assert
on them with the same messages.

What is checked, per mask and mode (the claims docs/masking.md makes):

* ``not_called``: no forward hook of a masked tower fires while the masked
  model runs;
* ``zero_equals_run_then_zero``: under ``zero``, the masked model's output
  equals the unmasked model's with the masked towers' outputs replaced by
  zeros after running them (what the paper's authors did);
* ``drop_equals_zero``: under ``drop``, for families that claim it, the output
  equals ``zero``'s (within the stated tolerance);
* ``drop_equals_run_then_drop``: under ``drop``, for families whose self-test
  gives an independent reference (:meth:`RealCodeSelfTest.run_then_drop`), the
  output equals it exactly;
* ``params_freed``: the parameters the adapter reports as released are at
  least the masked towers' own.
"""

from __future__ import annotations

import abc
import copy
import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

__all__ = ["CheckResult", "RealCodeSelfTest", "compare", "run_selftest", "default_subsets"]


@dataclass
class CheckResult:
    family: str
    check: str
    subject: str        # e.g. "mask=clip,sam mode=zero"
    ok: bool
    detail: str = ""

    def line(self) -> str:
        return f"[{'ok' if self.ok else 'FAIL'}] {self.family} {self.check} {self.subject}" + \
            (f": {self.detail}" if self.detail else "")


def compare(a: Any, b: Any, atol: float = 0.0, rtol: float = 0.0) -> tuple[bool, str]:
    """Equal tensors (exactly when atol=rtol=0); the detail gives the largest difference."""
    import torch

    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return False, f"length {len(a)} != {len(b)}"
        for x, y in zip(a, b):
            ok, why = compare(x, y, atol, rtol)
            if not ok:
                return ok, why
        return True, ""
    if isinstance(a, str) or isinstance(b, str):
        return a == b, "" if a == b else f"{a!r} != {b!r}"
    if a.shape != b.shape:
        return False, f"shape {tuple(a.shape)} != {tuple(b.shape)}"
    diff = (a.float() - b.float()).abs().max().item() if a.numel() else 0.0
    ok = bool(torch.equal(a, b)) if (atol == 0 and rtol == 0) else bool(torch.allclose(a.float(), b.float(), atol=atol, rtol=rtol))
    return ok, f"max |diff| {diff:.3g}" + ("" if atol == 0 and rtol == 0 else f" (atol {atol}, rtol {rtol})")


def default_subsets(encoders: Sequence[str], limit: int | None = None) -> list[tuple[str, ...]]:
    """Every non-empty subset, or a spread of ``limit`` of them (singles, the full set, then pairs...)."""
    every = [s for k in range(1, len(encoders) + 1) for s in itertools.combinations(encoders, k)]
    if limit is None or limit >= len(every):
        return every
    singles = [s for s in every if len(s) == 1]
    rest = [s for s in every if len(s) > 1]
    rest.sort(key=lambda s: -len(s))  # the all-masked subset first: it breaks most often
    return (singles + rest)[:max(limit, 1)]


class RealCodeSelfTest(abc.ABC):
    """What a family provides so that its adapter can be checked on upstream's real classes."""

    family: str = ""
    recipe: str = ""
    """Name of the tested environment recipe (:mod:`vlmeval_encred.recipes`; a family's ``recipe.txt``)."""
    upstream: tuple[str, ...] = ()
    """Names in :data:`vlmeval_encred.upstream.REPOS` this family's code needs."""
    modes: tuple[str, ...] = ("zero",)
    drop_equals_zero: bool = False
    drop_tolerance: tuple[float, float] = (1e-6, 1e-5)

    # -- environment ---------------------------------------------------------------
    @abc.abstractmethod
    def import_upstream(self) -> str:
        """Import the upstream package(s) from their real source; return a one-line description.

        Raise with a clear message (the version found and the versions that work) if it
        cannot be imported in this environment."""

    def recipe_mismatches(self) -> list[str]:
        """Pins of the recipe that this environment does not satisfy."""
        from vlmeval_encred.recipes import mismatches

        return mismatches(self.recipe)

    # -- model -----------------------------------------------------------------------
    @abc.abstractmethod
    def build(self, workdir: Path) -> Any:
        """A tiny random model from upstream's own classes (offline), in eval mode, float32."""

    @abc.abstractmethod
    def encoders(self, model: Any) -> list[str]:
        """Encoder short names in fusion order."""

    @abc.abstractmethod
    def tower_modules(self, model: Any) -> dict[str, Any]:
        """name -> the tower module whose forward must not run when masked."""

    @abc.abstractmethod
    def mask(self, model: Any, masked: tuple[str, ...], mode: str) -> Any:
        """Apply the family adapter to ``model`` (a fresh copy); return the adapter's MaskReport."""

    @abc.abstractmethod
    def run(self, model: Any) -> Any:
        """One deterministic forward on fixed inputs; returns tensors to compare (e.g. logits)."""

    @abc.abstractmethod
    def run_then_zero(self, model: Any, masked: tuple[str, ...]) -> Any:
        """The unmasked model's output with the masked towers run and their outputs zeroed
        at the fusion point (the paper's definition), by hooks on the unmasked model."""

    def run_then_drop(self, model: Any, masked: tuple[str, ...]) -> Any:
        """Optional: the unmasked model's output with the masked towers removed from the fusion
        as the family defines ``drop``, by hooks on the unmasked model; ``None`` if the family
        has no such reference (then only ``not_called`` / ``params_freed`` check ``drop``)."""
        return None

    def fresh(self, model: Any) -> Any:
        return copy.deepcopy(model)

    def runs_anyway(self, masked: tuple[str, ...], mode: str) -> dict[str, str]:
        """Masked towers that ``mode`` runs on purpose (name -> why); exempt from not_called and
        params_freed.  E.g. a mode that keeps a tower to compute a context the authors kept."""
        return {}


def run_selftest(test: RealCodeSelfTest, workdir: Path, subsets: Iterable[tuple[str, ...]] | None = None,
                 modes: Iterable[str] | None = None, limit: int | None = None,
                 progress: Callable[[str], None] | None = None) -> list[CheckResult]:
    """Build the tiny model and check every (subset, mode); never raises for a failed check."""
    from vlmeval_encred.masking import count_params, forward_call_recorder

    fam = test.family
    results: list[CheckResult] = []
    t0 = time.perf_counter()
    try:
        desc = test.import_upstream()
        results.append(CheckResult(fam, "imports", "upstream", True, desc))
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return [CheckResult(fam, "imports", "upstream", False, f"{type(exc).__name__}: {exc}")]
    try:
        base = test.build(Path(workdir))
        encs = test.encoders(base)
        test.run(base)  # the unmasked model must run before any mask is judged
    except Exception as exc:  # noqa: BLE001
        return results + [CheckResult(fam, "build", "tiny model", False, f"{type(exc).__name__}: {exc}")]
    results.append(CheckResult(fam, "build", "tiny model", True,
                               f"encoders {','.join(encs)}; {count_params(base)} parameters"))
    modes = tuple(modes or test.modes)
    for masked in (list(subsets) if subsets is not None else default_subsets(encs, limit)):
        zero_out = None
        expected = None
        for mode in modes:
            subject = f"mask={','.join(masked)} mode={mode}"
            if progress:
                progress(subject)
            try:
                model = test.fresh(base)
                towers = test.tower_modules(model)
                exempt = test.runs_anyway(tuple(masked), mode)
                silent = [m for m in masked if m not in exempt]
                tower_params = sum(count_params(towers[m]) for m in silent)
                calls, handles = forward_call_recorder({m: towers[m] for m in silent})
                report = test.mask(model, masked, mode)
                out = test.run(model)
                for h in handles:
                    h.remove()
            except Exception as exc:  # noqa: BLE001
                results.append(CheckResult(fam, "runs", subject, False, f"{type(exc).__name__}: {exc}"))
                continue
            called = {m: n for m, n in calls.items() if n}
            why_run = "; ".join(f"{m} runs by design: {r}" for m, r in exempt.items())
            results.append(CheckResult(fam, "not_called", subject, not called,
                                       f"masked towers ran: {called}" if called else why_run))
            freed = getattr(report, "released_params", 0)
            results.append(CheckResult(fam, "params_freed", subject, freed >= tower_params,
                                       f"freed {freed} of the towers' {tower_params}"))
            if mode == "zero":
                zero_out = out
                if expected is None:
                    expected = test.run_then_zero(test.fresh(base), masked)
                ok, why = compare(out, expected)
                results.append(CheckResult(fam, "zero_equals_run_then_zero", subject, ok, why))
            elif mode == "drop":
                if test.drop_equals_zero and zero_out is not None:
                    ok, why = compare(out, zero_out, *test.drop_tolerance)
                    results.append(CheckResult(fam, "drop_equals_zero", subject, ok, why))
                reference = test.run_then_drop(test.fresh(base), masked)
                if reference is not None:
                    ok, why = compare(out, reference)
                    results.append(CheckResult(fam, "drop_equals_run_then_drop", subject, ok, why))
    results.append(CheckResult(fam, "done", "all", all(r.ok for r in results),
                               f"{len(results)} checks in {time.perf_counter() - t0:.1f} s"))
    return results
