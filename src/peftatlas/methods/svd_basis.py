"""Methods that act in W0's own singular basis: SVFT, SSVD, PSOFT, AntiPaSTO.

All four freeze (part of) the SVD ``W0 = U diag(σ) Vᵀ`` and train a small map ``M(θ)`` between the
right and left singular vectors they keep (``k`` of them):

    ΔW = U_k [M(θ) − M(θ0)] V_kᵀ,       M(θ0) = diag(σ_k)       (exactly 0 at init)
    y = W0 x + b + U_k · Δz(V_kᵀ x)                              (fast path: O(k·(d_in + d_out)) per token)

Each method states ``Δz`` (the change in the k-dimensional coordinates, computed with element-wise
and k × k operations) and, independently, the dense k × k core ``M(θ) − M(θ0)`` used for merging and
as the test oracle. The SVD is computed once per layer (:func:`._svd.weight_svd`).

* **SVFT** (Lingam et al., NeurIPS 2024, arXiv:2405.19597) — hypothesis: fine-tuning re-weights and
  locally mixes W0's *own* singular directions; ``M = diag(σ) + sparse(Ω, m)`` on all
  ``k = min(d_out, d_in)`` directions, Ω a band ``|i − j| ≤ w`` (w = 0: SVFT_P) or a fixed random
  set of the same size.
* **SSVD** (Wang, Watanabe, Van hamme, ASRU 2025, arXiv:2509.02830) — hypothesis: under domain shift
  the *input* basis drifts while the output (semantic) basis stays; ``M = diag(σ_k + Δσ) G`` with
  ``G`` a rotation of the top-k right singular vectors (first-order Cayley ``I − 2K`` by default, as
  in the paper; exact Cayley or a free matrix on request).
* **PSOFT** (arXiv:2505.11235) — hypothesis: OFT's rotations are only needed inside W0's principal
  subspace; ``M = diag(σ_r) · diag(b) R diag(a)`` with R Cayley-orthogonal (r × r) and optional
  magnitude vectors a, b.
* **AntiPaSTO** (Clark, 2026, arXiv:2601.07473) — hypothesis: a behaviour is a direction in the
  principal singular subspace that can be steered both ways; ``M = R_u(α) diag(σ + α δσ) R_v(α)ᵀ``
  with Cayley rotations of the top-r singular vectors (angle soft-clamped) and a steering coefficient
  ``α`` (+1 / −1 give opposite shifts; 0 is the base model).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.layer import AdaptedModule
from ..core.method import LayerAdapter, MethodError, register
from ._rotation import cayley, orthogonality_error, packed_size, skew
from ._svd import top_indices, weight_svd
from .oft import check_cayley


class SubspaceAdapter(LayerAdapter):
    """``ΔW = U_k (M(θ) − diag σ_k) V_kᵀ`` on ``k`` frozen singular triplets of ``W0``.

    Subclasses implement :meth:`coords_delta` (fast, on coordinates) and :meth:`core_delta` (dense
    ``k × k``). ``persist_basis``: store ``U_k, V_k, σ_k`` in the adapter file (cheap when ``k`` is a
    small rank) or recompute them from the base weights at load time (canonical signs).
    """

    family = "svd-basis"
    persist_basis: ClassVar[bool] = True

    def _init_basis(self, base: nn.Module, k: int, which: str = "principal") -> None:
        self.check_rank(base, k)
        U, S, Vh = weight_svd(base.weight)
        idx = top_indices(S.shape[0], k, which)
        keep = self.persist_basis
        self.register_buffer("basis_U", U[:, idx].contiguous().clone(), persistent=keep)  # (d_out, k)
        self.register_buffer("basis_Vh", Vh[idx].contiguous().clone(), persistent=keep)  # (k, d_in)
        self.register_buffer("sigma", S[idx].contiguous().clone(), persistent=keep)  # (k,)

    def coords_delta(self, z: Tensor) -> Tensor:
        """``Δz = (M(θ) − diag σ) z`` for coordinates ``z = V_kᵀ x`` (rows)."""
        raise NotImplementedError

    def core_delta(self) -> Tensor:
        """Dense ``M(θ) − diag σ`` (k × k)."""
        raise NotImplementedError

    @classmethod
    def check_rank(cls, base: nn.Module, r: int) -> None:
        d_out, d_in = cls.dims(base)
        if r < 1 or r > min(d_out, d_in):
            raise MethodError(f"{cls.name}: rank r = {r} must be in [1, min(d_out, d_in) = {min(d_out, d_in)}]")

    def delta_output(self, x: Tensor) -> Tensor:
        z = F.linear(x.to(self.basis_Vh.dtype), self.basis_Vh)
        return F.linear(self.coords_delta(z), self.basis_U)

    def delta_weight(self, weight: Tensor) -> Tensor:
        return (self.basis_U @ self.core_delta() @ self.basis_Vh).to(weight.dtype)


# --------------------------------------------------------------------------------------------- SVFT
def band_pattern(k: int, band: int) -> tuple[Tensor, Tensor]:
    """Row/column indices of the band ``|i − j| ≤ band`` of a ``k × k`` matrix."""
    rows, cols = [], []
    for offset in range(-min(band, k - 1), min(band, k - 1) + 1):
        i = torch.arange(max(0, -offset), min(k, k - offset))
        rows.append(i)
        cols.append(i + offset)
    return torch.cat(rows), torch.cat(cols)


def band_size(k: int, band: int) -> int:
    w = min(band, k - 1)
    return k * (2 * w + 1) - w * (w + 1)


@register("svft")
class SVFT(SubspaceAdapter):
    summary = "ΔW = U·sparse(Ω, m)·Vᵀ on all singular directions of W0; Ω = band |i−j| ≤ w or random."
    formula = "|Ω| = k(2w+1) − w(w+1), k = min(d_in, d_out)"
    size_knob: ClassVar[str | None] = "band"
    test_config: ClassVar[dict[str, Any]] = {"band": 1}
    persist_basis: ClassVar[bool] = False  # full U, V (O(d²)): recomputed from W0 at load

    @dataclasses.dataclass
    class Config:
        band: int = 0  # w: 0 is SVFT_P (singular values only)
        pattern: str = "banded"  # "banded" or "random" (same number of entries, fixed positions)
        seed: int = 0  # positions of the random pattern

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        if cfg.band < 0:
            raise MethodError(f"svft: band must be ≥ 0, got {cfg.band}")
        if cfg.pattern not in ("banded", "random"):
            raise MethodError(f"svft: pattern must be 'banded' or 'random', got {cfg.pattern!r}")

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        k = min(self.dims(base))
        self._init_basis(base, k)
        rows, cols = band_pattern(k, cfg.band)
        if cfg.pattern == "random":
            g = torch.Generator().manual_seed(cfg.seed)
            flat = torch.randperm(k * k, generator=g)[: rows.numel()].sort().values
            rows, cols = flat // k, flat % k
        self.register_buffer("omega_rows", rows.to(self.basis_U.device), persistent=False)
        self.register_buffer("omega_cols", cols.to(self.basis_U.device), persistent=False)
        self.svft_m = nn.Parameter(torch.zeros(rows.numel()))

    def coords_delta(self, z: Tensor) -> Tensor:
        contrib = z[..., self.omega_cols] * self.svft_m
        return z.new_zeros(z.shape).index_add(-1, self.omega_rows, contrib)

    def core_delta(self) -> Tensor:
        k = self.sigma.shape[0]
        M = torch.zeros(k, k, dtype=self.svft_m.dtype, device=self.svft_m.device)
        return M.index_put((self.omega_rows, self.omega_cols), self.svft_m)

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Config) -> int:
        return band_size(min(cls.dims(base)), cfg.band)


# --------------------------------------------------------------------------------------------- SSVD
ROTATIONS = ("first_order", "cayley", "free")


@register("ssvd")
class SSVD(SubspaceAdapter):
    summary = "W' = U(Σ + ΔΣ)G Vᵀ: rotate the top-r right singular vectors (input basis), shift their σ."
    formula = "r + r(r−1)/2 (free rotation: r + r²)"
    size_knob: ClassVar[str | None] = "r"
    test_config: ClassVar[dict[str, Any]] = {"r": 6}

    @dataclasses.dataclass
    class Config:
        r: int = 16  # k in the paper: number of adapted principal components
        rotation: str = "first_order"  # G = I − 2K (paper default), "cayley" (exact), "free" (G = I + F)

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        if cfg.rotation not in ROTATIONS:
            raise MethodError(f"ssvd: rotation must be one of {ROTATIONS}, got {cfg.rotation!r}")

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        self._init_basis(base, cfg.r)
        size = cfg.r * cfg.r if cfg.rotation == "free" else packed_size(cfg.r)
        self.ssvd_k = nn.Parameter(torch.zeros(size))
        self.ssvd_dsigma = nn.Parameter(torch.zeros(cfg.r))

    def rotation(self) -> Tensor:
        """``G_k`` (r × r)."""
        r = self.cfg.r
        eye = torch.eye(r, dtype=self.ssvd_k.dtype, device=self.ssvd_k.device)
        if self.cfg.rotation == "free":
            return eye + self.ssvd_k.view(r, r)
        K = skew(self.ssvd_k, r)
        return eye - 2.0 * K if self.cfg.rotation == "first_order" else cayley(K)

    def orthogonality_error(self) -> float:
        """0 (rounding) for ``cayley``; O(‖K‖²) for the paper's first-order ``I − 2K``."""
        return orthogonality_error(self.rotation())

    def coords_delta(self, z: Tensor) -> Tensor:
        return (self.sigma + self.ssvd_dsigma) * (z @ self.rotation().T) - self.sigma * z

    def core_delta(self) -> Tensor:
        return torch.diag(self.sigma + self.ssvd_dsigma) @ self.rotation() - torch.diag(self.sigma)

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Config) -> int:
        cls.check_rank(base, cfg.r)
        return cfg.r + (cfg.r * cfg.r if cfg.rotation == "free" else packed_size(cfg.r))


