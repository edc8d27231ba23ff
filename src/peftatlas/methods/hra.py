"""HRA — Householder reflection adaptation (Yuan, Liu, Xu, NeurIPS 2024, arXiv:2405.17484).

Hypothesis: good updates are orthogonal (angle-preserving) *and* touch only an r-dimensional
subspace: ``W' = W0 H`` with ``H = H_1 ⋯ H_r`` a chain of Householder reflections, so
``ΔW = W0 (H − I)`` has rank ≤ r — HRA bridges OFT and LoRA. An optional regulariser
``λ ‖ÛᵀÛ − I‖_F²`` trades the reflections' mutual orthogonality against capacity.

Pseudocode (PyTorch layout)::

    u_1..u_r ∈ R^{d_in}; init: Kaiming-uniform on r/2 vectors, each used twice → H_{2j−1} H_{2j} = I
    v_i = u_i / ‖u_i‖;  H = Π_i (I − 2 v_i v_iᵀ)
    compact WY: H = I − Vᵀ T V,  T⁻¹ = ½ I + striu(V Vᵀ)   (r × r, upper triangular)
    y = W0 (x − Vᵀ T (V x)) + b                 # O(r·d) per token, never a d × d matrix
    loss += λ ‖V Vᵀ − I‖_F²                     # optional (λ = 0 by default)
    merge: W ← W0 − ((W0 Vᵀ) Tᵀ) V

HF PEFT 0.21 builds the dense ``d × d`` product and ``W0 H`` in every forward (``O(d³)``).
The identity at init holds in exact arithmetic; in floating point the paired reflections cancel to
rounding (≈1e-7 relative in fp32).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.method import BaseFn, LayerAdapter, MethodError, register
from ._rotation import householder_apply, householder_dense, householder_wy, orthogonality_error


@register("hra")
class HRA(LayerAdapter):
    family = "rotation"
    summary = "W' = W0·H_1⋯H_r (Householder chain, compact WY form); rank(ΔW) ≤ r."
    formula = "r·d_in"
    size_knob: ClassVar[str | None] = "r"
    test_config: ClassVar[dict[str, Any]] = {"r": 4, "lam": 1e-3}

    @dataclasses.dataclass
    class Config:
        r: int = 8  # number of reflections; even, so that the paired init is the identity
        lam: float = 0.0  # weight of the orthogonality regulariser λ‖VVᵀ − I‖²

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        if cfg.r < 2 or cfg.r % 2:
            raise MethodError(f"hra: r must be an even number ≥ 2 (reflections are initialised in equal pairs "
                              f"so that H = I), got {cfg.r}")
        if cfg.lam < 0:
            raise MethodError(f"hra: lam must be ≥ 0, got {cfg.lam}")

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        _, d_in = self.dims(base)
        if cfg.r > d_in:
            raise MethodError(f"hra: r = {cfg.r} exceeds the layer's input size {d_in}")
        half = torch.empty(cfg.r // 2, d_in)
        nn.init.kaiming_uniform_(half, a=math.sqrt(5))
        self.hra_u = nn.Parameter(half.repeat_interleave(2, dim=0))  # (r, d_in): u_1 = u_2, u_3 = u_4, …

    def reflections(self) -> tuple[Tensor, Tensor]:
        """``(V, T)`` of the compact WY form ``H = I − Vᵀ T V``."""
        return householder_wy(self.hra_u)

    def rotation_matrix(self) -> Tensor:
        """Dense ``H`` (d_in × d_in) from the explicit product of reflections; for tests and probes."""
        return householder_dense(self.hra_u.detach())

    def orthogonality_error(self) -> float:
        """‖HᵀH − I‖_F of the matrix the forward applies, ``I − Vᵀ T V`` (fp32)."""
        V, T = (t.detach() for t in self.reflections())
        return orthogonality_error(torch.eye(V.shape[1]) - V.T @ T @ V)

    def forward(self, x: Tensor, base_fn: BaseFn) -> Tensor:
        V, T = self.reflections()
        return base_fn(householder_apply(x.to(V.dtype), V, T).to(x.dtype))

    def merged_params(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        w = params["weight"]
        V, T = (t.detach() for t in self.reflections())
        merged = householder_apply(w.float(), V, T, transpose=True)  # rows: w H = (Hᵀ wᵀ)ᵀ
        return {**params, "weight": merged.to(w.dtype)}

    def reference_forward(self, x: Tensor, base: nn.Module) -> Tensor:
        W = base.weight.detach().float() @ self.rotation_matrix()
        bias = None if base.bias is None else base.bias.detach().float()
        return F.linear(x.float(), W, bias)

    def extra_loss(self) -> Tensor | None:
        if self.cfg.lam == 0:
            return None
        V = self.hra_u / self.hra_u.norm(dim=-1, keepdim=True)
        gram = V @ V.T
        return self.cfg.lam * (gram - torch.eye(gram.shape[0], device=gram.device)).pow(2).sum()

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Config) -> int:
        d_in = cls.dims(base)[1]
        if cfg.r > d_in:
            raise MethodError(f"hra: r = {cfg.r} exceeds the layer's input size {d_in}")
        return cfg.r * d_in
