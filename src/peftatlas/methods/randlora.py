"""RandLoRA: full-rank parameter-efficient fine-tuning of large models (Albert et al., ICLR 2025,
arXiv:2502.00987).

Hypothesis: rank, not parameter count, limits LoRA; a full-rank update built from many frozen random
low-rank bases, with only diagonal scalings trained, closes the gap to full fine-tuning at LoRA's
parameter budget.

Pseudocode (d_min = min(d_in, d_out), d_max = max(d_in, d_out))::

    n = ⌈d_min / r⌉                                          # n·r ≥ d_min bases → full rank possible
    shared, frozen, from projection_seed (unit variance):  A ∈ R^{r × d_min},  B_1..B_n ∈ R^{d_max × r}
    per layer, trained:  λ_i ← 0 ∈ R^r,  γ_i ← 1/d_max ∈ R^{d_min}       (i = 1..n)
    ΔW_core = s · Σ_i B_i diag(λ_i) A diag(γ_i)  ∈ R^{d_max × d_min},   s = α / r
    ΔW = ΔW_core if d_in ≤ d_out else ΔW_coreᵀ
    fast path: V = [diag(λ_i) A diag(γ_i)]_i (n·r × d_min, formed once per call),  U = [B_1 … B_n]
               ΔW_core x = s · U (V x)                       # never a d_out×d_in matrix

The bases are regenerated bit-identically from the seed (non-persistent buffers), so a saved
adapter holds only λ and γ.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.method import LayerAdapter, MethodError, register
from ._factors import dense_linear, require, seeded_uniform


class RandLoRABases(nn.Module):
    """Frozen shared bases, sized for the largest targeted layer; each layer uses a leading slice."""

    def __init__(self, r: int, n: int, d_min: int, d_max: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator(device="cpu").manual_seed(seed)
        self.register_buffer("A", seeded_uniform((r, d_min), g), persistent=False)
        self.register_buffer("B", seeded_uniform((d_max, n, r), g), persistent=False)


def num_bases(d_min: int, r: int) -> int:
    return -(-d_min // r)


@register("randlora")
class RandLoRA(LayerAdapter):
    family = "random-subspace"
    summary = "Full-rank ΔW = Σ_i B_i Λ_i A Γ_i from frozen shared random bases; only the diagonals train."
    formula = "n·(r + d_min),  n = ⌈d_min / r⌉"
    size_knob: ClassVar[str | None] = "r"  # larger r → fewer bases → fewer parameters
    test_config: ClassVar[dict[str, Any]] = {"r": 4, "alpha": 8.0}

    @dataclasses.dataclass
    class Config:
        r: int = 32
        alpha: float = 640.0
        projection_seed: int = 0

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        require(cfg.r >= 1, "randlora", f"rank r must be ≥ 1, got {cfg.r}")

    @classmethod
    def build_shared(cls, targets: dict[str, nn.Module], cfg: Config) -> nn.Module:
        shapes = [cls.dims(m) for m in targets.values()] or [(1, 1)]
        d_min = max(min(s) for s in shapes)
        d_max = max(max(s) for s in shapes)
        return RandLoRABases(cfg.r, num_bases(d_min, cfg.r), d_min, d_max, cfg.projection_seed)

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        if shared is None:
            raise MethodError("randlora needs its shared bases; use attach()/add_adapter()")
        d_out, d_in = self.dims(base)
        self.d_min, self.d_max = min(d_out, d_in), max(d_out, d_in)
        self.transposed = d_in > d_out  # ΔW = ΔW_coreᵀ
        n = num_bases(self.d_min, cfg.r)
        self.randlora_lambda = nn.Parameter(torch.zeros(n, cfg.r))
        self.randlora_gamma = nn.Parameter(torch.full((n, self.d_min), 1.0 / self.d_max))
        self.scale = cfg.alpha / cfg.r

    def _factors(self) -> tuple[Tensor, Tensor]:
        """U = [B_1 … B_n] (d_max × n·r) and V = [diag(λ_i) A diag(γ_i)]_i (n·r × d_min)."""
        shared = self.shared
        assert shared is not None
        n = self.randlora_lambda.shape[0]
        A = shared.A[:, : self.d_min].to(self.randlora_gamma)
        U = shared.B[: self.d_max, :n, :].reshape(self.d_max, -1).to(self.randlora_gamma)
        V = self.randlora_lambda[:, :, None] * A[None, :, :] * self.randlora_gamma[:, None, :]
        return U, V.reshape(-1, self.d_min)

    def delta_output(self, x: Tensor) -> Tensor:
        U, V = self._factors()
        x = x.to(V.dtype)
        if self.transposed:  # ΔW = s·Vᵀ Uᵀ
            return F.linear(F.linear(x, U.T), V.T) * self.scale
        return F.linear(F.linear(x, V), U) * self.scale

    def delta_weight(self, weight: Tensor) -> Tensor:
        U, V = self._factors()
        core = U @ V * self.scale
        return (core.T if self.transposed else core).to(weight.dtype)

    def reference_forward(self, x: Tensor, base: nn.Module) -> Tensor:
        """ΔW_core = s · Σ_i B_i diag(λ_i) A diag(γ_i), summed term by term in float64."""
        shared = self.shared
        assert shared is not None
        A = shared.A[:, : self.d_min].double()
        core = torch.zeros(self.d_max, self.d_min, dtype=torch.float64)
        for i in range(self.randlora_lambda.shape[0]):
            B_i = shared.B[: self.d_max, i, :].double()
            lam, gam = self.randlora_lambda[i].detach().double(), self.randlora_gamma[i].detach().double()
            core += B_i @ torch.diag(lam) @ A @ torch.diag(gam)
        core *= self.scale
        return dense_linear(x, base, core.T if self.transposed else core)

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Config) -> int:
        d_min = min(cls.dims(base))
        return num_bases(d_min, cfg.r) * (cfg.r + d_min)
