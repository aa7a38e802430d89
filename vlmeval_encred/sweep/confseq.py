"""Anytime-valid confidence sequences for a bounded mean, sampled without replacement.

What is implemented (Waudby-Smith & Ramdas 2023, "Estimating means of bounded random
variables by betting", JRSS-B; the hedged capital process of their Section 4 with the
without-replacement means of their Section 6, and their predictable plug-in bets):

A finite population of ``N`` values ``x`` in ``[0, 1]`` (here: per-question paired score
differences ``d`` in ``[lo, hi]``, mapped by ``x = (d - lo) / (hi - lo)``) is visited in a
uniformly random order ``X_1, X_2, ...`` without replacement.  For a candidate population
mean ``m`` the mean of what is *still unseen* before step ``t`` is

    mu_t(m) = (N m - sum_{i<t} X_i) / (N - t + 1).

Two capital processes bet against ``m``::

    K+_t(m) = prod_{i<=t} (1 + l+_i(m) (X_i - mu_i(m))),   l+_i(m) = min(l_i, c / mu_i(m))
    K-_t(m) = prod_{i<=t} (1 - l-_i(m) (X_i - mu_i(m))),   l-_i(m) = min(l_i, c / (1 - mu_i(m)))

with ``c = 1/2`` and the predictable plug-in bet (it uses only ``X_1..X_{t-1}``)::

    l_t = sqrt(2 log(2 / alpha) / (s2_{t-1} t log(1 + t))),
    s2_t = (1/4 + sum_{i<=t} (X_i - xbar_i)^2) / (t + 1),   xbar_t = (1/2 + sum_{i<=t} X_i) / (t + 1).

Both are non-negative martingales when ``m`` is the true mean, so by Ville's inequality the
hedged process ``K_t(m) = max(theta K+_t(m), (1 - theta) K-_t(m))`` (``theta = 1/2``) exceeds
``1 / alpha`` at *any* time with probability at most ``alpha``.  The confidence sequence is

    C_t = { m : K_s(m) < 1 / alpha for every s <= t }  intersected with
          [ S_t / N, (S_t + N - t) / N ]                 (S_t = sum_{i<=t} X_i),

the running intersection over time (valid because the guarantee is time-uniform) and the
values the population mean can still take given what was seen (unseen values lie in
[0, 1]).  That last interval is the finite-population correction in its plainest form:
it has width ``(N - t) / N`` and is a single point once all ``N`` values are seen.  Because
``P(exists t: mean not in C_t) <= alpha``, an interval read at a *data-dependent* stopping
time -- "stop once the half-width is below H" -- still covers with probability
``>= 1 - alpha``; that is why the adaptive sweep may stop early.

``C_t`` is computed on a grid of ``grid`` candidate means; the reported interval is the
smallest and largest grid point still in ``C_t``, each widened by one grid step (so a true
mean between two grid points is never cut off by the discretisation), then clipped to the
finite-population bounds.  If no grid point survives (an event of probability <= alpha) the
interval falls back to the finite-population bounds, which are always valid.

:class:`BettingCS` holds ``batch`` independent sequences at once (the simulations of
``benchmarks/adaptive_coverage.py`` and :func:`simulate_coverage` run thousands in
numpy); the adaptive sweep uses ``batch = 1`` per cell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

C_TRUNC = 0.5
THETA = 0.5


class BettingCS:
    """Hedged betting confidence sequences (without replacement) for ``batch`` sequences."""

    def __init__(self, N: int | Sequence[int], alpha: float = 0.05, lo: float = 0.0, hi: float = 1.0,
                 grid: int = 2001, batch: int = 1) -> None:
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if not hi > lo:
            raise ValueError(f"need hi > lo, got [{lo}, {hi}]")
        self.N = np.broadcast_to(np.asarray(N, dtype=np.float64), (batch,)).copy()
        if np.any(self.N < 1):
            raise ValueError("population size N must be >= 1")
        self.alpha, self.lo, self.hi = float(alpha), float(lo), float(hi)
        self.m = np.linspace(0.0, 1.0, int(grid))
        self.step = 1.0 / (int(grid) - 1)
        self.batch = batch
        self.log_kp = np.zeros((batch, len(self.m)))
        self.log_km = np.zeros((batch, len(self.m)))
        self.alive = np.ones((batch, len(self.m)), dtype=bool)
        self.t = np.zeros(batch, dtype=np.int64)
        self.s = np.zeros(batch)
        self.sq = np.zeros(batch)  # sum of (X_i - xbar_i)^2
        self._thresh = math.log(1.0 / self.alpha)
        self._log_lam_num = 2.0 * math.log(2.0 / self.alpha)

    # -- updates ---------------------------------------------------------------------------
    def update(self, values: np.ndarray | Sequence[float] | float, active: np.ndarray | None = None) -> None:
        """One new observation per sequence (original scale, in ``[lo, hi]``); rows with
        ``active`` False are left unchanged."""
        v = np.broadcast_to(np.asarray(values, dtype=np.float64), (self.batch,))
        if np.any((v < self.lo - 1e-9) | (v > self.hi + 1e-9)):
            raise ValueError(f"observation outside [{self.lo}, {self.hi}]: {v[(v < self.lo) | (v > self.hi)][:3]}")
        x = np.clip((v - self.lo) / (self.hi - self.lo), 0.0, 1.0)
        rows = np.arange(self.batch) if active is None else np.flatnonzero(active)
        if rows.size == 0:
            return
        if np.any(self.t[rows] >= self.N[rows]):
            raise ValueError("more observations than the population holds (N)")
        t_new = self.t[rows] + 1.0
        s2_prev = (0.25 + self.sq[rows]) / t_new  # s2_{t-1} = (1/4 + sum_{i<t} ...) / t
        lam = np.sqrt(self._log_lam_num / (s2_prev * t_new * np.log1p(t_new)))[:, None]
        N = self.N[rows][:, None]
        mu = (N * self.m[None, :] - self.s[rows][:, None]) / (N - t_new[:, None] + 1.0)
        possible = (mu >= -1e-12) & (mu <= 1 + 1e-12)
        mu = np.clip(mu, 0.0, 1.0)
        with np.errstate(divide="ignore"):
            lam_p = np.minimum(lam, C_TRUNC / mu)
            lam_m = np.minimum(lam, C_TRUNC / (1.0 - mu))
        dx = x[rows][:, None] - mu
        kp = self.log_kp[rows] + np.log1p(lam_p * dx)
        km = self.log_km[rows] + np.log1p(-lam_m * dx)
        self.log_kp[rows], self.log_km[rows] = kp, km
        hedged = np.maximum(math.log(THETA) + kp, math.log(1 - THETA) + km)
        self.alive[rows] &= possible & (hedged < self._thresh)
        self.s[rows] += x[rows]
        self.t[rows] = t_new.astype(np.int64)
        xbar = (0.5 + self.s[rows]) / (t_new + 1.0)
        self.sq[rows] += (x[rows] - xbar) ** 2

    def extend(self, values: Sequence[float]) -> "BettingCS":
        """Feed a sequence of observations to a single sequence (``batch == 1``)."""
        if self.batch != 1:
            raise ValueError("extend() is for batch == 1")
        for v in values:
            self.update(v)
        return self

    # -- reading ---------------------------------------------------------------------------
    def intervals(self) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) per sequence, on the original scale."""
        any_alive = self.alive.any(axis=1)
        first = np.argmax(self.alive, axis=1)
        last = len(self.m) - 1 - np.argmax(self.alive[:, ::-1], axis=1)
        fpc_lo = self.s / self.N
        fpc_hi = (self.s + self.N - self.t) / self.N
        lo_x = np.where(any_alive, self.m[first] - self.step, fpc_lo)
        hi_x = np.where(any_alive, self.m[last] + self.step, fpc_hi)
        lo_x = np.minimum(np.maximum(lo_x, fpc_lo), fpc_hi)
        hi_x = np.maximum(np.minimum(hi_x, fpc_hi), fpc_lo)
        w = self.hi - self.lo
        return self.lo + w * lo_x, self.lo + w * hi_x

    def interval(self, i: int = 0) -> tuple[float, float]:
        lo, hi = self.intervals()
        return float(lo[i]), float(hi[i])

    def means(self) -> np.ndarray:
        """Sample means on the original scale (nan before the first observation)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.lo + (self.hi - self.lo) * self.s / self.t


def interval_of(values: Sequence[float], N: int, alpha: float = 0.05, lo: float = -1.0, hi: float = 1.0,
                grid: int = 2001) -> tuple[float, float]:
    """The confidence sequence's interval after observing ``values`` in this order."""
    cs = BettingCS(N, alpha, lo, hi, grid)
    cs.extend(values)
    return cs.interval()