# -------------------------------------------------------------------------------------------- PSOFT
@register("psoft")
class PSOFT(SubspaceAdapter):
    summary = "ΔW = U_r diag(σ_r)(diag(b) R diag(a) − I) V_rᵀ: OFT inside W0's principal subspace."
    formula = "r(r−1)/2 + r·[mag_a] + r·[mag_b]  (orth=False: r² + …)"
    size_knob: ClassVar[str | None] = "r"
    test_config: ClassVar[dict[str, Any]] = {"r": 6}

    @dataclasses.dataclass
    class Config:
        r: int = 32
        orth: bool = True  # Cayley-orthogonal R; False: a free r × r matrix (I at init)
        mag_a: bool = True  # trainable input-side scale a (1 at init)
        mag_b: bool = True  # trainable output-side scale b (1 at init)
        cayley: str = "exact"
        neumann_terms: int = 5

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        check_cayley("psoft", cfg.cayley, cfg.neumann_terms)

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        self._init_basis(base, cfg.r)
        self.psoft_q = nn.Parameter(torch.zeros(packed_size(cfg.r) if cfg.orth else cfg.r * cfg.r))
        self.psoft_a = nn.Parameter(torch.ones(cfg.r)) if cfg.mag_a else None
        self.psoft_b = nn.Parameter(torch.ones(cfg.r)) if cfg.mag_b else None

    def rotation(self) -> Tensor:
        """The orthogonal (or free) ``r × r`` factor, without the magnitude vectors."""
        r = self.cfg.r
        if self.cfg.orth:
            return cayley(skew(self.psoft_q, r), self.cfg.cayley, self.cfg.neumann_terms)
        return torch.eye(r, dtype=self.psoft_q.dtype, device=self.psoft_q.device) + self.psoft_q.view(r, r)

    def orthogonality_error(self) -> float:
        return orthogonality_error(self.rotation())

    def coords_delta(self, z: Tensor) -> Tensor:
        t = z if self.psoft_a is None else z * self.psoft_a
        t = t @ self.rotation().T
        if self.psoft_b is not None:
            t = t * self.psoft_b
        return self.sigma * (t - z)

    def core_delta(self) -> Tensor:
        R = self.rotation()
        if self.psoft_b is not None:
            R = torch.diag(self.psoft_b) @ R
        if self.psoft_a is not None:
            R = R @ torch.diag(self.psoft_a)
        return torch.diag(self.sigma) @ (R - torch.eye(R.shape[0], dtype=R.dtype, device=R.device))

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Config) -> int:
        cls.check_rank(base, cfg.r)
        core = packed_size(cfg.r) if cfg.orth else cfg.r * cfg.r
        return core + cfg.r * (int(cfg.mag_a) + int(cfg.mag_b))


