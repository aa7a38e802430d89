"""One validation layer for the names and numbers users give us.

Why one module: a wrong argument must stop a command *before* it spends time (loading
weights, building datasets, running a bootstrap) and say, in one line, which argument,
what was given, what is valid and the nearest valid value.  Before this module each
command took ``type=int`` and hoped: ``--limit -3`` was accepted, ``--samples-per-category
0`` silently meant "the default size", ``--mfu 0`` divided by zero deep in the cost model
and ``--n-boot 1`` produced 95% intervals that did not contain their own estimate.

Two kinds of helpers live here, both free of torch/vlmeval imports (``encred --help``
must stay instant):

* argparse ``type=`` callables (:func:`int_range`, :func:`float_range`, :func:`n_boot`,
  :func:`name_in`) that raise :class:`argparse.ArgumentTypeError` with the one-line
  message; :class:`OneLineParser` prints it without the usage block and exits 2;
* :func:`nearest` / :func:`unknown_name`: difflib suggestions for any name (models,
  encoders, families, GPUs, datasets), used by the registry and the VLMEvalKit plugin.
"""

from __future__ import annotations

import argparse
import difflib
import math
from typing import Callable, Iterable, NoReturn

MIN_N_BOOT = 100
"""Smallest bootstrap size we accept (0 = no intervals).  A 95% percentile interval from
``n`` resamples rests on the ``0.025 n`` most extreme resamples at each end: below ~100 that
is one or two resamples, and the interval is noise (with ``n = 1`` it is one point that need
not contain the estimate, yet it was starred as 'distinguishable from 0')."""


class ValidationError(ValueError):
    """A name or value that is not valid; ``str()`` is the one-line message for the user."""


def nearest(value: str, candidates: Iterable[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
    """Up to ``n`` candidates most similar to ``value`` (case-insensitive difflib ratio).

    A case-insensitive exact match comes first (``EAGLE_X5`` suggests ``eagle_x5``), then names
    that start with ``value`` (``a100`` suggests ``a100_80gb_bf16``), then difflib's closest.
    """
    cands = list(dict.fromkeys(candidates))
    low = {c.lower(): c for c in cands}
    v = value.lower()
    out = [low[v]] if v in low else []
    if len(v) >= 3:  # a prefix the user stopped typing: 'a100' -> 'a100_80gb_bf16'
        out += [c for k, c in low.items() if k.startswith(v) and c not in out][:n]
    for m in difflib.get_close_matches(value.lower(), list(low), n=n, cutoff=cutoff):
        if low[m] not in out:
            out.append(low[m])
    return out[:n]


def _listing(valid: list[str], limit: int = 12) -> str:
    if len(valid) <= limit:
        return ", ".join(valid)
    return ", ".join(valid[:limit]) + f", ... ({len(valid)} in all)"


def unknown_name(what: str, value: str, valid: Iterable[str], hint: str = "") -> str:
    """``unknown <what> 'x'; nearest valid: a, b; valid: ...`` (one line)."""
    valid = list(dict.fromkeys(valid))
    near = nearest(value, valid)
    msg = f"unknown {what} {value!r}"
    if near:
        msg += f"; nearest valid: {', '.join(near)}"
    msg += f"; valid: {_listing(valid)}"
    return msg + (f" ({hint})" if hint else "")


# --- argparse type= callables -------------------------------------------------------------

def _describe_int(lo: int | None, hi: int | None) -> str:
    if lo is not None and hi is not None:
        return f"an integer from {lo} to {hi}"
    if lo is not None:
        return f"an integer >= {lo}"
    if hi is not None:
        return f"an integer <= {hi}"
    return "an integer"


def check_int(value: int, lo: int | None = None, hi: int | None = None, *, extra: str = "") -> int:
    """``value`` if ``lo <= value <= hi``, else :class:`ValidationError` naming the nearest valid value."""
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        near = lo if lo is not None and value < lo else hi
        raise ValidationError(f"{value} is not valid: expected {_describe_int(lo, hi)}{extra} "
                              f"(nearest valid: {near})")
    return value


def int_range(lo: int | None = None, hi: int | None = None, *, extra: str = "") -> Callable[[str], int]:
    """argparse ``type=``: an integer in ``[lo, hi]`` (``None`` = unbounded).

    ``extra`` adds what a special value means, e.g. ``" (0 = all of a sample's subsets)"``.
    """

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not valid: expected {_describe_int(lo, hi)}{extra}") from None
        try:
            return check_int(value, lo, hi, extra=extra)
        except ValidationError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = "integer"  # argparse names the type in its own messages
    return parse


def check_float(value: float, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False,
                what: str = "") -> float:
    """``value`` if within the interval and finite, else :class:`ValidationError`."""
    interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    desc = f"a number in {interval}" + (f" ({what})" if what else "")
    bad = (not math.isfinite(value) or value < lo or value > hi
           or (lo_open and value == lo) or (hi_open and value == hi))
    if bad:
        if not math.isfinite(value):
            near = hi
        elif value <= lo:
            near = lo if not lo_open else (f"a value just above {lo:g}, e.g. {min(hi, lo + 0.01):g}")
        else:
            near = hi if not hi_open else f"a value just below {hi:g}"
        raise ValidationError(f"{value:g} is not valid: expected {desc} (nearest valid: {near})")
    return value


def float_range(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False,
                what: str = "") -> Callable[[str], float]:
    """argparse ``type=``: a finite float in the interval (open ends excluded)."""

    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not valid: expected a number from {lo:g} to {hi:g}"
                                             + (f" ({what})" if what else "")) from None
        try:
            return check_float(value, lo, hi, lo_open=lo_open, hi_open=hi_open, what=what)
        except ValidationError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = "number"
    return parse


def check_n_boot(value: int) -> int:
    """0 (no intervals) or at least :data:`MIN_N_BOOT` resamples."""
    if value == 0 or value >= MIN_N_BOOT:
        return value
    near = 0 if value < MIN_N_BOOT / 2 else MIN_N_BOOT
    raise ValidationError(f"{value} is not valid: expected 0 (no bootstrap intervals) or at least {MIN_N_BOOT} "
                          f"resamples (fewer give 95% intervals resting on one or two resamples) "
                          f"(nearest valid: {near})")


def n_boot(text: str) -> int:
    """argparse ``type=`` for ``--n-boot``: see :func:`check_n_boot`."""
    try:
        value = int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid: expected 0 (no bootstrap intervals) or an "
                                         f"integer >= {MIN_N_BOOT}") from None
    try:
        return check_n_boot(value)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


