"""BOFT — butterfly orthogonal fine-tuning (Liu et al., ICLR 2024, arXiv:2311.06243).

Hypothesis: as OFT (updates are joint rotations of each layer's input space), but a block-diagonal
rotation is too restrictive; a product of ``m`` sparse butterfly factors, each made of ``b × b``
Cayley rotations, mixes all coordinates and reaches a much richer set of rotations with
``m·d(b−1)/2`` parameters.

Pseudocode (PyTorch layout ``y = W x``)::

    for i in 0..m−1:  stride s_i = 2^i
        F_i = P_iᵀ · blockdiag(R_{i,1..d/b}) · P_i          # R = Cayley(skew), 0 at init → I
        (P_i groups the coordinates t, t+s_i, …, t+(b−1)s_i of each run of b·s_i coordinates)
    R = F_{m−1} ⋯ F_1 F_0
    y = s ⊙ (W0 R x) + b                                   # s ∈ R^{d_out}, 1 at init (HF PEFT's boft_s)
    merge: W ← diag(s) · W0 · R                            # factors applied to the rows of W0

Each ``P_i`` is a reshape ``(…, d) → (…, d/(b s), b, s)``: no permutation matrix is ever built
(HF PEFT 0.21 multiplies dense ``d × d`` permutation matrices in every forward, and on CPU silently
falls back to ``m = 1``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.method import BaseFn, LayerAdapter, MethodError, register
from ._rotation import (
    butterfly_apply,
    butterfly_dense,
    cayley,
    effective_bias,
    orthogonality_error,
    packed_size,
    skew,
)
from .oft import check_cayley


def check_span(d_in: int, cfg: Any) -> None:
    """Every butterfly factor needs ``d_in`` divisible by ``block_size · 2^(n_factors − 1)``."""
    span = cfg.block_size * 2 ** (cfg.n_factors - 1)
    if d_in % span:
        raise MethodError(f"boft: the input size {d_in} must be divisible by block_size·2^(n_factors−1) "
                          f"= {cfg.block_size}·{2 ** (cfg.n_factors - 1)} = {span}")


@register("boft")
class BOFT(LayerAdapter):
    family = "rotation"
    summary = "W' = diag(s)·W0·F_{m−1}⋯F_0, butterfly factors of b×b Cayley blocks, applied by reshapes."
    formula = "m·(d_in/b)·b(b−1)/2 + d_out (output scale s)"
    size_knob: ClassVar[str | None] = "block_size"
    test_config: ClassVar[dict[str, Any]] = {"block_size": 2, "n_factors": 2}

    @dataclasses.dataclass
    class Config:
        block_size: int = 4
        n_factors: int = 2  # m; needs d_in divisible by block_size · 2^(m−1)
        scale: bool = True  # trainable output scale s (as HF PEFT's boft_s)
        cayley: str = "exact"
        neumann_terms: int = 5

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        check_cayley(cls.name, cfg.cayley, cfg.neumann_terms)
        if cfg.block_size < 2:
            raise MethodError(f"boft: block_size must be ≥ 2, got {cfg.block_size}")
        if cfg.n_factors < 1:
            raise MethodError(f"boft: n_factors must be ≥ 1, got {cfg.n_factors}")

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        object.__setattr__(self, "_base", base)
        d_out, d_in = self.dims(base)
        check_span(d_in, cfg)
        self.boft_q = nn.Parameter(torch.zeros(cfg.n_factors, d_in // cfg.block_size, packed_size(cfg.block_size)))
        self.boft_s = nn.Parameter(torch.ones(d_out)) if cfg.scale else None

    def rotation_blocks(self) -> Tensor:
        """``(m, d_in/b, b, b)``: the Cayley blocks of every factor."""
        return cayley(skew(self.boft_q, self.cfg.block_size), self.cfg.cayley, self.cfg.neumann_terms)

    def orthogonality_error(self) -> float:
        return orthogonality_error(self.rotation_blocks().flatten(0, 1))

    def rotate(self, x: Tensor, blocks: Tensor | None = None, transpose: bool = False) -> Tensor:
        """``R x`` (``Rᵀ x`` if ``transpose``) on the last dimension, factor by factor."""
        blocks = self.rotation_blocks() if blocks is None else blocks
        order = range(self.cfg.n_factors)
        for i in reversed(order) if transpose else order:
            x = butterfly_apply(x, blocks[i], 2**i, transpose=transpose)
        return x

    def forward(self, x: Tensor, base_fn: BaseFn) -> Tensor:
        y = base_fn(self.rotate(x.to(self.boft_q.dtype)).to(x.dtype))
        if self.boft_s is None:
            return y
        bias = effective_bias(base_fn, self._base, x)
        linear = y.float() if bias is None else y.float() - bias.float()
        return y + ((self.boft_s - 1.0) * linear).to(y.dtype)  # = s ⊙ (y − b) + b, exact at s = 1

    def merged_params(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        w = params["weight"]
        merged = self.rotate(w.float(), self.rotation_blocks().detach(), transpose=True)  # rows: w R = (Rᵀ wᵀ)ᵀ
        if self.boft_s is not None:
            merged = self.boft_s.detach()[:, None] * merged
        return {**params, "weight": merged.to(w.dtype)}

    def reference_forward(self, x: Tensor, base: nn.Module) -> Tensor:
        blocks = self.rotation_blocks().detach()
        d_in = base.weight.shape[1]
        R = torch.eye(d_in)
        for i in range(self.cfg.n_factors):  # R = F_{m−1} ⋯ F_0 with explicit permutation matrices
            R = butterfly_dense(blocks[i], 2**i) @ R
        W = base.weight.detach().float() @ R
        if self.boft_s is not None:
            W = self.boft_s.detach()[:, None] * W
        bias = None if base.bias is None else base.bias.detach().float()
        return F.linear(x.float(), W, bias)

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Config) -> int:
        d_out, d_in = cls.dims(base)
        check_span(d_in, cfg)
        return cfg.n_factors * (d_in // cfg.block_size) * packed_size(cfg.block_size) + (d_out if cfg.scale else 0)