# ---------------------------------------------------------------------------------------- AntiPaSTO
@register("antipasto")
class AntiPaSTO(SubspaceAdapter):
    summary = "W' = U R_u(α) diag(σ+αδσ) R_v(α)ᵀ Vᵀ + W_res on top-r triplets; α = ±1 steers both ways."
    formula = "r + r(r−1)/2·([rotate_u] + [rotate_v])"
    size_knob: ClassVar[str | None] = "r"
    test_config: ClassVar[dict[str, Any]] = {"r": 6, "rotate_u": True}

    @dataclasses.dataclass
    class Config:
        r: int = 16
        rotate_u: bool = False
        rotate_v: bool = True
        alpha: float = 1.0  # steering coefficient (runtime knob: set ``adapter.coeff``)
        max_angle: float = math.pi / 3  # soft clamp of the rotation angle; math.inf disables it
        init_std: float = 0.0  # the paper breaks the ±α symmetry with small noise; 0 keeps a no-op init

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        if not cfg.max_angle > 0:
            raise MethodError(f"antipasto: max_angle must be > 0, got {cfg.max_angle}")
        if cfg.init_std < 0:
            raise MethodError(f"antipasto: init_std must be ≥ 0, got {cfg.init_std}")

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        self._init_basis(base, cfg.r)
        self.coeff = float(cfg.alpha)
        n = packed_size(cfg.r)
        self.antipasto_ds = nn.Parameter(torch.randn(cfg.r) * cfg.init_std)
        self.antipasto_rv = nn.Parameter(torch.randn(n) * cfg.init_std) if cfg.rotate_v else None
        self.antipasto_ru = nn.Parameter(torch.randn(n) * cfg.init_std) if cfg.rotate_u else None

    def _rotation(self, packed: Tensor | None) -> Tensor | None:
        if packed is None:
            return None
        A = skew(packed, self.cfg.r)
        if math.isfinite(self.cfg.max_angle) and self.cfg.max_angle < math.pi:
            limit = 2.0 * math.tan(self.cfg.max_angle / 2.0)  # |θ| ≤ max_angle ⇔ |a| ≤ 2 tan(θ/2)
            A = limit * torch.tanh(A / limit)
        return cayley(self.coeff * A / 2.0)

    def rotations(self) -> tuple[Tensor | None, Tensor | None]:
        """``(R_u, R_v)`` at the current steering coefficient (``None`` where not rotated)."""
        return self._rotation(self.antipasto_ru), self._rotation(self.antipasto_rv)

    def orthogonality_error(self) -> float:
        return max((orthogonality_error(R) for R in self.rotations() if R is not None), default=0.0)

    def coords_delta(self, z: Tensor) -> Tensor:
        R_u, R_v = self.rotations()
        t = z if R_v is None else z @ R_v  # rows: (R_vᵀ z)ᵀ
        t = t * (self.sigma + self.coeff * self.antipasto_ds)
        if R_u is not None:
            t = t @ R_u.T
        return t - self.sigma * z

    def core_delta(self) -> Tensor:
        R_u, R_v = self.rotations()
        M = torch.diag(self.sigma + self.coeff * self.antipasto_ds)
        if R_v is not None:
            M = M @ R_v.T
        if R_u is not None:
            M = R_u @ M
        return M - torch.diag(self.sigma)

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Config) -> int:
        cls.check_rank(base, cfg.r)
        return cfg.r + packed_size(cfg.r) * (int(cfg.rotate_u) + int(cfg.rotate_v))


def set_steering(model: nn.Module, coeff: float, name: str | None = None) -> int:
    """Set AntiPaSTO's steering coefficient ``α`` on every layer (of adapter ``name``, or all); returns the count."""
    count = 0
    for module in model.modules():
        if isinstance(module, AdaptedModule):
            for n, adapter in module.adapters.items():
                if isinstance(adapter, AntiPaSTO) and (name is None or n == name):
                    adapter.coeff = float(coeff)
                    count += 1
    return count
