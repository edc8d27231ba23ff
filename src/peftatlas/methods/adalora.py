"""AdaLoRA: adaptive budget allocation for parameter-efficient fine-tuning (Q. Zhang, M. Chen,
A. Bukharin, P. He, Y. Cheng, W. Chen, T. Zhao, ICLR 2023, arXiv:2303.10512).

Hypothesis: the rank an update needs differs strongly across matrices and layers; allocating a fixed
total rank by importance beats giving every matrix the same rank at equal budget.

Pseudocode::

    per layer:  P ~ N(0, 0.02²) (d_out × r0),  λ ← 0 ∈ R^{r0},  Q ~ N(0, 0.02²) (r0 × d_in),  mask ← 1
    y = W0 x + s · P ((λ ⊙ mask) ⊙ (Q x)),   s = α / r0
    loss = task + γ Σ_layers (‖PᵀP − I‖_F² + ‖QQᵀ − I‖_F²)                       # orthogonality
    after optimizer step t (``on_train_step``, with every layer of the adapter; grads still present):
        I = |θ ⊙ ∇θ|;  Ī ← β1 Ī + (1−β1) I;  Ū ← β2 Ū + (1−β2) |I − Ī|;  S = Ī·Ū   (each entry of P, λ, Q)
        score of triplet i = S(λ_i) + mean_j S(P_{j,i}) + mean_j S(Q_{i,j})
        budget b(t) = b_T + (b_0 − b_T)·(1 − (t − t_i)/(T − t_f − t_i))³   (b_0 = Σ r0, b_T = Σ target_r)
        every Δt steps (and at t = T − t_f): keep the top-b(t) triplets over ALL layers, mask (and zero λ of) the rest
    after T − t_f: the mask is frozen at exactly b_T triplets.

Call ``model.on_train_step(step, total_steps)`` after ``optimizer.step()`` and before
``optimizer.zero_grad()``; if gradients are gone the scores fall back to |λ| (magnitude pruning).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..core.method import LayerAdapter, MethodError, register
from ._factors import require


def budget_schedule(step: int, total_steps: int, initial: int, target: int, tinit: int, tfinal: int,
                    delta_t: int) -> tuple[int, bool]:
    """(budget, whether to re-mask now) after optimizer step ``step`` — AdaLoRA's cubic schedule."""
    if step <= tinit:
        return initial, False
    if step >= total_steps - tfinal:
        return target, True
    progress = (step - tinit) / (total_steps - tfinal - tinit)
    return int((initial - target) * (1 - progress) ** 3 + target), step % delta_t == 0


