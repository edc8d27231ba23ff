"""Where does ``ΔW`` live relative to W0's own singular subspaces? (PiSSA vs MiLoRA vs LoRA §7.3)

With ``W0 = U0 Σ0 V0ᵀ`` (thin SVD, r0 = min(m, n) components), ``P = [:, :k]`` the principal and
``N = [:, r0−k:]`` the minor directions::

    left_principal   ‖U0_Pᵀ ΔW‖² / ‖ΔW‖²          null (random ΔW): k/m
    left_minor       ‖U0_Nᵀ ΔW‖² / ‖ΔW‖²
    right_principal  ‖ΔW V0_P‖² / ‖ΔW‖²           null: k/n
    right_minor      ‖ΔW V0_N‖² / ‖ΔW‖²
    block_pp         ‖U0_Pᵀ ΔW V0_P‖² / ‖ΔW‖²     null ≈ k²/(mn)   (PiSSA's subspace)
    block_mm         ‖U0_Nᵀ ΔW V0_N‖² / ‖ΔW‖²                       (MiLoRA's subspace)
    angle_principal  mean cos² of the principal angles between ΔW's top-k left singular
                     vectors and U0_P                                 null: k/m
    angle_minor      the same against U0_N
    basis_diagonal   Σ_i (u0_iᵀ ΔW v0_i)² / ‖ΔW‖²  (ΔW on the diagonal of W0's singular basis: SVFT's
                     'plain' pattern; null ≈ 1/max(m, n))
    amplification    ‖ΔW‖_F / ‖U_Δᵀ W0 V_Δ‖_F on ΔW's top-k directions (LoRA §7.3; large = ΔW
                     amplifies directions W0 does not emphasise)

Compare each with the spectrum-matched null (:mod:`peftatlas.geometry.nulls`), which keeps ΔW's
singular values but makes its singular vectors random.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ._linalg import GeometryError, as_matrix, frob2, same_shape, svdvals, thin_svd, top_svd


class W0Basis:
    """W0's thin SVD, computed once and shared by every alignment statistic."""

    def __init__(self, w0: Any, k: int) -> None:
        self.w0 = as_matrix(w0, "W0")
        self.u, self.s, self.vt = thin_svd(self.w0)
        r0 = self.s.size
        if not 1 <= k <= r0 // 2:
            raise GeometryError(f"k must be in [1, {r0 // 2}] for a W0 of shape {self.w0.shape}, got {k}")
        self.k = k
        self.up, self.un = self.u[:, :k], self.u[:, r0 - k:]
        self.vp, self.vn = self.vt[:k].T, self.vt[r0 - k:].T
        self.v = self.vt.T


def _mean_cos2(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared cosine of the principal angles between the column spans of ``a`` and ``b``."""
    c = svdvals(a.T @ b)
    return float(np.mean(np.clip(c, 0.0, 1.0) ** 2))


def alignment_stats(basis: W0Basis) -> Callable[[np.ndarray], dict[str, float]]:
    """``ΔW ↦ {statistic: value}`` with W0 fixed (for :func:`peftatlas.geometry.nulls.null_tests_many`)."""
    k = basis.k

    def stats(d: np.ndarray) -> dict[str, float]:
        t = frob2(d)
        if t == 0:
            raise GeometryError("alignment statistics are undefined for a zero update")
        u, _, vt = top_svd(d, k)
        top = u[:, :k]
        proj = float(np.linalg.norm(top.T @ basis.w0 @ vt[:k].T))
        return {
            "left_principal": frob2(basis.up.T @ d) / t,
            "left_minor": frob2(basis.un.T @ d) / t,
            "right_principal": frob2(d @ basis.vp) / t,
            "right_minor": frob2(d @ basis.vn) / t,
            "block_pp": frob2(basis.up.T @ d @ basis.vp) / t,
            "block_mm": frob2(basis.un.T @ d @ basis.vn) / t,
            "angle_principal": _mean_cos2(top, basis.up),
            "angle_minor": _mean_cos2(top, basis.un),
            "amplification": float(np.sqrt(t)) / proj if proj > 0 else float("inf"),
            "basis_diagonal": float(np.sum(np.sum(basis.u * (d @ basis.v), axis=0) ** 2)) / t,
        }

    return stats


def w0_alignment(delta: Any, w0: Any, k: int = 8) -> dict[str, float]:
    """Every alignment statistic of ``delta`` against ``w0`` (no null)."""
    d = as_matrix(delta, "delta")
    basis = W0Basis(w0, k)
    same_shape(d, basis.w0, "w0_alignment")
    return alignment_stats(basis)(d)
