"""Compacter: bottleneck adapters whose weights are Kronecker sums with shared "slow" factors.

Paper: Karimi Mahabadi, Henderson, Ruder, NeurIPS 2021 (arXiv:2106.04647).

Hypothesis: the adapter weights of different layers share a common low-dimensional Kronecker
structure (the slow factors A_i); per-layer differences are rank-1 (the fast factors), so sharing
across layers loses nothing.

Insertion point: activations — the sublayer outputs, as Houlsby's adapters (Compacter++: pass the
FFN output projections only as ``targets``).

Pseudocode::

    A_1..A_n ∈ R^{n×n}                  # "slow", shared by every adapter layer (n³ parameters in total)
    per layer, per matrix (down: m×d, up: d×m):  s_i ∈ R^{rows/n}, t_i ∈ R^{cols/n}   # "fast", rank-1
    W = Σ_i A_i ⊗ (s_i t_iᵀ)            # parameterised hypercomplex multiplication (PHM) layer
    h ← h + W_up f(W_down h + b_down) + b_up
    init: W_up's s_i = 0 (exact identity); the rest N(0, σ²) with n·σ⁶ = init_std² (entries of W_down ≈ init_std)
    parameters per layer: 2·(d + m) + d + m, plus n³ shared

The Kronecker sum is applied without forming W: with x viewed as X ∈ R^{n×(cols/n)},
``(W x)[a, p] = Σ_i s_i[p] Σ_b A_i[a, b] (X[b] · t_i)`` — O(n·cols + n³ + n·rows) per token.
Not mergeable (nonlinear).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..core.method import MethodError, register
from .bottleneck import ATTENTION_OUTPUT, FFN_OUTPUT, BottleneckAdapter


def kron_sum_rank1_matvec(A: Tensor, s: Tensor, t: Tensor, x: Tensor) -> Tensor:
    """``(Σ_i A_i ⊗ s_i t_iᵀ) x`` for A (n, n, n), s (n, rows/n), t (n, cols/n), x (..., cols) → (..., rows)."""
    n = A.shape[0]
    X = x.reshape(*x.shape[:-1], n, t.shape[1])  # (..., b, q)
    u = X @ t.t()  # (..., b, i) = X[b] · t_i
    v = torch.einsum("iab,...bi->...ia", A, u)  # (..., i, a) = Σ_b A_i[a, b] u[b, i]
    y = torch.einsum("...ia,ip->...ap", v, s)  # (..., a, p) = Σ_i v[i, a] s_i[p]
    return y.reshape(*x.shape[:-1], n * s.shape[1])


def kron_sum_rank1_dense(A: Tensor, s: Tensor, t: Tensor) -> Tensor:
    """Explicit ``Σ_i A_i ⊗ (s_i t_iᵀ)`` (test oracle)."""
    return sum(torch.kron(A[i], torch.outer(s[i], t[i])) for i in range(A.shape[0]))


class PHMRule(nn.Module):
    """The shared slow factors A_1..A_n (trainable, saved once with the adapter)."""

    def __init__(self, n: int, std: float) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.randn(n, n, n) * std)


def _factor_std(cfg: Any) -> float:
    return (cfg.init_std**2 / cfg.phm_dim) ** (1.0 / 6.0)


@register("compacter")
class Compacter(BottleneckAdapter):
    summary = "Bottleneck adapters with Kronecker-sum (PHM) weights: shared n×n slow factors, rank-1 fast factors."
    formula = "2·(d + m) + d + m per adapted sublayer, plus n³ shared"
    default_targets: ClassVar[Any] = f"{ATTENTION_OUTPUT}|{FFN_OUTPUT}"
    test_config: ClassVar[dict[str, Any]] = {"bottleneck": 8, "phm_dim": 4}
    test_atol: ClassVar[float] = 1e-5

    @dataclasses.dataclass
    class Config:
        bottleneck: int = 48  # m; T5-base in the paper: reduction factor 32 (m = 24)
        phm_dim: int = 4  # n: number of Kronecker terms and size of the shared A_i
        activation: str = "gelu"
        init_std: float = 1e-2
        dropout: float = 0.0

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        super().validate_config(cfg)
        if cfg.phm_dim < 1:
            raise MethodError(f"compacter: phm_dim must be ≥ 1, got {cfg.phm_dim}")
        if cfg.bottleneck % cfg.phm_dim:
            raise MethodError(f"compacter: bottleneck {cfg.bottleneck} must be a multiple of phm_dim {cfg.phm_dim}")

    @classmethod
    def build_shared(cls, targets: dict[str, nn.Module], cfg: Config) -> nn.Module:
        return PHMRule(cfg.phm_dim, _factor_std(cfg))

    def build_weights(self, d: int, m: int, cfg: Config) -> None:
        n = cfg.phm_dim
        if d % n:
            raise MethodError(f"compacter: the sublayer width {d} is not a multiple of phm_dim {n}")
        if self.shared is None:
            raise MethodError("compacter needs its shared slow factors; use attach()/add_adapter()")
        std = _factor_std(cfg)
        self.down_s = nn.Parameter(torch.randn(n, m // n) * std)
        self.down_t = nn.Parameter(torch.randn(n, d // n) * std)
        self.down_bias = nn.Parameter(torch.zeros(m))
        self.up_s = nn.Parameter(torch.zeros(n, d // n))
        self.up_t = nn.Parameter(torch.randn(n, m // n) * std)
        self.up_bias = nn.Parameter(torch.zeros(d))

    def _slow(self) -> Tensor:
        return self.shared.A  # type: ignore[union-attr]

    def down_project(self, h: Tensor) -> Tensor:
        return kron_sum_rank1_matvec(self._slow(), self.down_s, self.down_t, h) + self.down_bias

    def up_project(self, z: Tensor) -> Tensor:
        return kron_sum_rank1_matvec(self._slow(), self.up_s, self.up_t, z) + self.up_bias

    def dense_weights(self) -> tuple[Tensor, Tensor]:
        A = self._slow().detach().float()
        down = kron_sum_rank1_dense(A, self.down_s.detach().float(), self.down_t.detach().float())
        up = kron_sum_rank1_dense(A, self.up_s.detach().float(), self.up_t.detach().float())
        return down, up

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Config) -> int:
        d, m = cls.dims(base)[0], cfg.bottleneck
        return 2 * (d + m) + d + m
