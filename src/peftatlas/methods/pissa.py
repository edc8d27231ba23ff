"""PiSSA (Meng, Wang, Zhang, NeurIPS 2024, arXiv:2404.02948) and MiLoRA (Wang et al., NAACL 2025,
arXiv:2406.09044): LoRA whose factors start on W0's principal (PiSSA) or minor (MiLoRA) singular
triplets.

Hypotheses — PiSSA: the useful update lies in, and should start from, the *principal* singular
subspace of W0. MiLoRA: it should live in the *minor* subspace, leaving the principal directions
(pretrained knowledge) alone. The two are opposite bets on the same parametrization.

Pseudocode::

    U, σ, Vᵀ = svd(W0)                                  # once per layer (cached)
    idx = top r (PiSSA) | bottom r (MiLoRA)
    A ← diag(√σ_idx) V_idxᵀ  (r × d_in),  B ← U_idx diag(√σ_idx)  (d_out × r)   # trainable
    A0, B0 ← frozen copies                              # W_res = W0 − B0 A0 is never formed
    y = W0 x + b + B (A x) − B0 (A0 x)                   # = (W_res + B A) x + b, exact no-op at init
    merge: W ← W0 + B A − B0 A0

The papers replace W0 by the residual ``W0 − B0A0`` in the base layer; the engine never modifies
base weights, so the frozen copy is subtracted on the adapter side instead (same function).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from ..core.method import LayerAdapter, MethodError, register
from ._svd import top_indices, weight_svd


@register("pissa")
class PiSSA(LayerAdapter):
    family = "svd-basis"
    summary = "LoRA initialised on W0's top-r singular triplets (A = √σ Vᵀ, B = U √σ); residual frozen."
    formula = "r·(d_in + d_out)"
    size_knob: ClassVar[str | None] = "r"
    rank_within_width = True
    test_config: ClassVar[dict[str, Any]] = {"r": 4}
    which: ClassVar[str] = "principal"

    @dataclasses.dataclass
    class Config:
        r: int = 16
        dropout: float = 0.0

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        if cfg.r < 1:
            raise MethodError(f"{cls.name}: rank r must be ≥ 1, got {cfg.r}")
        if not 0.0 <= cfg.dropout < 1.0:
            raise MethodError(f"{cls.name}: dropout must be in [0, 1), got {cfg.dropout}")

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        self.param_count(base, cfg)  # validates r against the layer
        U, S, Vh = weight_svd(base.weight)
        idx = top_indices(S.shape[0], cfg.r, self.which)
        root = S[idx].sqrt()
        A = (root[:, None] * Vh[idx]).contiguous()
        B = (U[:, idx] * root[None, :]).contiguous()
        self.pissa_A = nn.Parameter(A.clone())
        self.pissa_B = nn.Parameter(B.clone())
        self.register_buffer("pissa_A0", A.clone())
        self.register_buffer("pissa_B0", B.clone())
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def delta_output(self, x: Tensor) -> Tensor:
        x = self.dropout(x.to(self.pissa_A.dtype))
        trained = F.linear(F.linear(x, self.pissa_A), self.pissa_B)
        initial = F.linear(F.linear(x, self.pissa_A0), self.pissa_B0)
        return trained - initial

    def delta_weight(self, weight: Tensor) -> Tensor:
        return (self.pissa_B @ self.pissa_A - self.pissa_B0 @ self.pissa_A0).to(weight.dtype)

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Config) -> int:
        d_out, d_in = cls.dims(base)
        if cfg.r > min(d_out, d_in):
            raise MethodError(f"{cls.name}: r = {cfg.r} exceeds min(d_out, d_in) = {min(d_out, d_in)}")
        return cfg.r * (d_in + d_out)


@register("milora")
class MiLoRA(PiSSA):
    """MiLoRA: as PiSSA, but A, B start on the *smallest* r singular triplets."""

    summary = "LoRA initialised on W0's bottom-r (minor) singular triplets; principal part frozen."
    which: ClassVar[str] = "minor"
