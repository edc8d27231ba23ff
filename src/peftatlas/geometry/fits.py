"""Best approximations of an update ``ΔW`` (``m×n``) inside structured families, at a stated budget.

Each fit is the closed-form (or alternating closed-form) projection onto one family::

    low rank k      truncated SVD                                  k(m+n) params
    circulant       c[(i−j) mod L], L = max(m, n): average each wrapped diagonal     L params
    Toeplitz        t[i−j]: average each diagonal                                    m+n−1 params
    Kronecker       Σ_{t≤k} A_t ⊗ B_t, A_t m1×n1: Van Loan–Pitsianis, i.e. the rank-k SVD of the
                    rearranged matrix R[(i1,j1),(i2,j2)] = ΔW[i1·m2+i2, j1·n2+j2]    k(m1n1+m2n2) params
    Fourier-sparse  the p real Fourier degrees of freedom with the most energy: keep the largest |FFT2|
                    coefficients in conjugate pairs (a pair costs 2 real params, a self-conjugate one 1)
    VeRA            diag(b)·B·diag(d)·A with A (r×n), B (m×r) fixed random bases regenerated from a
                    seed (the same bases for every layer of that shape): alternating least
                    squares, each half-step exact                                    m+r params
    row gains       diag(s)·W0  (output-channel gain, (IA)³ on k/v/q)                m params
    column gains    W0·diag(s)  (input-channel gain, (IA)³ on the FFN down-projection, LN tuning)   n params

``residual = ‖ΔW − Π ΔW‖_F / ‖ΔW‖_F`` and ``captured = 1 − residual²`` (the fraction of ‖ΔW‖² the
family explains). Every fit is deterministic given its inputs, so the same fit on a null matrix is a
fair control.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ._linalg import GeometryError, as_matrix, linalg_threads, rel_residual, same_shape, svdvals, top_svd


@dataclasses.dataclass
class Fit:
    """One structured approximation of a matrix."""

    family: str
    params: int
    residual: float
    approx: np.ndarray | None = dataclasses.field(default=None, repr=False)
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def captured(self) -> float:
        return 1.0 - self.residual**2


def _fit(family: str, params: int, target: np.ndarray, approx: np.ndarray, **detail: Any) -> Fit:
    return Fit(family, int(params), rel_residual(target, approx), approx, dict(detail))


# --- low rank -----------------------------------------------------------------------------------
def fit_low_rank(m: Any, k: int, with_approx: bool = True) -> Fit:
    """Truncated SVD (Eckart–Young): the best rank-``k`` approximation.

    The residual comes from the discarded singular values, ``Σ_{i>k} σ_i² / Σ σ_i²``; the matrix
    itself is built only when ``with_approx``.
    """
    a = as_matrix(m)
    if k < 1:
        raise GeometryError(f"rank k must be ≥ 1, got {k}")
    k = min(k, min(a.shape))
    params = k * sum(a.shape)
    if not with_approx:
        e = svdvals(a) ** 2
        total = float(e.sum())
        res = 0.0 if total == 0 else float(np.sqrt(max(e[k:].sum(), 0.0) / total))
        return Fit("low_rank", params, res, None, {"rank": k})
    u, s, vt = top_svd(a, k)
    return _fit("low_rank", params, a, (u * s) @ vt, rank=k)


# --- diagonal structures (averaging) --------------------------------------------------------------
def _average_by_index(a: np.ndarray, idx: np.ndarray, n_bins: int) -> np.ndarray:
    sums = np.bincount(idx.ravel(), weights=a.ravel(), minlength=n_bins)
    counts = np.bincount(idx.ravel(), minlength=n_bins)
    vals = np.divide(sums, counts, out=np.zeros(n_bins), where=counts > 0)
    return vals[idx]


def circulant_index(shape: tuple[int, int]) -> tuple[np.ndarray, int]:
    m, n = shape
    size = max(m, n)
    i, j = np.indices((m, n))
    return (i - j) % size, size


def fit_circulant(m: Any) -> Fit:
    """Nearest (cropped) circulant ``C[i,j] = c[(i−j) mod max(m,n)]``: mean of each wrapped diagonal."""
    a = as_matrix(m)
    idx, size = circulant_index(a.shape)
    return _fit("circulant", size, a, _average_by_index(a, idx, size))


def fit_toeplitz(m: Any) -> Fit:
    """Nearest Toeplitz ``T[i,j] = t[i−j]``: mean of each diagonal."""
    a = as_matrix(m)
    i, j = np.indices(a.shape)
    idx = i - j + a.shape[1] - 1
    return _fit("toeplitz", sum(a.shape) - 1, a, _average_by_index(a, idx, sum(a.shape) - 1))


# --- Kronecker ------------------------------------------------------------------------------------
def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def kronecker_shape(shape: tuple[int, int]) -> tuple[int, int]:
    """Factor shape ``(m1, n1)`` of ``A`` in ``A ⊗ B`` with the fewest parameters per Kronecker term.

    Excludes the trivial factorizations (one factor 1×1), which would be the matrix itself.
    """
    m, n = shape
    best: tuple[int, tuple[int, int]] | None = None
    for m1 in _divisors(m):
        for n1 in _divisors(n):
            m2, n2 = m // m1, n // n1
            if (m1 * n1 == 1) or (m2 * n2 == 1):
                continue
            cost = m1 * n1 + m2 * n2
            key = (cost, abs(m1 - n1) + abs(m2 - n2))
            if best is None or key < best[0]:
                best = (key, (m1, n1))  # type: ignore[assignment]
    if best is None:
        raise GeometryError(f"shape {shape} has no non-trivial Kronecker factorization")
    return best[1]


def kron_rearrange(a: np.ndarray, m1: int, n1: int) -> np.ndarray:
    """Van Loan's rearrangement: ``R[(i1,j1),(i2,j2)] = a[i1·m2+i2, j1·n2+j2]`` so ``A⊗B ↦ vec(A)vec(B)ᵀ``."""
    m, n = a.shape
    m2, n2 = m // m1, n // n1
    return a.reshape(m1, m2, n1, n2).transpose(0, 2, 1, 3).reshape(m1 * n1, m2 * n2)