n_boot.__name__ = "integer"


def name_in(what: str, valid: Callable[[], Iterable[str]]) -> Callable[[str], str]:
    """argparse ``type=``: one of ``valid()`` (called lazily), with the nearest names on a miss."""

    def parse(text: str) -> str:
        names = list(valid())
        if text in names:
            return text
        raise argparse.ArgumentTypeError(unknown_name(what, text, names))

    parse.__name__ = what
    return parse


def seed(text: str) -> int:
    """argparse ``type=`` for ``--seed``: numpy's generators take integers >= 0 only."""
    return int_range(0, extra=" (numpy random seeds are non-negative)")(text)


seed.__name__ = "integer"


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: ``<prog>: <message> (see <prog> --help)``.

    argparse's own errors (a missing required argument, an unknown option, a bad choice) and
    those of the ``type=`` callables above all pass through here, so every command says what
    is wrong the same way, with exit status 2.
    """

    def error(self, message: str) -> NoReturn:
        message = " ".join(message.split())
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")



def check_adaptive(*, adaptive: bool, halfwidth: float | None, decide_sign: bool, max_frac: float | None,
                   round_size: int | None, limit: int | None, cluster: str | None, complete: str | None,
                   stop_level: str | None = None) -> None:
    """The combinations of ``encred sweep``'s adaptive arguments that mean something.

    ``--halfwidth``, ``--decide-sign``, ``--max-frac`` and ``--round-size`` only steer an
    adaptive sweep; an adaptive sweep needs a target (a half-width, or deciding the sign) and
    samples the whole dataset itself, so ``--limit`` (the first N rows) and ``--cluster``
    (whole-dataset jobs) do not combine with it; ``--complete`` runs a plain sweep."""
    given = [n for n, v in (("--halfwidth", halfwidth), ("--decide-sign", decide_sign or None),
                            ("--max-frac", max_frac), ("--round-size", round_size),
                            ("--stop-level", stop_level)) if v is not None]
    if complete is not None:
        if adaptive or given:
            raise ValidationError(f"--complete finishes sampled cells with a plain sweep (every question); "
                                  f"drop {', '.join((['--adaptive'] if adaptive else []) + given)}")
        return
    if not adaptive:
        if given:
            raise ValidationError(f"{', '.join(given)} only apply to an adaptive sweep: add --adaptive "
                                  "(or drop them for a full sweep)")
        return
    if halfwidth is None and not decide_sign:
        raise ValidationError("--adaptive needs a target: --halfwidth H (points) and/or --decide-sign")
    if limit is not None:
        raise ValidationError("--adaptive samples questions from the whole dataset in a random order; "
                              "--limit (the first N rows) does not combine with it: use --max-frac")
    if cluster is not None:
        raise ValidationError("--adaptive runs here (rounds need every variant's scores between them); "
                              "drop --cluster")


def check_decode_batch_tokens(value: int, *, adaptive: bool, cluster: str | None) -> int:
    """``encred sweep --decode-batch-tokens N``: a non-negative prompt-position budget, for plain
    sweeps run here (one process or ``--gpus``).  Adaptive rounds and cluster jobs decode sample
    by sample and are not given the option, so asking for it there would silently do nothing."""
    try:
        check_int(value, 0, extra=" (0 = off: each sample decoded on its own)")
    except ValidationError as exc:
        raise ValidationError(f"--decode-batch-tokens {exc}") from None
    if value and adaptive:
        raise ValidationError(f"--decode-batch-tokens {value}: adaptive rounds decode sample by sample; "
                              "drop --decode-batch-tokens (or --adaptive)")
    if value and cluster is not None:
        raise ValidationError(f"--decode-batch-tokens {value} is not passed to cluster jobs; drop it with --cluster, "
                              "or run the sweep here (--gpus N for several processes)")
    return value
