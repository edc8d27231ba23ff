"""DoRA — weight-decomposed low-rank adaptation (Liu et al., ICML 2024, arXiv:2402.09353).

Hypothesis: fine-tuning changes a neuron's *magnitude* and its *direction* independently (FT shows
ΔM and ΔD negatively correlated, LoRA positively); decoupling them — a trainable magnitude per
neuron times a LoRA-updated, normalised direction — closes the gap to full fine-tuning.

Pseudocode (PyTorch layout; one norm per output row of W, as HF PEFT and the official code)::

    A ~ Kaiming (r × d_in), B ← 0 (d_out × r), s = α/r;  m ← ‖W0‖_row
    V = W0 + s·B A;   n = ‖V‖_row  (treated as a constant in backprop: paper §4.3, default)
    y = (m / n) ⊙ (W0 x + s·B A x) + b
    merge: W ← diag(m / n) · V

The row norms are computed without forming ``V`` (HF PEFT builds the dense ``d_out × d_in`` matrix
every forward):  ``n_i² = ‖w_i‖² + 2s·b_iᵀ(A w_i) + s²·b_iᵀ (A Aᵀ) b_i`` — one ``r × d_in`` by
``d_in × d_out`` product and an ``r × r`` Gram matrix. ``‖w_i‖²`` is cached at injection.
DoRA reads the base weight itself, so it must be the first adapter on a layer (``stackable = False``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.method import BaseFn, LayerAdapter, MethodError, register

EPS = 1e-12  # floor of n² (a zero row of W0 + sBA)


@register("dora")
class DoRA(LayerAdapter):
    family = "direction-strength"
    summary = "W' = m ⊙ (W0 + sBA)/‖W0 + sBA‖_row: LoRA on the direction, a trainable magnitude per neuron."
    formula = "r·(d_in + d_out) + d_out"
    size_knob: ClassVar[str | None] = "r"
    rank_within_width = True
    stackable: ClassVar[bool] = False
    test_config: ClassVar[dict[str, Any]] = {"r": 4, "alpha": 8}

    @dataclasses.dataclass
    class Config:
        r: int = 8
        alpha: float = 16.0
        dropout: float = 0.0
        detach_norm: bool = True  # the paper's memory-saving choice: no gradient through ‖V‖

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        if cfg.r < 1:
            raise MethodError(f"dora: rank r must be ≥ 1, got {cfg.r}")
        if not 0.0 <= cfg.dropout < 1.0:
            raise MethodError(f"dora: dropout must be in [0, 1), got {cfg.dropout}")

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        object.__setattr__(self, "_base", base)
        d_out, d_in = self.dims(base)
        self.scale = cfg.alpha / cfg.r
        self.dora_A = nn.Parameter(torch.empty(cfg.r, d_in))
        nn.init.kaiming_uniform_(self.dora_A, a=math.sqrt(5))
        self.dora_B = nn.Parameter(torch.zeros(d_out, cfg.r))
        row_sq = base.weight.detach().float().pow(2).sum(dim=1)
        self.register_buffer("w_row_sq", row_sq, persistent=False)  # ‖w_i‖², recomputed from W0 at load
        self.dora_m = nn.Parameter(row_sq.clamp_min(EPS).sqrt())
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def row_norms(self) -> Tensor:
        """``‖W0 + sBA‖_row`` from ``‖w_i‖²``, ``W0 Aᵀ`` and ``A Aᵀ`` (no ``d_out × d_in`` temporary)."""
        W, A, B, s = self._base.weight, self.dora_A, self.dora_B, self.scale
        WA = F.linear(A.to(W.dtype), W).float()  # (r, d_out) = A W0ᵀ
        cross = (B * WA.T).sum(dim=1)  # b_iᵀ (A w_i)
        quad = ((B @ (A @ A.T)) * B).sum(dim=1)  # b_iᵀ A Aᵀ b_i
        return (self.w_row_sq + 2.0 * s * cross + (s * s) * quad).clamp_min(EPS).sqrt()

    def forward(self, x: Tensor, base_fn: BaseFn) -> Tensor:
        if base_fn is not self._base:
            raise MethodError("dora adapters read the base weight directly and cannot be stacked after another "
                              "adapter on the same layer")
        y = base_fn(x)
        n = self.row_norms()
        if self.cfg.detach_norm:
            n = n.detach()
        g = self.dora_m / n
        lora = F.linear(F.linear(self.dropout(x.to(self.dora_A.dtype)), self.dora_A), self.dora_B) * self.scale
        bias = self._base.bias
        linear = y.float() if bias is None else y.float() - bias.float()
        return y + ((g - 1.0) * linear + g * lora).to(y.dtype)  # = g ⊙ (W0x + sBAx) + b, exact at init

    def merged_params(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        w = params["weight"]
        V = w.float() + self.scale * (self.dora_B @ self.dora_A).detach()
        merged = (self.dora_m.detach() / V.norm(dim=1).clamp_min(math.sqrt(EPS)))[:, None] * V
        return {**params, "weight": merged.to(w.dtype)}

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Config) -> int:
        d_out, d_in = cls.dims(base)
        return cfg.r * (d_in + d_out) + d_out