def kron_unrearrange(r: np.ndarray, m1: int, n1: int, m2: int, n2: int) -> np.ndarray:
    return r.reshape(m1, n1, m2, n2).transpose(0, 2, 1, 3).reshape(m1 * m2, n1 * n2)


def fit_kronecker(m: Any, rank: int = 1, factor_shape: tuple[int, int] | None = None) -> Fit:
    """Best sum of ``rank`` Kronecker products ``A_t ⊗ B_t`` (Van Loan–Pitsianis)."""
    a = as_matrix(m)
    m1, n1 = factor_shape or kronecker_shape(a.shape)
    if a.shape[0] % m1 or a.shape[1] % n1:
        raise GeometryError(f"factor shape {(m1, n1)} does not divide matrix shape {a.shape}")
    m2, n2 = a.shape[0] // m1, a.shape[1] // n1
    r = kron_rearrange(a, m1, n1)
    k = max(1, min(rank, min(r.shape)))
    u, s, vt = top_svd(r, k)
    approx = kron_unrearrange((u * s) @ vt, m1, n1, m2, n2)
    return _fit("kronecker", k * (m1 * n1 + m2 * n2), a, approx, rank=k, factor_shape=[m1, n1, m2, n2])


# --- Fourier --------------------------------------------------------------------------------------
def fit_fourier(m: Any, n_params: int) -> Fit:
    """Best real approximation using at most ``n_params`` real Fourier degrees of freedom.

    The 2-D DFT is orthogonal up to a constant (Parseval), so the optimum keeps the coefficients with
    the largest ``|F|²``; a real matrix needs conjugate-symmetric support, so coefficients are kept in
    conjugate pairs (2 real parameters) or alone when self-conjugate (1 parameter).
    """
    a = as_matrix(m)
    if n_params < 1:
        raise GeometryError(f"n_params must be ≥ 1, got {n_params}")
    rows, cols = a.shape
    f = np.fft.fft2(a)
    i, j = np.indices(a.shape)
    flat = (i * cols + j).ravel()
    conj = (((-i) % rows) * cols + (-j) % cols).ravel()
    reps = np.flatnonzero(flat <= conj)  # one representative per conjugate class
    cost = np.where(conj[reps] == reps, 1, 2)
    energy = np.abs(f.ravel()[reps]) ** 2  # per-parameter energy is |F|² for both kinds
    order = np.argsort(-energy, kind="stable")
    cum = np.cumsum(cost[order])
    chosen = order[cum <= n_params]
    used = int(cost[chosen].sum())
    if used < n_params:  # one parameter left and the next group is a pair: add the best single
        rest = order[cum > n_params]
        singles = rest[cost[rest] == 1]
        if singles.size:
            chosen = np.append(chosen, singles[0])
            used += 1
    keep = np.zeros(a.size, dtype=bool)
    keep[reps[chosen]] = True
    keep[conj[reps[chosen]]] = True
    approx = np.real(np.fft.ifft2(np.where(keep.reshape(a.shape), f, 0)))
    return _fit("fourier", used, a, approx, coefficients=int(keep.sum()))


