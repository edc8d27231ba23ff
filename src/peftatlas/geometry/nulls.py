"""Null models for every probe, and the z-score of a statistic against one.

Three nulls, each keeping some properties of ``ΔW`` and destroying others::

    perm   P ΔW Q          random row and column permutations: keeps the spectrum and the multiset of
                           entries, destroys coordinate ORDER (what circulant/Toeplitz/Fourier/Kronecker
                           fits rely on) and the alignment of rows/columns with W0's neurons;
    spec   Ũ diag(σ) Ṽᵀ    Haar-random singular vectors with ΔW's singular values: keeps the spectrum,
                           destroys alignment with ANY fixed basis (W0's, Fourier, coordinates);
    gauss  G·‖ΔW‖/‖G‖      iid Gaussian with the same Frobenius norm: destroys everything but the norm.

A statistic that is invariant under a null (low-rank energy under ``perm`` and ``spec``) gets
``invariant=True`` and no z-score: the null cannot tell it anything.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ._linalg import GeometryError, factored, haar_orthonormal, svdvals, thin_svd

NULL_KINDS = ("perm", "spec", "gauss")


def permuted(m: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``P m Q`` with independent uniformly random row and column permutations."""
    return m[rng.permutation(m.shape[0])][:, rng.permutation(m.shape[1])]


def permuted_factored(m: np.ndarray, svd: tuple[np.ndarray, np.ndarray, np.ndarray],
                      rng: np.random.Generator) -> np.ndarray:
    """:func:`permuted` (same draws from ``rng``), carrying its SVD ``(P U) Σ (Qᵀ V)ᵀ`` from ``m``'s."""
    rows, cols = rng.permutation(m.shape[0]), rng.permutation(m.shape[1])
    u, s, vt = svd
    return factored(u[rows], s, vt[:, cols], matrix=m[rows][:, cols])


def spectrum_matched(m: np.ndarray, rng: np.random.Generator, s: np.ndarray | None = None) -> np.ndarray:
    """A matrix with ``m``'s singular values and Haar-random singular vectors (it carries that SVD)."""
    s = svdvals(m) if s is None else s
    k = s.size
    u = haar_orthonormal(m.shape[0], k, rng)
    v = haar_orthonormal(m.shape[1], k, rng)
    return factored(u, s, v.T)


def gaussian(m: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """iid Gaussian matrix rescaled to ``m``'s Frobenius norm."""
    g = rng.standard_normal(m.shape)
    n = float(np.linalg.norm(m))
    return g * (n / float(np.linalg.norm(g))) if n > 0 else g * 0.0


class NullSampler:
    """Draws null matrices of one kind for one ``ΔW`` (the SVD is computed once).

    With ``factors`` (the default) ``perm`` and ``spec`` draws are :class:`~._linalg.Factored`: they carry
    their exact SVD, so statistics needing singular values/vectors skip the factorization. The draws
    themselves (and the random stream) are the same either way.
    """

    def __init__(self, m: np.ndarray, kind: str, rng: np.random.Generator, factors: bool = True) -> None:
        if kind not in NULL_KINDS:
            raise GeometryError(f"unknown null model {kind!r}; choose from {', '.join(NULL_KINDS)}")
        self.m, self.kind, self.rng, self.factors = m, kind, rng, factors
        self._s = svdvals(m) if kind == "spec" else None
        self._svd = thin_svd(m) if kind == "perm" and factors else None

    def draw(self) -> np.ndarray:
        if self.kind == "perm":
            return permuted_factored(self.m, self._svd, self.rng) if self._svd else permuted(self.m, self.rng)
        if self.kind == "spec":
            x = spectrum_matched(self.m, self.rng, self._s)
            return x if self.factors else np.asarray(x)
        return gaussian(self.m, self.rng)


@dataclasses.dataclass
class NullTest:
    """A statistic of the real matrix beside the same statistic on ``n`` null draws.

    ``z = (value − null_mean) / null_sd``; positive z means "more of the structure than the null".
    """

    value: float
    null: str
    null_mean: float
    null_sd: float
    n: int
    z: float | None
    invariant: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def summarize(value: float, draws: Sequence[float], kind: str, rel_tol: float = 1e-9) -> NullTest:
    """z-score of ``value`` against null ``draws`` (invariant when the draws never move)."""
    arr = np.asarray(draws, dtype=np.float64)
    mean = float(arr.mean()) if arr.size else float("nan")
    sd = float(arr.std(ddof=1)) if arr.size > 1 else float("nan")
    scale = max(abs(value), abs(mean), 1e-12)
    if arr.size and sd <= rel_tol * scale and abs(value - mean) <= 1e-6 * scale:
        return NullTest(value, kind, mean, 0.0, int(arr.size), None, invariant=True)
    if not math.isfinite(sd) or sd == 0.0:
        # The null never moves but the value differs: infinitely significant; cap for storage.
        z = None if not arr.size else math.copysign(1e6, value - mean)
        return NullTest(value, kind, mean, 0.0 if arr.size else float("nan"), int(arr.size), z)
    return NullTest(value, kind, mean, sd, int(arr.size), (value - mean) / sd)


def null_test(stat: Callable[[np.ndarray], float], m: np.ndarray, kind: str, draws: int,
              rng: np.random.Generator) -> NullTest:
    """``stat(m)`` against ``stat`` on ``draws`` matrices from null ``kind``."""
    if draws < 2:
        raise GeometryError(f"a null test needs at least 2 draws, got {draws}")
    sampler = NullSampler(m, kind, rng)
    return summarize(stat(m), [stat(sampler.draw()) for _ in range(draws)], kind)


def null_tests_many(stats: Callable[[np.ndarray], dict[str, float]], m: np.ndarray, kinds: Sequence[str],
                    draws: int, rng: np.random.Generator,
                    null_stats: Callable[[np.ndarray], dict[str, float]] | None = None,
                    factors: bool = True) -> dict[tuple[str, str], NullTest]:
    """Several statistics, computed together by ``stats(x) -> {name: value}``, on the SAME null draws.

    ``null_stats`` (default ``stats``) computes the same statistics on the draws, e.g. a cheaper
    implementation that skips what only the observed matrix's report needs; ``factors`` as in
    :class:`NullSampler`.
    """
    null_stats = null_stats or stats
    if draws < 2:
        raise GeometryError(f"a null test needs at least 2 draws, got {draws}")
    values = stats(m)
    out: dict[tuple[str, str], NullTest] = {}
    for kind in kinds:
        sampler = NullSampler(m, kind, rng, factors)
        samples: dict[str, list[float]] = {name: [] for name in values}
        for _ in range(draws):
            for name, v in null_stats(sampler.draw()).items():
                samples[name].append(v)
        for name, v in values.items():
            out[(name, kind)] = summarize(v, samples[name], kind)
    return out
