"""Delta-LoRA (Zi, Qi, Wang, Wang, Wong, Zhang, "Delta-LoRA: Fine-Tuning High-Rank Parameters with
the Delta of Low-Rank Matrices", arXiv:2309.02411).

Stated hypothesis: copying the increments of the low-rank product into the pretrained weight
"fine-tunes high-rank parameters" beyond what the rank-r factors can express.

Pseudocode (paper)::

    A ~ KaimingUniform(r × d_in);  B ← 0;  s = α / r;  no dropout on the LoRA branch
    y = W x + s · B (A x)                          # W gets no gradient
    after the optimizer step t > K:  W ← W + λ · (B_t A_t − B_{t−1} A_{t−1})

Rank bound (why the hypothesis fails): the W-updates telescope, W_t − W0 = λ (B_t A_t − B_K A_K),
so the whole merged update is

    W_merged − W0 = (λ + s) · B_t A_t − λ · B_K A_K,     rank ≤ 2r   (≤ r when K = 0, since B_0 = 0)

which is a subset of rank-2r LoRA (tests/test_wave2_methods.py checks this numerically).

Implementation: the user's base tensors are never written. The accumulated update is kept in the
adapter in the telescoped form λ (B_last A_last − B_K A_K), from two saved snapshots of the factors
(buffers, saved with the adapter), so disable / unmerge / unload stay exact and no d_out×d_in
buffer is needed. ``on_train_step`` (called by the training loop after each optimizer step)
advances the snapshots: that is exactly the per-step rule above, summed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.method import LayerAdapter, register
from ._factors import kaiming_rows, require


@register("delta_lora")
class DeltaLoRA(LayerAdapter):
    family = "low-rank"
    summary = "LoRA whose per-step increments are also added to W (kept in the adapter); total rank ≤ 2r."
    formula = "r·(d_in + d_out)"
    size_knob: ClassVar[str | None] = "r"
    rank_within_width = True
    test_config: ClassVar[dict[str, Any]] = {"r": 4, "alpha": 8.0}

    @dataclasses.dataclass
    class Config:
        r: int = 8
        alpha: float = 16.0
        update_ratio: float = 2.0  # λ
        start_step: int = 500  # K: W-updates begin after optimizer step K

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        require(cfg.r >= 1, "delta_lora", f"rank r must be ≥ 1, got {cfg.r}")
        require(cfg.start_step >= 0, "delta_lora", f"start_step must be ≥ 0, got {cfg.start_step}")

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        d_out, d_in = self.dims(base)
        self.lora_A = nn.Parameter(kaiming_rows(cfg.r, d_in))
        self.lora_B = nn.Parameter(torch.zeros(d_out, cfg.r))
        self.scale = cfg.alpha / cfg.r
        for tag in ("start", "last"):  # factors at step K and at the latest step: W − W0 = λ(B_last A_last − B_K A_K)
            self.register_buffer(f"{tag}_A", self.lora_A.detach().clone())
            self.register_buffer(f"{tag}_B", self.lora_B.detach().clone())

    @torch.no_grad()
    def record_step(self, step: int) -> None:
        """Apply the W-update of optimizer step ``step`` (1-based): before K the start point moves along."""
        if step <= self.cfg.start_step:
            self.start_A.copy_(self.lora_A)
            self.start_B.copy_(self.lora_B)
        self.last_A.copy_(self.lora_A)
        self.last_B.copy_(self.lora_B)

    @classmethod
    def on_train_step(cls, adapters: dict[str, LayerAdapter], step: int, total_steps: int) -> None:
        for adapter in adapters.values():
            assert isinstance(adapter, DeltaLoRA)
            adapter.record_step(step)

    def _stacked(self) -> tuple[Tensor, Tensor]:
        """ΔW = [λ B_last, −λ B_K, s B] · [A_last; A_K; A]: three rank-r terms in one pair of matmuls."""
        lam = self.cfg.update_ratio
        A = torch.cat([self.last_A, self.start_A, self.lora_A], dim=0)
        B = torch.cat([lam * self.last_B, -lam * self.start_B, self.scale * self.lora_B], dim=1)
        return A, B

    def delta_output(self, x: Tensor) -> Tensor:
        A, B = self._stacked()
        return F.linear(F.linear(x.to(A.dtype), A), B)

    def delta_weight(self, weight: Tensor) -> Tensor:
        A, B = self._stacked()
        return (B @ A).to(weight.dtype)

    def accumulated_update(self) -> Tensor:
        """W_t − W0 = λ (B_last A_last − B_K A_K): what the paper writes into the base weight."""
        lam = self.cfg.update_ratio
        return lam * (self.last_B @ self.last_A - self.start_B @ self.start_A)

    def reference_forward(self, x: Tensor, base: nn.Module) -> Tensor:
        W = base.weight.detach().double() + self.accumulated_update().double()  # the paper's modified W
        bias = base.bias.detach().double() if base.bias is not None else None
        y = F.linear(x.double(), W, bias) + self.scale * (x.double() @ self.lora_A.double().T) @ self.lora_B.double().T
        return y.float()

    @torch.no_grad()
    def perturb_(self, generator: torch.Generator, scale: float = 0.1) -> None:
        """Move the factors and both snapshots, so tests exercise the accumulated-update path too."""
        for t in (self.lora_A, self.lora_B, self.start_A, self.start_B, self.last_A, self.last_B):
            t.add_(torch.randn(t.shape, generator=generator).to(t) * scale)

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Config) -> int:
        d_out, d_in = cls.dims(base)
        return cfg.r * (d_in + d_out)
