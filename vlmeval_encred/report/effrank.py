"""Effective rank of a feature matrix (Roy & Vetterli, EUSIPCO 2007), from a Gram matrix.

For a matrix X (rows = tokens, columns = feature channels) with singular values
s_1..s_q (q = min(n, d)), let p_i = s_i / sum_j s_j.  The effective rank is

    erank(X) = exp(H(p)),   H(p) = -sum_i p_i log p_i   (0 log 0 = 0),

a real number in [1, rank(X)]: exactly k for k equal non-zero singular values, close
to 1 when one direction dominates.  It is computed on X as it is (not centred), as
Roy & Vetterli define it; an all-zero matrix gets 0.

Why a Gram matrix: encoder features at the fusion point are wide (d up to a few
thousand) and tall (tokens x images, hundreds of thousands of rows), so the rows are
never stacked.  ``G = X^T X`` (d x d) is accumulated in float64 image by image
(:class:`GramAccumulator`); its eigenvalues are s_i^2.  ``eigvalsh`` on the symmetric
float64 matrix, then s_i = sqrt(lambda_i) with eigenvalues at round-off level clipped to 0
(negative ones, and those below ``d * eps * lambda_max``, the error bound of a symmetric
eigensolver): left in, the d - r round-off eigenvalues of a rank-r matrix would become
singular values of ~1e-8 of the largest and, in a 4096-wide feature, bias the entropy
by ~1e-3.  Singular values cut this way are below ~1e-6 of the largest (d = 4096), so
their true share of the entropy is negligible.  The tests check matrices of known rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def effective_rank_from_singular_values(s: np.ndarray) -> float:
    """exp of the Shannon entropy of the normalised singular values (0 for all-zero ``s``)."""
    s = np.asarray(s, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"singular values must be a vector, got shape {s.shape}")
    if np.any(s < 0) or not np.all(np.isfinite(s)):
        raise ValueError("singular values must be finite and non-negative")
    total = s.sum()
    if total == 0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def singular_values_from_gram(gram: np.ndarray) -> np.ndarray:
    """Singular values of X from ``G = X^T X`` (or ``X X^T``): sqrt of the clipped eigenvalues."""
    g = np.asarray(gram, dtype=np.float64)
    if g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"a Gram matrix is square, got shape {g.shape}")
    if not np.all(np.isfinite(g)):
        raise ValueError("the Gram matrix has NaN or inf entries (features overflowed or were NaN)")
    lam = np.linalg.eigvalsh((g + g.T) / 2.0)
    top = float(lam.max(initial=0.0))
    tol = top * g.shape[0] * np.finfo(np.float64).eps  # eigvalsh's round-off is ~ eps * ||G||
    lam = np.where(lam > tol, lam, 0.0)
    return np.sqrt(lam)[::-1]


def effective_rank(x: np.ndarray) -> float:
    """Effective rank of ``x`` (n x d), via the smaller of the two Gram matrices, in float64."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D matrix (rows x features), got shape {x.shape}")
    g = x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x
    return effective_rank_from_singular_values(singular_values_from_gram(g))


@dataclass
class GramAccumulator:
    """``X^T X`` of row blocks added one at a time (float64), with the row and image counts."""

    dim: int
    gram: np.ndarray = field(init=False)
    rows: int = 0
    images: int = 0

    def __post_init__(self) -> None:
        self.gram = np.zeros((self.dim, self.dim), dtype=np.float64)

    def add(self, block: np.ndarray, images: int = 1) -> None:
        b = np.asarray(block, dtype=np.float64).reshape(-1, block.shape[-1])
        if b.shape[1] != self.dim:
            raise ValueError(f"feature width {b.shape[1]} does not match the accumulator's {self.dim}")
        self.gram += b.T @ b
        self.rows += b.shape[0]
        self.images += images

    def merge(self, other: "GramAccumulator") -> None:
        if other.dim != self.dim:
            raise ValueError(f"cannot merge widths {other.dim} and {self.dim}")
        self.gram += other.gram
        self.rows += other.rows
        self.images += other.images

    def effective_rank(self) -> float:
        return effective_rank_from_singular_values(singular_values_from_gram(self.gram))
