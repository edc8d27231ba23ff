"""Is the update a rotation of the neurons? (OFT, BOFT, GOFT, HRA) And magnitude vs direction (DoRA).

PyTorch layout: ``W ∈ R^{m×n}``, row i is neuron i's input weight vector. The rotation family acts
on the INPUT side, ``W' = W0 Q`` with ``Q ∈ O(n)``: every neuron is rotated by the same Q, which keeps
all neuron norms and pairwise angles. With ``W1 = W0 + ΔW``::

    procrustes_capture  1 − min_Q ‖W1 − W0 Q‖² / ‖ΔW‖²; Q* from the SVD of W0ᵀW1, computed through
                        W0's thin SVD (W0ᵀW1 = V0 C, C = Σ0 U0ᵀ W1 = Uc Σ Vcᵀ ⇒ W0 Q* = U0 Σ0 Uc Vcᵀ)
    rotation_fraction   f = ‖W0 skew(M)‖² / (‖W0 skew(M)‖² + ‖W0 sym(M)‖²), M = W0⁺ΔW; to first order
                        a rotation is Q ≈ I + S with S skew, so f → 1; a random ΔW gives ≈ 0.5
    gram_change         ‖W1 W1ᵀ − W0 W0ᵀ‖_F / ‖W0 W0ᵀ‖_F   (neuron Gram matrix; 0 for a rotation)
    he_change           (HE(W1) − HE(W0)) / HE(W0), HE(W) = Σ_{i≠j} 1/‖ŵ_i − ŵ_j‖ over unit rows
                        (hyperspherical energy, OFT Eq. 1; 0 for a rotation)

Magnitude/direction (DoRA §3, per output row n)::

    ΔM = mean_n |‖w1_n‖ − ‖w0_n‖|,   ΔD = mean_n (1 − cos(w1_n, w0_n))

DoRA reports corr(ΔM, ΔD) over layers and checkpoints: negative for full fine-tuning, positive for
LoRA. :func:`magnitude_direction_correlation` gives the Pearson r over matrices with a bootstrap CI.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ._linalg import GeometryError, as_matrix, linalg_threads, polar_rows, rng_of, same_shape, thin_svd, to_torch


class RotationBasis:
    """W0's thin SVD (with the directions kept for its pseudo-inverse), Gram matrix and HE, shared by many ΔW.

    The products run in torch float64 with bounded threads (see :mod:`._linalg`).
    """

    def __init__(self, w0: Any, rcond: float = 1e-6) -> None:
        self.w0_np = as_matrix(w0, "W0")
        u, s, vt = thin_svd(self.w0_np)
        keep = s > rcond * (s[0] if s.size else 0.0)
        self.w0, self.u, self.s = to_torch(self.w0_np), to_torch(u), to_torch(s)
        self.k = int(keep.sum())                     # kept directions: a prefix, σ descending
        self.v = to_torch(vt.T)                      # V0, n×r0
        self.vk_t = to_torch(vt[keep])               # V_kᵀ, k×n
        self.inv_sk = to_torch(1.0 / s[keep])        # Σ_k⁻¹
        self.gram0 = self.w0 @ self.w0.T
        self.he0 = hyperspherical_energy(self.w0_np)


def _sq(x: torch.Tensor) -> float:
    return float((x * x).sum())


def procrustes_capture(basis: RotationBasis, dw: np.ndarray) -> float:
    """Fraction of ‖ΔW‖² explained by the best input-side rotation ``W0 Q`` (polar factor of C)."""
    w1 = basis.w0_np + dw
    c = basis.s.numpy()[:, None] * (basis.u.numpy().T @ w1)
    w0q = (basis.u.numpy() * basis.s.numpy()[None, :]) @ polar_rows(c)
    t = float(np.sum(dw * dw))
    return 0.0 if t == 0 else 1.0 - float(np.sum((w1 - w0q) ** 2)) / t


def rotation_fraction(basis: RotationBasis, dw: np.ndarray) -> float:
    """Skew share of ``W0·M``, ``M = W0⁺ΔW``, without forming the n×n M or any m×m matrix.

    Both ``W0 M = P ΔW = U_k X`` (P = W0W0⁺, ``X = U_kᵀ ΔW``) and ``W0 Mᵀ = W0 ΔWᵀ (W0⁺)ᵀ =
    U0 · Σ0 (V0ᵀ Xᵀ) Σ_k⁻¹ V_kᵀ`` lie in the span of U0's orthonormal columns, so their norms are taken on
    the r0×n coordinates: O(r0·m·n) work instead of O(m²·n), the same quantity up to rounding.
    """
    with linalg_threads():
        d = to_torch(dw)
        x = basis.u[:, :basis.k].T @ d                                          # k×n
        wmt = (basis.s[:, None] * (basis.v.T @ x.T) * basis.inv_sk[None, :]) @ basis.vk_t  # r0×n
        wm = torch.zeros_like(wmt)
        wm[:basis.k] = x
        a, b = _sq(0.5 * (wm - wmt)), _sq(0.5 * (wm + wmt))
    return 0.0 if a + b == 0 else a / (a + b)


def gram_change(basis: RotationBasis, dw: np.ndarray) -> float:
    with linalg_threads():
        w1 = basis.w0 + to_torch(dw)
        return float(torch.linalg.norm(w1 @ w1.T - basis.gram0) / max(float(torch.linalg.norm(basis.gram0)), 1e-300))


def hyperspherical_energy(w: np.ndarray, eps: float = 1e-12) -> float:
    """``Σ_{i≠j} 1/‖ŵ_i − ŵ_j‖`` over the unit-normalised rows of ``w`` (zero rows are skipped)."""
    norms = np.linalg.norm(w, axis=1)
    rows = w[norms > 0] / norms[norms > 0, None]
    cos = np.clip(rows @ rows.T, -1.0, 1.0)
    dist = np.sqrt(np.maximum(2.0 - 2.0 * cos, 0.0))
    np.fill_diagonal(dist, np.inf)
    return float(np.sum(1.0 / np.maximum(dist, eps)))


def he_change(basis: RotationBasis, dw: np.ndarray) -> float:
    return (hyperspherical_energy(basis.w0_np + dw) - basis.he0) / basis.he0 if basis.he0 else 0.0


def rotation_stats(basis: RotationBasis) -> Callable[[np.ndarray], dict[str, float]]:
    """``ΔW ↦ {statistic: value}`` with W0 fixed (for :func:`peftatlas.geometry.nulls.null_tests_many`)."""
    return lambda d: {
        "procrustes_capture": procrustes_capture(basis, d),
        "rotation_fraction": rotation_fraction(basis, d),
        "gram_change": gram_change(basis, d),
        "he_change": he_change(basis, d),
    }


def rotation_summary(delta: Any, w0: Any) -> dict[str, float]:
    d = as_matrix(delta, "delta")
    basis = RotationBasis(w0)
    same_shape(d, basis.w0_np, "rotation_summary")
    return rotation_stats(basis)(d)


# --- magnitude vs direction -----------------------------------------------------------------------
def magnitude_direction(w0: Any, w1: Any) -> tuple[float, float]:
    """DoRA's ``(ΔM, ΔD)`` for one matrix: mean |row-norm change| and mean (1 − row cosine)."""
    a, b = as_matrix(w0, "W0"), as_matrix(w1, "W1")
    same_shape(a, b, "magnitude_direction")
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    ok = (na > 0) & (nb > 0)
    if not ok.any():
        raise GeometryError("magnitude_direction: every row of W0 or W1 is zero")
    cos = np.sum(a[ok] * b[ok], axis=1) / (na[ok] * nb[ok])
    return float(np.mean(np.abs(nb - na))), float(np.mean(1.0 - np.clip(cos, -1.0, 1.0)))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    den = float(np.sqrt(np.sum(x * x) * np.sum(y * y)))
    return float(np.sum(x * y) / den) if den > 0 else float("nan")


def magnitude_direction_correlation(points: Sequence[tuple[float, float]], n_boot: int = 2000,
                                    seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Pearson r of (ΔM, ΔD) over matrices, with a percentile bootstrap CI (resampling matrices)."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] < 3:
        raise GeometryError(f"need at least 3 (ΔM, ΔD) points, got {pts.shape[0] if pts.ndim == 2 else 0}")
    r = pearson(pts[:, 0], pts[:, 1])
    rng = rng_of(seed)
    boots = []
    for _ in range(n_boot):
        s = pts[rng.integers(0, len(pts), len(pts))]
        v = pearson(s[:, 0], s[:, 1])
        if np.isfinite(v):
            boots.append(v)
    lo, hi = (np.quantile(boots, [(1 - level) / 2, (1 + level) / 2]) if boots else (np.nan, np.nan))
    return {"r": r, "ci_low": float(lo), "ci_high": float(hi), "n": len(pts)}
