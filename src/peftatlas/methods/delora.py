"""DeLoRA — decoupled low-rank adaptation (Bini, Girrbach, Akata, ICLR 2025, arXiv:2503.18225).

Hypothesis: robustness comes from *bounding* the update: normalise each rank-1 component of ``BA``
so that only its direction (angle) is learned, and give the strength to one learnable scalar ``λ``
per layer, scaled by the pretrained weight norm. ``‖ΔW‖_F ≤ λ·‖W0‖``-type bound, independent of
the learning rate.

Pseudocode (PyTorch layout; ``w`` = per-input-column norms of W0, as the authors' HF PEFT port)::

    A ~ Kaiming (r × d_in), B ~ Kaiming (d_out × r), λ ← λ_init;  A0, B0, λ0 ← frozen copies
    f(A, B, λ) = (λ / r) · B · diag(1 / (‖b_i‖ ‖a_i‖)) · A · diag(w)
    y = W0 x + b + f(A, B, λ) x − f(A0, B0, λ0) x    # paper Eq. 9: subtract the initial update
    merge: W ← W0 + f(A, B, λ) − f(A0, B0, λ0)

The paper folds ``−f(A0, B0, λ0)`` into the pretrained weights; the engine never modifies base
weights, so the frozen copy is subtracted on the adapter side (same function, exact no-op at init).
Column norms below 1e-4 are clamped (as in HF PEFT) only in the rank-1 normalisers.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.method import LayerAdapter, MethodError, register

NORM_FLOOR = 1e-4


def _kaiming(rows: int, cols: int) -> Tensor:
    t = torch.empty(rows, cols)
    nn.init.kaiming_uniform_(t, a=math.sqrt(5))
    return t


@register("delora")
class DeLoRA(LayerAdapter):
    family = "direction-strength"
    summary = "ΔW = (λ/r)·B Ξ A·diag(‖W0‖_col), Ξ normalising each rank-1 term; one learnable strength λ."
    formula = "r·(d_in + d_out) + 1"
    size_knob: ClassVar[str | None] = "r"
    rank_within_width = True
    test_config: ClassVar[dict[str, Any]] = {"r": 4, "lambda_init": 2.0}

    @dataclasses.dataclass
    class Config:
        r: int = 8
        lambda_init: float = 15.0  # HF PEFT's default boundary
        dropout: float = 0.0

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        if cfg.r < 1:
            raise MethodError(f"delora: rank r must be ≥ 1, got {cfg.r}")
        if not 0.0 <= cfg.dropout < 1.0:
            raise MethodError(f"delora: dropout must be in [0, 1), got {cfg.dropout}")

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        d_out, d_in = self.dims(base)
        A, B = _kaiming(cfg.r, d_in), _kaiming(d_out, cfg.r)
        self.delora_A = nn.Parameter(A.clone())
        self.delora_B = nn.Parameter(B.clone())
        self.delora_lambda = nn.Parameter(torch.tensor([float(cfg.lambda_init)]))
        self.register_buffer("delora_A0", A)
        self.register_buffer("delora_B0", B)
        self.register_buffer("delora_lambda0", torch.tensor([float(cfg.lambda_init)]))
        self.register_buffer("w_col_norm", base.weight.detach().float().norm(dim=0))
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def _gains(self, A: Tensor, B: Tensor, lam: Tensor) -> Tensor:
        """``(λ/r) / (‖b_i‖ ‖a_i‖)`` per rank-1 component."""
        na = A.norm(dim=1).clamp_min(NORM_FLOOR)
        nb = B.norm(dim=0).clamp_min(NORM_FLOOR)
        return lam / self.cfg.r / (na * nb)

    def _update(self, xw: Tensor, A: Tensor, B: Tensor, lam: Tensor) -> Tensor:
        return F.linear(F.linear(xw, A) * self._gains(A, B, lam), B)

    def delta_output(self, x: Tensor) -> Tensor:
        xw = self.dropout(x.to(self.delora_A.dtype)) * self.w_col_norm
        trained = self._update(xw, self.delora_A, self.delora_B, self.delora_lambda)
        initial = self._update(xw, self.delora_A0, self.delora_B0, self.delora_lambda0)
        return trained - initial

    def _dense(self, A: Tensor, B: Tensor, lam: Tensor) -> Tensor:
        return B @ torch.diag(self._gains(A, B, lam)) @ A @ torch.diag(self.w_col_norm)

    def delta_weight(self, weight: Tensor) -> Tensor:
        trained = self._dense(self.delora_A, self.delora_B, self.delora_lambda)
        initial = self._dense(self.delora_A0, self.delora_B0, self.delora_lambda0)
        return (trained - initial).to(weight.dtype)

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Config) -> int:
        d_out, d_in = cls.dims(base)
        return cfg.r * (d_in + d_out) + 1
