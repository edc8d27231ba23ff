"""LoRA (Hu et al., 2022) with the rsLoRA scaling option (Kalajdzievski, 2023).

Hypothesis: the fine-tuning update of each weight matrix has low intrinsic rank.

Pseudocode::

    A ~ KaimingUniform(r × d_in);  B ← 0 (d_out × r);  s = α / r   (rsLoRA: α / √r)
    y = W0 x + s · B (A dropout(x))
    merge: W ← W0 + s · B A
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.method import LayerAdapter, MethodError, register


@register("lora")
class LoRA(LayerAdapter):
    family = "low-rank"
    summary = "ΔW = s·BA with rank r; B=0 at init."
    formula = "r·(d_in + d_out)"
    size_knob: ClassVar[str | None] = "r"
    test_config: ClassVar[dict[str, Any]] = {"r": 4, "alpha": 8}

    @dataclasses.dataclass
    class Config:
        r: int = 8
        alpha: float = 16.0
        dropout: float = 0.0
        rslora: bool = False

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        if cfg.r < 1:
            raise MethodError(f"lora: rank r must be ≥ 1, got {cfg.r}")
        if not 0.0 <= cfg.dropout < 1.0:
            raise MethodError(f"lora: dropout must be in [0, 1), got {cfg.dropout}")

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        d_out, d_in = self.dims(base)
        self.lora_A = nn.Parameter(torch.empty(cfg.r, d_in))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(d_out, cfg.r))
        self.scale = cfg.alpha / (math.sqrt(cfg.r) if cfg.rslora else cfg.r)
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def delta_output(self, x: Tensor) -> Tensor:
        x = self.dropout(x.to(self.lora_A.dtype))
        return F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scale

    def delta_weight(self, weight: Tensor) -> Tensor:
        return (self.lora_B @ self.lora_A * self.scale).to(weight.dtype)

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Config) -> int:
        d_out, d_in = cls.dims(base)
        return cfg.r * (d_in + d_out)
