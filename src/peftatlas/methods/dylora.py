"""DyLoRA: dynamic, search-free low-rank adaptation (Valipour, Rezagholizadeh, Kobyzev, Ghodsi,
EACL 2023, arXiv:2210.07558).

Hypothesis: the useful update directions can be ordered by importance — one training run yields a
nested family in which every truncation to rank b ≤ r is as good as a LoRA trained at rank b.

Pseudocode::

    A ~ KaimingUniform(r × d_in);  B ← 0 (d_out × r)                     # r = r_max
    training step:  b ~ Uniform{r_min, …, r}                               # a fresh b each forward
                    update="last": only row A[b−1] and column B[:, b−1] get gradients
                    (the paper's default, "frozen" lower ranks); update="all": all of A[:b], B[:, :b]
                    y = W0 x + (α / b) · B[:, :b] (A[:b] x)
    inference / merge at any b ≤ r (default r):  ΔW = (α / b) · B[:, :b] A[:b]
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.method import LayerAdapter, register
from ._factors import kaiming_rows, require


@register("dylora")
class DyLoRA(LayerAdapter):
    family = "low-rank"
    summary = "LoRA trained with a random truncation rank each step, so every prefix rank b ≤ r works."
    formula = "r·(d_in + d_out)"
    size_knob: ClassVar[str | None] = "r"
    rank_within_width = True
    test_config: ClassVar[dict[str, Any]] = {"r": 4, "alpha": 4.0}

    @dataclasses.dataclass
    class Config:
        r: int = 8
        alpha: float = 16.0
        r_min: int = 1
        update: str = "last"  # "last" (only the sampled b-th component trains) or "all"
        eval_rank: int | None = None  # rank used outside training and for merging; None = r

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        require(cfg.r >= 1, "dylora", f"rank r must be ≥ 1, got {cfg.r}")
        require(1 <= cfg.r_min <= cfg.r, "dylora", f"r_min must be in [1, r={cfg.r}], got {cfg.r_min}")
        require(cfg.update in ("last", "all"), "dylora", f"update must be 'last' or 'all', got {cfg.update!r}")
        require(cfg.eval_rank is None or 1 <= cfg.eval_rank <= cfg.r, "dylora",
                f"eval_rank must be in [1, r={cfg.r}], got {cfg.eval_rank}")

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        d_out, d_in = self.dims(base)
        self.lora_A = nn.Parameter(kaiming_rows(cfg.r, d_in))
        self.lora_B = nn.Parameter(torch.zeros(d_out, cfg.r))
        self.eval_rank = cfg.eval_rank or cfg.r
        self.train(base.training)  # rank sampling follows the model's mode from the start

    def set_rank(self, b: int) -> None:
        """Choose the rank used outside training (and by merge)."""
        require(1 <= b <= self.cfg.r, "dylora", f"rank must be in [1, {self.cfg.r}], got {b}")
        self.eval_rank = b

    def _factors(self) -> tuple[Tensor, Tensor, int | Tensor]:
        """(A[:b], B[:, :b], b): sampled in training, ``eval_rank`` otherwise."""
        if not self.training:
            b = self.eval_rank
            return self.lora_A[:b], self.lora_B[:, :b], b
        b_drawn = torch.randint(self.cfg.r_min, self.cfg.r + 1, ())
        if torch.compiler.is_compiling():
            return self._masked_factors(b_drawn)
        b = int(b_drawn.item())
        A, B = self.lora_A[:b], self.lora_B[:, :b]
        if self.cfg.update == "last":
            A = torch.cat([A[: b - 1].detach(), A[b - 1:]], dim=0)
            B = torch.cat([B[:, : b - 1].detach(), B[:, b - 1:]], dim=1)
        return A, B, b

    def _masked_factors(self, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The training factors with the drawn rank ``b`` kept as a tensor (for ``torch.compile``):
        components ``k ≥ b`` are zeroed instead of sliced off, so every shape is static; same
        output and gradients as the sliced factors."""
        A, B = self.lora_A, self.lora_B
        b = b.to(A.device)
        k = torch.arange(self.cfg.r, device=A.device)
        if self.cfg.update == "last":
            last = k == b - 1
            A = torch.where(last[:, None], A, A.detach())
            B = torch.where(last[None, :], B, B.detach())
        keep = (k < b).to(A.dtype)
        return A * keep[:, None], B, b

    def delta_output(self, x: Tensor) -> Tensor:
        A, B, b = self._factors()
        return F.linear(F.linear(x.to(A.dtype), A), B) * (self.cfg.alpha / b)

    def delta_weight(self, weight: Tensor) -> Tensor:
        b = self.eval_rank
        return (self.lora_B[:, :b] @ self.lora_A[:b] * (self.cfg.alpha / b)).to(weight.dtype)

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Config) -> int:
        d_out, d_in = cls.dims(base)
        return cfg.r * (d_in + d_out)
