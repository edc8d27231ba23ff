"""MoRA: high-rank updating with a square matrix (Jiang et al., "MoRA: High-Rank Updating for
Parameter-Efficient Fine-Tuning", arXiv:2405.12130).

Hypothesis: tasks that store new knowledge need a high-rank ΔW; at LoRA's parameter count a square
r̂×r̂ matrix between fixed (parameter-free) compression and decompression maps reaches rank r̂ ≫ r.

Pseudocode::

    r̂ = round(√((d_in + d_out)·r))        (even for "rope"), so r̂² ≈ LoRA's r·(d_in + d_out)
    M ← 0 ∈ R^{r̂ × r̂}
    x̃ = x zero-padded to G·r̂,  G = ⌈d_in / r̂⌉;  blocks x̃_g ∈ R^{r̂}
    "sharing":  z = Σ_g x̃_g;          u = M z;         y_Δ = [u, u, …] cut at d_out
                ⇒ ΔW[p, q] = M[p mod r̂, q mod r̂]
    "rope":     u_g = M R_g x̃_g;      y_Δ = [u_0, …, u_{G−1}, u_0, …] cut at d_out
                R_g = rotary rotation of position g (pairs (i, i + r̂/2), angle g·10000^(−2i/r̂))
                ⇒ ΔW block (o, o mod G) = M R_{o mod G}, other blocks 0
    y = W0 x + y_Δ                          # merge: W ← W0 + ΔW (explicit d_out×d_in matrix)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.method import LayerAdapter, register
from ._factors import dense_linear, last_axis_mm, require


def rope_angles(groups: int, size: int) -> Tensor:
    """Angles θ[g, i] = g · 10000^(−2i/size) for the size/2 rotated pairs of each group (float64)."""
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, size, 2, dtype=torch.float64) / size))
    return torch.arange(groups, dtype=torch.float64)[:, None] * inv_freq[None, :]


@register("mora")
class MoRA(LayerAdapter):
    family = "structured-full-rank"
    summary = "ΔW x = decompress(M · compress(x)) with a trainable square r̂×r̂ M: rank r̂ at LoRA's budget."
    formula = "r̂²,  r̂ = round(√((d_in + d_out)·r))"
    size_knob: ClassVar[str | None] = "r"
    test_config: ClassVar[dict[str, Any]] = {"r": 2}

    @dataclasses.dataclass
    class Config:
        r: int = 8  # the LoRA rank whose parameter count MoRA matches
        compression: str = "sharing"  # "sharing" or "rope"

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        require(cfg.r >= 1, "mora", f"rank r must be ≥ 1, got {cfg.r}")
        require(cfg.compression in ("sharing", "rope"), "mora",
                f"compression must be 'sharing' or 'rope', got {cfg.compression!r}")

    @classmethod
    def square_size(cls, base: nn.Module, cfg: Config) -> int:
        d_out, d_in = cls.dims(base)
        size = int(math.sqrt((d_in + d_out) * cfg.r) + 0.5)
        return max(2, size // 2 * 2) if cfg.compression == "rope" else size

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        self.d_out, self.d_in = self.dims(base)
        self.size = self.square_size(base, cfg)
        self.groups = -(-self.d_in // self.size)
        self.mora_M = nn.Parameter(torch.zeros(self.size, self.size))
        if cfg.compression == "rope":
            theta = rope_angles(self.groups, self.size)
            self.register_buffer("cos", torch.cos(theta).float(), persistent=False)
            self.register_buffer("sin", torch.sin(theta).float(), persistent=False)

    def _rotate(self, blocks: Tensor) -> Tensor:
        """R_g x̃_g for blocks of shape (..., G, r̂)."""
        h = self.size // 2
        a, b = blocks[..., :h], blocks[..., h:]
        return torch.cat([a * self.cos - b * self.sin, b * self.cos + a * self.sin], dim=-1)

    def _decompress(self, u: Tensor) -> Tensor:
        copies = -(-self.d_out // u.shape[-1])
        return u.repeat(*([1] * (u.dim() - 1)), copies)[..., : self.d_out]

    def delta_output(self, x: Tensor) -> Tensor:
        x = x.to(self.mora_M.dtype)
        blocks = F.pad(x, (0, self.groups * self.size - self.d_in)).reshape(*x.shape[:-1], self.groups, self.size)
        if self.cfg.compression == "sharing":
            return self._decompress(last_axis_mm(blocks.sum(-2), self.mora_M))
        u = last_axis_mm(self._rotate(blocks), self.mora_M)  # (..., G, r̂)
        return self._decompress(u.flatten(-2))

    def delta_weight(self, weight: Tensor) -> Tensor:
        p = torch.arange(self.d_out, device=self.mora_M.device)
        q = torch.arange(self.d_in, device=self.mora_M.device)
        if self.cfg.compression == "sharing":
            return self.mora_M[p[:, None] % self.size, q[None, :] % self.size].to(weight.dtype)
        # ΔW[p, q] = (M R_g)[p mod r̂, q mod r̂] where g = q // r̂ and (p // r̂) ≡ g (mod G), else 0
        eye = torch.eye(self.size, device=self.mora_M.device)
        rotated = self._rotate(eye[:, None, :].expand(-1, self.groups, -1))  # [j, g, i] = (R_g e_j)_i
        rotations = rotated.permute(1, 2, 0)  # [g, i, j] = R_g[i, j]
        blocks = self.mora_M @ rotations  # (G, r̂, r̂)
        g_in = q // self.size
        values = blocks[g_in[None, :], p[:, None] % self.size, q[None, :] % self.size]
        same = (p[:, None] // self.size) % self.groups == g_in[None, :]
        return (values * same).to(weight.dtype)

    def reference_forward(self, x: Tensor, base: nn.Module) -> Tensor:
        """ΔW assembled block by block from explicit 2×2 rotations (rope) or copies of M (sharing)."""
        s, G = self.size, self.groups
        M = self.mora_M.detach().double()
        out_blocks = -(-self.d_out // s)
        big = torch.zeros(out_blocks * s, G * s, dtype=torch.float64)
        for o in range(out_blocks):
            for g in range(G):
                if self.cfg.compression == "sharing":
                    big[o * s:(o + 1) * s, g * s:(g + 1) * s] = M
                elif o % G == g:
                    R = torch.zeros(s, s, dtype=torch.float64)
                    theta = rope_angles(G, s)[g]
                    for i in range(s // 2):
                        c, n = math.cos(theta[i]), math.sin(theta[i])
                        R[i, i], R[i, i + s // 2] = c, -n
                        R[i + s // 2, i], R[i + s // 2, i + s // 2] = n, c
                    big[o * s:(o + 1) * s, g * s:(g + 1) * s] = M @ R
        return dense_linear(x, base, big[: self.d_out, : self.d_in])

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Config) -> int:
        return cls.square_size(base, cfg) ** 2