# --- VeRA -----------------------------------------------------------------------------------------
def vera_bases(shape: tuple[int, int], r: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Frozen random bases ``A (r×n)``, ``B (m×r)`` (Kaiming-uniform scale), a pure function of the seed.

    Every layer of the same shape gets the same bases, as VeRA shares them across layers.
    """
    m, n = shape
    rng = np.random.default_rng([seed, m, n, r])
    a = rng.uniform(-1.0, 1.0, (r, n)) * np.sqrt(3.0 / n)
    b = rng.uniform(-1.0, 1.0, (m, r)) * np.sqrt(3.0 / r)
    return a, b


def fit_vera(m: Any, r: int, seed: int = 0, iters: int = 10, bases: tuple[np.ndarray, np.ndarray] | None = None) -> Fit:
    """Best ``diag(b)·B·diag(d)·A`` with fixed shared bases, by exact alternating least squares.

    b-step (d fixed): row i is a 1-D regression, ``b_i = ⟨ΔW_i, K_i⟩ / ‖K_i‖²`` with ``K = B diag(d) A``.
    d-step (b fixed): r-dim least squares with Gram ``(Bᵀ diag(b²) B) ∘ (A Aᵀ)`` and right-hand side
    ``d-th entry = Σ_i b_i B[i,k] (ΔW Aᵀ)[i,k]``. Both steps are exact, so the error never increases.
    """
    t = as_matrix(m)
    if r < 1:
        raise GeometryError(f"VeRA rank r must be ≥ 1, got {r}")
    a, b_mat = bases if bases is not None else vera_bases(t.shape, r, seed)
    if a.shape != (r, t.shape[1]) or b_mat.shape != (t.shape[0], r):
        raise GeometryError(f"VeRA bases of shapes {a.shape}, {b_mat.shape} do not fit {t.shape} with r={r}")
    with linalg_threads():
        tt, ta, tb = (torch.from_numpy(np.ascontiguousarray(x)) for x in (t, a, b_mat))
        ga = ta @ ta.T                # (r, r)
        mat = tt @ ta.T               # (m, r) = ΔW Aᵀ
        d = torch.ones(r, dtype=torch.float64)
        for _ in range(iters):
            bd = tb * d[None, :]                          # B diag(d)
            num = (bd * mat).sum(1)                       # ⟨ΔW_i, K_i⟩
            den = ((bd @ ga) * bd).sum(1)                 # ‖K_i‖²
            b = torch.where(den > 1e-300, num / den.clamp_min(1e-300), torch.zeros_like(num))
            bb = tb * b[:, None]                          # diag(b) B
            gram = (bb.T @ bb) * ga
            rhs = (bb * mat).sum(0)
            ridge = 1e-12 * float(gram.diagonal().sum()) / r + 1e-300
            d = torch.linalg.solve(gram + ridge * torch.eye(r, dtype=gram.dtype), rhs)
        approx = ((b[:, None] * tb * d[None, :]) @ ta).numpy()
    return _fit("vera", t.shape[0] + r, t, approx, r=r, seed=seed)


# --- gains relative to W0 ---------------------------------------------------------------------------
def fit_row_gains(m: Any, w0: Any) -> Fit:
    """Best ``ΔW ≈ diag(s)·W0``: each output channel's change is a rescaling of its W0 row."""
    t, w = as_matrix(m, "delta"), as_matrix(w0, "W0")
    same_shape(t, w, "fit_row_gains")
    den = np.sum(w * w, axis=1)
    s = np.divide(np.sum(t * w, axis=1), den, out=np.zeros(t.shape[0]), where=den > 0)
    return _fit("row_gains", t.shape[0], t, s[:, None] * w)


def fit_col_gains(m: Any, w0: Any) -> Fit:
    """Best ``ΔW ≈ W0·diag(s)``: each input channel's change is a rescaling of its W0 column."""
    t, w = as_matrix(m, "delta"), as_matrix(w0, "W0")
    same_shape(t, w, "fit_col_gains")
    den = np.sum(w * w, axis=0)
    s = np.divide(np.sum(t * w, axis=0), den, out=np.zeros(t.shape[1]), where=den > 0)
    return _fit("col_gains", t.shape[1], t, w * s[None, :])


# --- equal budget ---------------------------------------------------------------------------------
STRUCTURED_FAMILIES = ("low_rank", "circulant", "toeplitz", "kronecker", "fourier", "vera")
GAIN_FAMILIES = ("row_gains", "col_gains")


def budget_fitters(shape: tuple[int, int], budget: int | None = None, w0: np.ndarray | None = None,
                   seed: int = 0) -> dict[str, Callable[[np.ndarray], Fit]]:
    """One fitting function per family, each sized to at most ``budget`` parameters.

    The default budget is a rank-1 LoRA's, ``m + n``: circulant (max(m,n)) and Toeplitz (m+n−1) fit in
    it at their natural size; low rank gets ``budget // (m+n)``, Kronecker as many terms as fit,
    Fourier ``budget`` real coefficients, VeRA ``r = budget − m``. The gain fits (with ``w0``) have
    their natural sizes m and n. Sizes depend only on the shape, so null matrices get the same fit.
    """
    m, n = shape
    p = int(budget if budget is not None else m + n)
    if p < 1:
        raise GeometryError(f"budget must be ≥ 1, got {p}")
    fitters: dict[str, Callable[[np.ndarray], Fit]] = {
        "low_rank": lambda x: fit_low_rank(x, max(1, p // (m + n)), with_approx=False),
        "circulant": fit_circulant,
        "toeplitz": fit_toeplitz,
        "fourier": lambda x: fit_fourier(x, p),
    }
    try:
        m1, n1 = kronecker_shape(shape)
        cost = m1 * n1 + (m // m1) * (n // n1)
        fitters["kronecker"] = lambda x: fit_kronecker(x, max(1, p // cost), (m1, n1))
    except GeometryError:
        pass
    r = min(p - m, min(m, n))
    if r >= 1:
        bases = vera_bases(shape, r, seed)
        fitters["vera"] = lambda x: fit_vera(x, r, seed, bases=bases)
    if w0 is not None:
        fitters["row_gains"] = lambda x: fit_row_gains(x, w0)
        fitters["col_gains"] = lambda x: fit_col_gains(x, w0)
    return fitters

