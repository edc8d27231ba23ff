"""LoKr: low-rank Kronecker product (Yeh et al., "Navigating Text-To-Image Customization: From LyCORIS
Fine-Tuning to Model Evaluation", ICLR 2024, arXiv:2309.14859; after KronA, Edalati et al., arXiv:2212.10650).

Hypothesis: ΔW has (approximate) Kronecker structure along a factorisation of its dimensions —
a small block pattern C repeated, with each block a scaled copy of one low-rank matrix BA.

Pseudocode::

    d_out = u_p·v_p,  d_in = u_q·v_q          (u ≤ v, as square as the divisors allow, or u = factor)
    C ← 0 (u_p × u_q);  B ~ KaimingUniform(v_p × r);  A ~ KaimingUniform(r × v_q)   (ΔW = 0 at init)
    ΔW = s · C ⊗ (B A),   s = α / r,   rank(ΔW) = rank(C)·rank(BA)
    forward without forming ΔW (row-major vec):  X = x.reshape(u_q, v_q)
        ΔW x = s · vec(C X (BA)ᵀ) = s · vec(C ((X Aᵀ) Bᵀ))
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..core.method import LayerAdapter, register
from ._factors import dense_linear, last_axis_mm, near_square_factors, require


def _kaiming(rows: int, cols: int) -> Tensor:
    t = torch.empty(rows, cols)
    nn.init.kaiming_uniform_(t, a=math.sqrt(5))
    return t


@register("lokr")
class LoKr(LayerAdapter):
    family = "structured-full-rank"
    summary = "ΔW = s·C ⊗ (BA): a small dense block pattern times a low-rank block (Kronecker)."
    formula = "u_p·u_q + r·(v_p + v_q),  d_out = u_p·v_p, d_in = u_q·v_q"
    size_knob: ClassVar[str | None] = "r"
    test_config: ClassVar[dict[str, Any]] = {"r": 2, "alpha": 2.0}

    @dataclasses.dataclass
    class Config:
        r: int = 8
        alpha: float = 8.0
        factor: int = -1  # size of C's side; -1 = the most square factorisation of each dimension

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        require(cfg.r >= 1, "lokr", f"rank r must be ≥ 1, got {cfg.r}")
        require(cfg.factor == -1 or cfg.factor >= 1, "lokr", f"factor must be -1 (auto) or ≥ 1, got {cfg.factor}")

    @classmethod
    def shapes(cls, base: nn.Module, cfg: Config) -> tuple[int, int, int, int]:
        """``(u_p, v_p, u_q, v_q)`` with ``d_out = u_p·v_p`` and ``d_in = u_q·v_q``."""
        d_out, d_in = cls.dims(base)
        u_p, v_p = near_square_factors(d_out, cfg.factor)
        u_q, v_q = near_square_factors(d_in, cfg.factor)
        return u_p, v_p, u_q, v_q

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        u_p, v_p, u_q, v_q = self.shapes(base, cfg)
        self.u_q, self.v_q = u_q, v_q
        self.lokr_C = nn.Parameter(torch.zeros(u_p, u_q))
        self.lokr_B = nn.Parameter(_kaiming(v_p, cfg.r))
        self.lokr_A = nn.Parameter(_kaiming(cfg.r, v_q))
        self.scale = cfg.alpha / cfg.r

    def delta_output(self, x: Tensor) -> Tensor:
        x = x.to(self.lokr_A.dtype)
        X = x.reshape(*x.shape[:-1], self.u_q, self.v_q)
        Z = last_axis_mm(X, self.lokr_A).transpose(-1, -2)  # (..., r, u_q)
        Z = last_axis_mm(Z, self.lokr_C).transpose(-1, -2)  # (..., u_p, r)
        return last_axis_mm(Z, self.lokr_B).flatten(-2) * self.scale

    def delta_weight(self, weight: Tensor) -> Tensor:
        return (torch.kron(self.lokr_C, self.lokr_B @ self.lokr_A) * self.scale).to(weight.dtype)

    def reference_forward(self, x: Tensor, base: nn.Module) -> Tensor:
        """Explicit ΔW[i1·v_p + i2, j1·v_q + j2] = s·C[i1, j1]·(BA)[i2, j2], built by broadcasting."""
        w2 = (self.lokr_B.double() @ self.lokr_A.double())
        C = self.lokr_C.double()
        u_p, u_q = C.shape
        v_p, v_q = w2.shape
        delta = (C[:, None, :, None] * w2[None, :, None, :]).reshape(u_p * v_p, u_q * v_q) * self.scale
        return dense_linear(x, base, delta)

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Config) -> int:
        u_p, v_p, u_q, v_q = cls.shapes(base, cfg)
        return u_p * u_q + cfg.r * (v_p + v_q)
