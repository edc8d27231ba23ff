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

from ._linalg import GeometryError, as_matrix, known_svd, linalg_threads, rel_residual, same_shape, svdvals, top_svd


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
        e = svdvals(m if known_svd(m) is not None else a) ** 2  # a Factored null draw knows its σ
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


def kronecker_captured(m: np.ndarray, rank: int, factor_shape: tuple[int, int]) -> float:
    """``captured`` of :func:`fit_kronecker` from singular values only.

    The rearrangement is a permutation of entries, so ``‖ΔW − Σ A_t⊗B_t‖² = ‖R − R_k‖² = Σ_{i>k} σ_i(R)²``
    (Eckart–Young on R): an eigenvalue-only decomposition instead of eigenvectors and the rebuilt matrix.
    """
    r = kron_rearrange(np.asarray(m, dtype=np.float64), *factor_shape)
    e = svdvals(r) ** 2
    total = float(e.sum())
    k = max(1, min(rank, min(r.shape)))
    return 1.0 if total == 0.0 else 1.0 - float(max(e[k:].sum(), 0.0)) / total


# --- Fourier --------------------------------------------------------------------------------------
def _top_order(energy: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` largest entries, descending, ties by index: the head of a stable
    ``argsort(-energy)``, from a partial sort (O(N + count·log count) instead of O(N log N))."""
    if count >= energy.size:
        return np.argsort(-energy, kind="stable")
    head = np.argpartition(-energy, count - 1)[:count]
    cut = energy[head].min()
    head = np.union1d(head, np.flatnonzero(energy == cut))  # ties at the cut: keep all, order by index
    return head[np.lexsort((head, -energy[head]))][:count]


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
    order = _top_order(energy, n_params + 1)
    cum = np.cumsum(cost[order])
    chosen = order[cum <= n_params]
    used = int(cost[chosen].sum())
    if used < n_params:  # one parameter left and the next group is a pair: add the best single
        rest = np.setdiff1d(np.flatnonzero(cost == 1), chosen)  # the ≤ 4 self-conjugate classes
        singles = rest[np.lexsort((rest, -energy[rest]))]
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


def _vera_als(tt: torch.Tensor, ta: torch.Tensor, tb: torch.Tensor, ga: torch.Tensor,
              iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Alternating least squares for ``diag(b)·B·diag(d)·A ≈ T``; returns ``(b, d)``.

    The m×r products run in ``tt``'s dtype; the r×r Gram ``(Bᵀ diag(b²) B) ∘ (A Aᵀ)`` (``ga`` = A Aᵀ,
    float64) and its solve are always float64, so the d-step's conditioning does not meet float32.
    """
    r = ta.shape[0]
    mat = tt @ ta.T                                       # (m, r) = ΔW Aᵀ
    ga_w = ga.to(tt.dtype)
    d = torch.ones(r, dtype=tt.dtype)
    b = torch.zeros(tt.shape[0], dtype=tt.dtype)
    for _ in range(iters):
        bd = tb * d[None, :]                              # B diag(d)
        num = (bd * mat).sum(1)                           # ⟨ΔW_i, K_i⟩
        den = ((bd @ ga_w) * bd).sum(1)                   # ‖K_i‖²
        b = torch.where(den > 1e-300, num / den.clamp_min(1e-300), torch.zeros_like(num))
        bb = tb * b[:, None]                              # diag(b) B
        gram = (bb.T @ bb).double() * ga
        rhs = (bb * mat).sum(0).double()
        ridge = 1e-12 * float(gram.diagonal().sum()) / r + 1e-300
        d = torch.linalg.solve(gram + ridge * torch.eye(r, dtype=gram.dtype), rhs).to(tt.dtype)
    return b, d


def _vera_check(t: np.ndarray, r: int, a: np.ndarray, b_mat: np.ndarray) -> None:
    if a.shape != (r, t.shape[1]) or b_mat.shape != (t.shape[0], r):
        raise GeometryError(f"VeRA bases of shapes {a.shape}, {b_mat.shape} do not fit {t.shape} with r={r}")


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
    _vera_check(t, r, a, b_mat)
    with linalg_threads():
        tt, ta, tb = (torch.from_numpy(np.ascontiguousarray(x)) for x in (t, a, b_mat))
        b, d = _vera_als(tt, ta, tb, ta @ ta.T, iters)
        approx = ((b[:, None] * tb * d[None, :]) @ ta).numpy()
    return _fit("vera", t.shape[0] + r, t, approx, r=r, seed=seed)


class VeraCapture:
    """``captured`` of :func:`fit_vera` for many matrices of one shape: bases and ``A Aᵀ`` prepared once.

    The m×r / r×n products (all but the r×r solve) run in float32. Precision: each product has relative
    error ≲ √r·2⁻²⁴ ≈ 1e-6, the Gram solve stays float64, and ALS steps are exact projections, so the
    iterates move by O(1e-6) relative and ``captured = 1 − ‖ΔW − Π ΔW‖²/‖ΔW‖²`` by ≲ 1e-5 absolute —
    far below the spread of ``captured`` over null draws that a z-score divides by (tested against
    the float64 :func:`fit_vera` in ``tests/test_geometry.py``).
    """

    def __init__(self, shape: tuple[int, int], r: int, seed: int = 0, iters: int = 10,
                 dtype: torch.dtype = torch.float32) -> None:
        a, b_mat = vera_bases(shape, r, seed)
        self.iters, self.dtype = iters, dtype
        self.ta = torch.from_numpy(a).to(dtype)
        self.tb = torch.from_numpy(b_mat).to(dtype)
        self.ga = torch.from_numpy(a @ a.T)

    def __call__(self, x: np.ndarray) -> float:
        with linalg_threads():
            tt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
            b, d = _vera_als(tt.to(self.dtype), self.ta, self.tb, self.ga, self.iters)
            approx = ((b[:, None] * self.tb * d[None, :]) @ self.ta).double()
            total = float((tt * tt).sum())
            res = float(((tt - approx) ** 2).sum())
        return 0.0 if total == 0.0 else 1.0 - res / total


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



def budget_captured(shape: tuple[int, int], budget: int | None = None, w0: np.ndarray | None = None,
                    seed: int = 0) -> dict[str, Callable[[np.ndarray], float]]:
    """``x ↦ captured`` for each family of :func:`budget_fitters`, the same fits without the reports.

    For the null draws, where only ``captured`` is used: Kronecker from singular values only
    (:func:`kronecker_captured`), VeRA through :class:`VeraCapture` (bases and ``A Aᵀ`` prepared once,
    float32 products); the other families call their fitter.
    """
    fitters = budget_fitters(shape, budget, w0, seed)
    out: dict[str, Callable[[np.ndarray], float]] = {fam: _captured_of(f) for fam, f in fitters.items()}
    m, n = shape
    p = int(budget if budget is not None else m + n)
    if "kronecker" in fitters:
        m1, n1 = kronecker_shape(shape)
        rank = max(1, p // (m1 * n1 + (m // m1) * (n // n1)))
        out["kronecker"] = lambda x: kronecker_captured(x, rank, (m1, n1))
    if "vera" in fitters:
        out["vera"] = VeraCapture(shape, min(p - m, min(m, n)), seed)
    return out


def _captured_of(fitter: Callable[[np.ndarray], Fit]) -> Callable[[np.ndarray], float]:
    return lambda x: fitter(x).captured