# --- the stopping rule ----------------------------------------------------------------------

@dataclass(frozen=True)
class StopRule:
    """When a cell (one variant's paired difference to the full model on one dataset) stops.

    Intervals are in percentage points (the 0-100 scale).  ``halfwidth``: stop once
    ``(hi - lo) / 2 <= halfwidth``; ``decide_sign``: also stop once the interval excludes 0;
    ``max_frac``: every cell stops when this fraction of the dataset's units was answered
    (the budget cap); a cell that saw every unit is exact.
    """

    halfwidth: float | None = None
    decide_sign: bool = False
    max_frac: float = 1.0
    alpha: float = 0.05

    def describe(self) -> str:
        parts = []
        if self.decide_sign:
            parts.append("stop when the interval excludes 0")
        if self.halfwidth is not None:
            parts.append(f"stop when the half-width <= {self.halfwidth:g} points")
        parts.append(f"at most {self.max_frac:.0%} of the questions" if self.max_frac < 1 else "up to every question")
        return f"{'; '.join(parts)}; {100 * (1 - self.alpha):g}% anytime-valid betting confidence sequence (WoR)"

    def reason(self, lo: float, hi: float, n: int, N: int) -> str | None:
        """Why a cell with interval ``[lo, hi]`` (points) after ``n`` of ``N`` units stops, or None."""
        if n >= N:
            return "complete"
        if self.decide_sign and (lo > 0 or hi < 0):
            return "sign decided"
        if self.halfwidth is not None and (hi - lo) / 2 <= self.halfwidth:
            return "half-width met"
        if n >= math.ceil(self.max_frac * N):
            return "budget cap"
        return None

    def stops(self, lo: np.ndarray, hi: np.ndarray, n: np.ndarray, N: int) -> np.ndarray:
        """:meth:`reason` is not None, vectorised over cells."""
        stop = (n >= N) | (n >= math.ceil(self.max_frac * N))
        if self.decide_sign:
            stop |= (lo > 0) | (hi < 0)
        if self.halfwidth is not None:
            stop |= (hi - lo) / 2 <= self.halfwidth
        return stop


