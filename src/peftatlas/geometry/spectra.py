"""Spectral statistics of an update ``ΔW`` and the seed-consistent rank of two updates.

Definitions (σ_1 ≥ σ_2 ≥ … the singular values of ``M``)::

    E_k    = Σ_{i≤k} σ_i² / Σ_i σ_i²                energy in the top k directions
    r_f    = min{k : E_k ≥ f}                        rank at energy fraction f (r90: f = 0.9)
    sr     = ‖M‖_F² / σ_1²                           stable rank
    erank  = exp(−Σ p_i log p_i),  p_i = σ_i / Σ σ_j  effective rank (Roy & Vetterli 2007)

Seed-consistent rank (two full fine-tuning seeds a, b with left singular vectors U_a, U_b)::

    φ(k)   = ‖U_a[:, :k]ᵀ U_b[:, :k]‖_F² / k         subspace overlap; two random subspaces give ≈ k/d
    w      = min(2k, d)                                   window (absorbs order swaps of close σ's)
    c_k    = ½(‖U_b[:, :w]ᵀ u_a,k‖² + ‖U_a[:, :w]ᵀ u_b,k‖²)
    null   : ‖P_w u‖² of a uniform unit vector ~ Beta(w/2, (d−w)/2): mean w/d, var 2w(d−w)/(d²(d+2))
    k*     = #{k : c_k ≥ w/d + z·sd_null(w)}

``k*`` counts the directions of one seed's update that reappear among the other seed's leading
directions more than chance allows, so optimisation noise (different in every seed) does not count
as rank. ``r90`` of a
single update counts that noise; reporting both separates "the signal is low-rank" from "the update
is low-rank".
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ._linalg import GeometryError, as_matrix, same_shape, svdvals, top_svd


def singular_values(m: Any) -> np.ndarray:
    """Singular values of ``m``, descending (float64)."""
    return svdvals(as_matrix(m))


def energy_top_k(s: np.ndarray, k: int) -> float:
    """Fraction of ``Σσ²`` in the top ``k`` singular values (1.0 for a zero matrix)."""
    if k < 0:
        raise GeometryError(f"k must be ≥ 0, got {k}")
    e = s.astype(np.float64) ** 2
    total = float(e.sum())
    return 1.0 if total == 0.0 else float(e[:k].sum() / total)


def rank_at_energy(s: np.ndarray, fraction: float = 0.9) -> int:
    """Smallest ``k`` with ``E_k ≥ fraction``."""
    if not 0.0 < fraction <= 1.0:
        raise GeometryError(f"energy fraction must be in (0, 1], got {fraction}")
    e = s.astype(np.float64) ** 2
    total = float(e.sum())
    if total == 0.0:
        return 0
    cum = np.cumsum(e) / total
    return int(np.searchsorted(cum, fraction - 1e-12) + 1)


def stable_rank(s: np.ndarray) -> float:
    """``Σσ² / σ_1²`` (0 for a zero matrix)."""
    return 0.0 if s.size == 0 or s[0] == 0.0 else float(np.sum(s.astype(np.float64) ** 2) / s[0] ** 2)


def effective_rank(s: np.ndarray) -> float:
    """``exp`` of the Shannon entropy of the normalised singular values."""
    total = float(np.sum(s))
    if total == 0.0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-np.sum(p * np.log(p))))


def spectrum_summary(m: Any, ks: tuple[int, ...] = (1, 4, 8, 16)) -> dict[str, float]:
    """Every spectral statistic of ``m`` in one dictionary (``energy_top{k}`` for ``k < min(m, n)``)."""
    s = singular_values(m)
    out = {"stable_rank": stable_rank(s), "effective_rank": effective_rank(s), "r90": float(rank_at_energy(s, 0.9)),
           "max_rank": float(s.size)}
    for k in ks:
        if k < s.size:
            out[f"energy_top{k}"] = energy_top_k(s, k)
    return out


def subspace_overlap(ua: np.ndarray, ub: np.ndarray) -> float:
    """LoRA's φ: ``‖Uaᵀ Ub‖_F² / k`` for two ``d×k`` orthonormal bases (1 = same subspace)."""
    if ua.shape != ub.shape:
        raise GeometryError(f"subspace bases must have the same shape, got {ua.shape} and {ub.shape}")
    k = ua.shape[1]
    return float(np.sum((ua.T @ ub) ** 2) / k) if k else 0.0


def projection_null(k: int, d: int) -> tuple[float, float]:
    """Mean and sd of ``‖P u‖²`` for a uniform unit vector ``u`` in R^d and a fixed rank-k projector P."""
    if not 0 <= k <= d:
        raise GeometryError(f"need 0 ≤ k ≤ d, got k={k}, d={d}")
    mean = k / d
    var = 2.0 * k * (d - k) / (d * d * (d + 2.0))
    return mean, float(np.sqrt(var))


@dataclasses.dataclass
class SeedRank:
    """Result of :func:`seed_consistent_rank`."""

    k_star: int
    d: int
    z: float
    overlap: list[float]            # φ(k), k = 1..K
    overlap_null: list[float]       # k/d
    direction_overlap: list[float]  # c_k
    direction_threshold: list[float]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def seed_consistent_rank(delta_a: Any, delta_b: Any, max_k: int | None = None, z: float = 3.0,
                         side: str = "left") -> SeedRank:
    """Number of update directions shared by two independently seeded fine-tuning runs.

    ``side="left"`` compares output-space directions (columns of U), ``"right"`` input-space ones.
    Directions are tested up to ``max_k`` (default and cap: d/4, so every window 2k stays ≤ d/2,
    where the null still has spread).
    """
    a, b = as_matrix(delta_a, "delta_a"), as_matrix(delta_b, "delta_b")
    same_shape(a, b, "seed_consistent_rank")
    if side not in ("left", "right"):
        raise GeometryError(f"side must be 'left' or 'right', got {side!r}")
    if side == "right":
        a, b = a.T, b.T
    d = a.shape[0]
    cap = max(1, min(min(a.shape), d // 4))
    kmax = cap if max_k is None else max(1, min(int(max_k), cap))
    ua = top_svd(a, 2 * kmax)[0]
    ub = top_svd(b, 2 * kmax)[0]
    overlap, null, cdir, thr = [], [], [], []
    width = min(2 * kmax, ua.shape[1])
    cross = ua[:, :width].T @ ub[:, :width]  # cosines between individual singular vectors
    sq = cross**2
    for k in range(1, kmax + 1):
        overlap.append(float(sq[:k, :k].sum() / k))
        null.append(k / d)
        w = min(2 * k, width)
        c = 0.5 * (float(sq[k - 1, :w].sum()) + float(sq[:w, k - 1].sum()))
        mean, sd = projection_null(w, d)
        cdir.append(c)
        thr.append(mean + z * sd)
    k_star = int(sum(c >= t for c, t in zip(cdir, thr)))
    return SeedRank(k_star=k_star, d=d, z=z, overlap=overlap, overlap_null=null, direction_overlap=cdir,
                    direction_threshold=thr)
