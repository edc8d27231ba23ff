"""LoHa: low-rank Hadamard product (Hyeon-Woo, Ye-Bin, Oh, "FedPara", ICLR 2022, arXiv:2108.06098;
used as a fine-tuning adapter by LyCORIS, Yeh et al., ICLR 2024, arXiv:2309.14859).

Hypothesis: the update is higher-rank than a LoRA of the same budget can express, but lies in the
family of element-wise products of two rank-r matrices, whose rank reaches r² (FedPara Prop. 1).

Pseudocode::

    A1, A2 ~ KaimingUniform(r × d_in);  B1 ~ KaimingUniform(d_out × r);  B2 ← 0   (so ΔW = 0 at init)
    ΔW = s · (B1 A1) ⊙ (B2 A2),   s = α / r
    y  = W0 x + ΔW x

Fast path: the Hadamard product of two rank-r matrices factors through r² rank-one terms,
``(B1 A1) ⊙ (B2 A2) = (B1 • B2)(A1 • A2)``, where column (i, j) of ``B1 • B2`` is ``B1[:, i] ⊙ B2[:, j]``
and row (i, j) of ``A1 • A2`` is ``A1[i] ⊙ A2[j]`` (face-splitting product). When
``r²(d_in + d_out) ≤ d_in·d_out`` the forward uses those two thin factors and never forms the
d_out×d_in matrix; otherwise it forms ΔW once per call and applies it densely.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.method import LayerAdapter, register
from ._factors import dense_linear, require


def _kaiming(rows: int, cols: int) -> Tensor:
    t = torch.empty(rows, cols)
    nn.init.kaiming_uniform_(t, a=math.sqrt(5))
    return t


@register("loha")
class LoHa(LayerAdapter):
    family = "structured-full-rank"
    summary = "ΔW = s·(B1A1) ⊙ (B2A2): a Hadamard product of two rank-r factors, rank up to r²."
    formula = "2·r·(d_in + d_out)"
    size_knob: ClassVar[str | None] = "r"
    test_config: ClassVar[dict[str, Any]] = {"r": 2, "alpha": 2.0}

    @dataclasses.dataclass
    class Config:
        r: int = 8
        alpha: float = 8.0

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        require(cfg.r >= 1, "loha", f"rank r must be ≥ 1, got {cfg.r}")

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        d_out, d_in = self.dims(base)
        r = cfg.r
        self.hada_B1 = nn.Parameter(_kaiming(d_out, r))
        self.hada_A1 = nn.Parameter(_kaiming(r, d_in))
        self.hada_B2 = nn.Parameter(_kaiming(d_out, r))
        self.hada_A2 = nn.Parameter(torch.zeros(r, d_in))
        self.scale = cfg.alpha / r
        self.factored = r * r * (d_in + d_out) <= d_in * d_out

    def _face_split(self) -> tuple[Tensor, Tensor]:
        """``(B1 • B2) ∈ R^{d_out×r²}`` and ``(A1 • A2) ∈ R^{r²×d_in}``."""
        left = (self.hada_B1[:, :, None] * self.hada_B2[:, None, :]).flatten(1)
        right = (self.hada_A1[:, None, :] * self.hada_A2[None, :, :]).flatten(0, 1)
        return left, right

    def delta_output(self, x: Tensor) -> Tensor:
        x = x.to(self.hada_A1.dtype)
        if self.factored:
            left, right = self._face_split()
            return F.linear(F.linear(x, right), left) * self.scale
        return F.linear(x, self._dense())

    def _dense(self) -> Tensor:
        return (self.hada_B1 @ self.hada_A1) * (self.hada_B2 @ self.hada_A2) * self.scale

    def delta_weight(self, weight: Tensor) -> Tensor:
        return self._dense().to(weight.dtype)

    def reference_forward(self, x: Tensor, base: nn.Module) -> Tensor:
        """Explicit ΔW[p, q] = s·(Σ_i B1[p,i] A1[i,q])·(Σ_j B2[p,j] A2[j,q]), then a plain linear map."""
        w1 = torch.einsum("pi,iq->pq", self.hada_B1.double(), self.hada_A1.double())
        w2 = torch.einsum("pj,jq->pq", self.hada_B2.double(), self.hada_A2.double())
        return dense_linear(x, base, w1 * w2 * self.scale)

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Config) -> int:
        d_out, d_in = cls.dims(base)
        return 2 * cfg.r * (d_in + d_out)
