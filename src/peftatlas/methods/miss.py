"""MiSS (Matrix Shard Sharing) and its predecessor Bone (Block-Affine adaptation) — Kang et al.,
"MiSS: Balancing LoRA Performance and Efficiency with Simple Shard Sharing", arXiv:2409.15371
(earlier versions of the same arXiv entry: "Bone: Block-Affine Adaptation of Large Language Models").

Hypothesis (MiSS): one small trainable shard, shared by every column block of ΔW, is enough — the
update is periodic along the input axis. Bone: the update of each r×r block of W is an affine
function of that block, with one trainable r×r matrix per row of blocks (weight-guided update).

Pseudocode (MiSS)::

    M ← 0 ∈ R^{r × d_out}
    ΔW[o, q] = M[q mod r, o]            # ΔW = [Mᵀ Mᵀ … Mᵀ] (last copy cut at d_in)
    y = W0 x + Mᵀ · Σ_g x̃_g              # x̃ = x zero-padded to a multiple of r, cut into r-blocks x̃_g

Pseudocode (Bone)::

    r divides d_in and d_out;  M_i ← 0 ∈ R^{r × r} for every row block i
    ΔW_{ij} = W0_{ij} M_i + M_i          # W0_{ij}: the r×r block (i, j) of the (current) weight
    y = (W0 + ΔW) x + b                  # one matmul with the on-the-fly merged weight
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.method import BaseFn, LayerAdapter, MethodError, register
from ._factors import dense_linear, require


@register("miss")
class MiSS(LayerAdapter):
    family = "structured-full-rank"
    summary = "ΔW = [Mᵀ Mᵀ … Mᵀ]: one r×d_out shard shared by every input block (periodic along the input)."
    formula = "r·d_out"
    size_knob: ClassVar[str | None] = "r"
    test_config: ClassVar[dict[str, Any]] = {"r": 5}

    @dataclasses.dataclass
    class Config:
        r: int = 64

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        require(cfg.r >= 1, "miss", f"shard size r must be ≥ 1, got {cfg.r}")

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        d_out, _ = self.dims(base)
        self.miss_shard = nn.Parameter(torch.zeros(cfg.r, d_out))

    def delta_output(self, x: Tensor) -> Tensor:
        x = x.to(self.miss_shard.dtype)
        r = self.cfg.r
        x = F.pad(x, (0, (-x.shape[-1]) % r))
        z = x.reshape(*x.shape[:-1], -1, r).sum(-2)
        return (z.reshape(-1, r) @ self.miss_shard).reshape(*z.shape[:-1], -1)

    def delta_weight(self, weight: Tensor) -> Tensor:
        d_in = weight.shape[1]
        cols = torch.arange(d_in, device=self.miss_shard.device) % self.cfg.r
        return self.miss_shard.T[:, cols].to(weight.dtype)

    def reference_forward(self, x: Tensor, base: nn.Module) -> Tensor:
        """ΔW built by concatenating whole copies of Mᵀ and cutting the last one at d_in."""
        d_in = base.weight.shape[1]
        copies = -(-d_in // self.cfg.r)
        delta = torch.cat([self.miss_shard.double().T] * copies, dim=1)[:, :d_in]
        return dense_linear(x, base, delta)

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Config) -> int:
        return cfg.r * cls.dims(base)[0]


@register("bone")
class Bone(LayerAdapter):
    family = "structured-full-rank"
    summary = "ΔW_ij = W_ij M_i + M_i on r×r blocks: a weight-guided block-affine update (MiSS's predecessor)."
    formula = "r·d_out"
    size_knob: ClassVar[str | None] = "r"
    stackable: ClassVar[bool] = False  # its update depends on W, so it must act on the base weight itself
    test_config: ClassVar[dict[str, Any]] = {"r": 4}

    @dataclasses.dataclass
    class Config:
        r: int = 64

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        require(cfg.r >= 1, "bone", f"block size r must be ≥ 1, got {cfg.r}")

    @classmethod
    def check_layer(cls, base: nn.Module, cfg: Config) -> tuple[int, int]:
        d_out, d_in = cls.dims(base)
        require(d_in % cfg.r == 0 and d_out % cfg.r == 0, "bone",
                f"block size r={cfg.r} must divide both d_in={d_in} and d_out={d_out} of this layer")
        return d_out, d_in

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        d_out, _ = self.check_layer(base, cfg)
        object.__setattr__(self, "_base", base)
        self.bone_blocks = nn.Parameter(torch.zeros(d_out // cfg.r, cfg.r, cfg.r))

    def delta_weight(self, weight: Tensor) -> Tensor:
        r = self.cfg.r
        d_out, d_in = weight.shape
        W = weight.to(self.bone_blocks.dtype).reshape(d_out // r, r, d_in // r, r).transpose(1, 2)  # (m, n, r, r)
        M = self.bone_blocks[:, None]  # (m, 1, r, r), shared along the row of blocks
        return (W @ M + M).transpose(1, 2).reshape(d_out, d_in)

    def forward(self, x: Tensor, base_fn: BaseFn) -> Tensor:
        if base_fn is not self._base:
            raise MethodError("bone adapters act on the base weight itself and cannot follow another live adapter")
        params = {k: v.float() for k, v in self._base.named_parameters(recurse=False)}
        merged = self.merged_params(params)
        y = F.linear(x.to(self.bone_blocks.dtype), merged["weight"], merged.get("bias"))
        return y.to(x.dtype)

    def merged_params(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        w = params["weight"]
        return {**params, "weight": (w.float() + self.delta_weight(w.float())).to(w.dtype)}

    def reference_forward(self, x: Tensor, base: nn.Module) -> Tensor:
        """Block by block: ΔW[i·r:(i+1)·r, j·r:(j+1)·r] = W0_ij M_i + M_i."""
        r = self.cfg.r
        W = base.weight.detach().double()
        M = self.bone_blocks.detach().double()
        delta = torch.zeros_like(W)
        for i in range(W.shape[0] // r):
            for j in range(W.shape[1] // r):
                block = W[i * r:(i + 1) * r, j * r:(j + 1) * r]
                delta[i * r:(i + 1) * r, j * r:(j + 1) * r] = block @ M[i] + M[i]
        return dense_linear(x, base, delta)

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Config) -> int:
        return cfg.r * cls.check_layer(base, cfg)[0]