# --- coverage simulation ---------------------------------------------------------------------

def synthetic_lattice(rng: np.random.Generator, N: int, effects_pp: Sequence[float], p_full: float = 0.7,
                      churn: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """A finite population of ``N`` questions: the full model's 0/1 outcomes ``f`` (N,) and
    one variant per target effect ``v`` (N, V).  Each variant agrees with ``f`` except that
    it loses questions ``f`` gets right and gains questions ``f`` gets wrong, at rates set so
    that the *expected* difference is the target; the true difference of the population is
    then whatever ``mean(v - f)`` turned out (coverage is checked against that)."""
    f = (rng.random(N) < p_full).astype(np.float64)
    V = len(effects_pp)
    v = np.repeat(f[:, None], V, axis=1)
    for j, eff in enumerate(effects_pp):
        e = eff / 100.0
        b = churn * min(p_full, 1 - p_full)  # answers that change either way
        loss, gain = (b - e, b) if e < 0 else (b, b + e)  # expected gain - loss = e (fractions of N)
        q_loss = min(1.0, loss / p_full)
        q_gain = min(1.0, gain / (1 - p_full))
        u = rng.random(N)
        v[:, j] = np.where(f == 1, (u >= q_loss).astype(float), (u < q_gain).astype(float))
    return f, v


def simulate_coverage(rule: StopRule, N: int, effects_pp: Sequence[float], runs: int, seed: int = 0,
                      round_size: int = 20, grid: int = 1001, p_full: float = 0.7) -> dict:
    """``runs`` synthetic lattices of ``N`` questions, each variant's cell stopped by ``rule``
    exactly as the adaptive sweep does (checked after every round of ``round_size``).

    Returns per effect: realised coverage of the true population difference, mean fraction
    of questions used, fraction of cells whose interval excluded 0, and the mean half-width."""
    rng = np.random.default_rng(seed)
    V = len(effects_pp)
    truth = np.empty((runs, V))
    diffs = np.empty((runs, V, N))
    for r in range(runs):
        f, v = synthetic_lattice(rng, N, effects_pp, p_full)
        perm = rng.permutation(N)
        d = (v - f[:, None]) * 100.0
        truth[r] = d.mean(axis=0)
        diffs[r] = d[perm].T
    B = runs * V
    flat = diffs.reshape(B, N)
    cs = BettingCS(N, rule.alpha, -100.0, 100.0, grid, batch=B)
    open_ = np.ones(B, dtype=bool)
    lo = np.full(B, -100.0)
    hi = np.full(B, 100.0)
    n_used = np.zeros(B, dtype=np.int64)
    for t in range(N):
        cs.update(flat[:, t], active=open_)
        n_used[open_] += 1
        if (t + 1) % round_size == 0 or t + 1 == N:
            l_, h_ = cs.intervals()
            lo[open_], hi[open_] = l_[open_], h_[open_]
            open_ &= ~rule.stops(lo, hi, n_used, N)
            if not open_.any():
                break
    tr = truth.reshape(B)
    covered = (lo - 1e-9 <= tr) & (tr <= hi + 1e-9)
    out = {"N": N, "runs": runs, "rule": rule.describe(), "effects": []}
    for j, eff in enumerate(effects_pp):
        sel = np.arange(runs) * V + j
        out["effects"].append({
            "effect_pp": float(eff), "cells": runs,
            "coverage": float(covered[sel].mean()),
            "mean_frac": float((n_used[sel] / N).mean()),
            "excludes_zero": float(((lo[sel] > 0) | (hi[sel] < 0)).mean()),
            "mean_halfwidth": float(((hi[sel] - lo[sel]) / 2).mean()),
        })
    out["lattice_coverage"] = float(covered.reshape(runs, V).all(axis=1).mean())
    return out


def mc_tolerance(nominal: float, runs: int, z: float = 3.0) -> float:
    """``z`` binomial standard errors of a coverage estimated from ``runs`` runs at ``nominal``."""
    return z * math.sqrt(nominal * (1 - nominal) / runs)