@register("adalora")
class AdaLoRA(LayerAdapter):
    family = "low-rank"
    summary = "SVD-form P·diag(λ)·Q with importance-based pruning of triplets to a global rank budget."
    formula = "r0·(d_in + d_out + 1)"
    size_knob: ClassVar[str | None] = "init_r"
    rank_within_width = True
    test_config: ClassVar[dict[str, Any]] = {"init_r": 4, "target_r": 2, "alpha": 4.0}

    @dataclasses.dataclass
    class Config:
        init_r: int = 12
        target_r: int | None = None  # average final rank per layer; None = 2/3 of init_r
        alpha: float = 8.0
        tinit: int = 0  # warm-up steps at the full budget
        tfinal: int = 0  # final steps at the target budget with a frozen mask
        delta_t: int = 1  # re-mask every delta_t steps
        beta1: float = 0.85
        beta2: float = 0.85
        orth_reg_weight: float = 0.5

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        require(cfg.init_r >= 1, "adalora", f"init_r must be ≥ 1, got {cfg.init_r}")
        target = cls.target_rank(cfg)
        require(1 <= target <= cfg.init_r, "adalora", f"target_r must be in [1, init_r={cfg.init_r}], got {target}")
        require(cfg.tinit >= 0 and cfg.tfinal >= 0, "adalora", "tinit and tfinal must be ≥ 0")
        require(cfg.delta_t >= 1, "adalora", f"delta_t must be ≥ 1, got {cfg.delta_t}")
        require(0 < cfg.beta1 < 1 and 0 < cfg.beta2 < 1, "adalora", "beta1 and beta2 must be in (0, 1)")

    @staticmethod
    def target_rank(cfg: Config) -> int:
        return cfg.target_r if cfg.target_r is not None else max(1, 2 * cfg.init_r // 3)

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        d_out, d_in = self.dims(base)
        r = cfg.init_r
        self.lora_P = nn.Parameter(torch.randn(d_out, r) * 0.02)
        self.lora_E = nn.Parameter(torch.zeros(r))
        self.lora_Q = nn.Parameter(torch.randn(r, d_in) * 0.02)
        self.register_buffer("rank_mask", torch.ones(r))
        self.scale = cfg.alpha / r
        for name in ("P", "E", "Q"):  # smoothed sensitivity Ī and uncertainty Ū (training state, not saved)
            p = getattr(self, f"lora_{name}")
            self.register_buffer(f"ipt_{name}", torch.zeros_like(p), persistent=False)
            self.register_buffer(f"unc_{name}", torch.zeros_like(p), persistent=False)
        self.scored = False

    @property
    def rank(self) -> int:
        return int(self.rank_mask.sum().item())

    def _values(self) -> Tensor:
        return self.lora_E * self.rank_mask

    def delta_output(self, x: Tensor) -> Tensor:
        x = x.to(self.lora_Q.dtype)
        return ((x @ self.lora_Q.T) * self._values()) @ self.lora_P.T * self.scale

    def delta_weight(self, weight: Tensor) -> Tensor:
        return ((self.lora_P * self._values()) @ self.lora_Q * self.scale).to(weight.dtype)

    def extra_loss(self) -> Tensor | None:
        if self.cfg.orth_reg_weight == 0:
            return None
        P, Q = self.lora_P, self.lora_Q
        eye = torch.eye(self.cfg.init_r, device=P.device, dtype=P.dtype)
        return self.cfg.orth_reg_weight * (((P.T @ P - eye) ** 2).sum() + ((Q @ Q.T - eye) ** 2).sum())

    # --- the budget schedule -----------------------------------------------------------------------
    @torch.no_grad()
    def update_importance(self) -> None:
        """One EMA step of sensitivity and uncertainty from the current gradients (skipped if none)."""
        b1, b2 = self.cfg.beta1, self.cfg.beta2
        for name in ("P", "E", "Q"):
            p = getattr(self, f"lora_{name}")
            if p.grad is None:
                continue
            ipt = (p * p.grad).abs()
            avg, unc = getattr(self, f"ipt_{name}"), getattr(self, f"unc_{name}")
            avg.mul_(b1).add_((1 - b1) * ipt)
            unc.mul_(b2).add_((1 - b2) * (ipt - avg).abs())
            self.scored = True

    def triplet_scores(self) -> Tensor:
        """S(λ_i) + mean_j S(P_{j,i}) + mean_j S(Q_{i,j}); |λ_i| when no gradient was ever seen."""
        if not self.scored:
            return self.lora_E.detach().abs()
        return (self.ipt_E * self.unc_E + (self.ipt_P * self.unc_P).mean(0) + (self.ipt_Q * self.unc_Q).mean(1))

    @classmethod
    def on_train_step(cls, adapters: dict[str, LayerAdapter], step: int, total_steps: int) -> None:
        layers = [a for _, a in sorted(adapters.items())]
        if not layers:
            return
        cfg = layers[0].cfg
        if total_steps <= cfg.tinit + cfg.tfinal:
            raise MethodError(
                f"adalora: total_steps={total_steps} must exceed tinit + tfinal = {cfg.tinit + cfg.tfinal}")
        if step < total_steps - cfg.tfinal:
            for a in layers:
                assert isinstance(a, AdaLoRA)
                a.update_importance()
        initial = sum(a.cfg.init_r for a in layers)
        target = sum(cls.target_rank(a.cfg) for a in layers)
        budget, remask = budget_schedule(step, total_steps, initial, target, cfg.tinit, cfg.tfinal, cfg.delta_t)
        if remask:
            cls.mask_to_budget(layers, budget)

    @classmethod
    @torch.no_grad()
    def mask_to_budget(cls, layers: list[LayerAdapter], budget: int) -> None:
        """Keep exactly ``budget`` triplets — the highest scores over all layers — and mask the rest."""
        scores = torch.cat([a.triplet_scores().float().cpu() for a in layers])  # type: ignore[attr-defined]
        keep = torch.zeros_like(scores)
        keep[torch.sort(scores, descending=True, stable=True).indices[:budget]] = 1.0
        start = 0
        for a in layers:
            r = a.cfg.init_r
            mask = keep[start:start + r].to(a.rank_mask)
            a.rank_mask.copy_(mask)
            a.lora_E.mul_(mask)
            start += r

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Config) -> int:
        d_out, d_in = cls.dims(base)
        return cfg.init_r * (d_in + d_out + 1)
