"""OFT — orthogonal fine-tuning (Qiu et al., NeurIPS 2023, arXiv:2306.07280) and OFTv2 (Qiu et al.,
"Orthogonal Finetuning Made Scalable", arXiv:2506.19847).

Hypothesis: pretrained knowledge lives in the pairwise angles between neurons (hyperspherical
energy); a good update rotates the input space of every layer jointly, ``W' = W0 R`` with ``R``
orthogonal, so every neuron keeps its norm and all pairwise angles.

Pseudocode (PyTorch layout ``y = W x``)::

    Q_n = P_n − P_nᵀ  (P_n strictly upper, b(b−1)/2 numbers per block), P ← 0   # R = I at init
    R_n = (I − Q_n)⁻¹ (I + Q_n)                     # exact Cayley (OFT), or its Neumann series (OFTv2)
    y = W0 · blockdiag(R_1..R_n) x + b               # input-centric: rotate x, never form W0 R
    merge: W ← W0 · blockdiag(R)                     # per column block, no d×d matrix

OFTv2 is the same parametrization with the input-centric forward (here the default of both names)
and the Cayley–Neumann approximation ``R ≈ (I + Q)(I + Q + … + Q^{t−1})`` instead of a solve; its
departure from orthogonality is reported by :meth:`OFT.orthogonality_error`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.method import BaseFn, LayerAdapter, MethodError, register
from ._rotation import block_apply, block_apply_weight, cayley, orthogonality_error, packed_size, skew

CAYLEY_METHODS = ("exact", "neumann")


def check_cayley(name: str, method: str, terms: int) -> None:
    """Shared validation of the ``cayley`` / ``neumann_terms`` hyperparameters."""
    if method not in CAYLEY_METHODS:
        raise MethodError(f"{name}: cayley must be one of {CAYLEY_METHODS}, got {method!r}")
    if terms < 1:
        raise MethodError(f"{name}: neumann_terms must be ≥ 1, got {terms}")


def block_count(name: str, d: int, block: int) -> int:
    """``d / block``, with an error naming the divisors when ``block`` does not divide ``d``."""
    if block < 2:
        raise MethodError(f"{name}: block_size must be ≥ 2, got {block}")
    if d % block:
        divisors = [k for k in range(2, min(d, 256) + 1) if d % k == 0]
        raise MethodError(f"{name}: block_size {block} does not divide the layer's input size {d}; "
                          f"divisors of {d}: {divisors}")
    return d // block


@register("oft")
class OFT(LayerAdapter):
    family = "rotation"
    summary = "W' = W0·blockdiag(R), R_n Cayley-orthogonal b×b blocks; x is rotated, W0 R never formed."
    formula = "(d_in/b)·b(b−1)/2"
    size_knob: ClassVar[str | None] = "block_size"
    test_config: ClassVar[dict[str, Any]] = {"block_size": 4}

    @dataclasses.dataclass
    class Config:
        block_size: int = 32
        cayley: str = "exact"  # "exact" (solve) or "neumann" (truncated series, approximately orthogonal)
        neumann_terms: int = 5

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        check_cayley(cls.name, cfg.cayley, cfg.neumann_terms)
        if cfg.block_size < 2:
            raise MethodError(f"{cls.name}: block_size must be ≥ 2, got {cfg.block_size}")

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        _, d_in = self.dims(base)
        n = block_count(self.name, d_in, cfg.block_size)
        self.oft_q = nn.Parameter(torch.zeros(n, packed_size(cfg.block_size)))

    def rotation_blocks(self) -> Tensor:
        """The ``(n, b, b)`` blocks ``R_n``."""
        Q = skew(self.oft_q, self.cfg.block_size)
        return cayley(Q, self.cfg.cayley, self.cfg.neumann_terms)

    def orthogonality_error(self) -> float:
        """``max_n ‖R_nᵀR_n − I‖_F``: rounding-level for ``cayley="exact"``, the approximation error otherwise."""
        return orthogonality_error(self.rotation_blocks())

    def forward(self, x: Tensor, base_fn: BaseFn) -> Tensor:
        rotated = block_apply(x.to(self.oft_q.dtype), self.rotation_blocks())
        return base_fn(rotated.to(x.dtype))

    def merged_params(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        w = params["weight"]
        merged = block_apply_weight(w.float(), self.rotation_blocks().detach())
        return {**params, "weight": merged.to(w.dtype)}

    def reference_forward(self, x: Tensor, base: nn.Module) -> Tensor:
        R = torch.block_diag(*self.rotation_blocks().detach())  # explicit d_in × d_in
        bias = None if base.bias is None else base.bias.detach().float()
        return F.linear(x.float(), base.weight.detach().float() @ R, bias)

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Config) -> int:
        _, d_in = cls.dims(base)
        return block_count(cls.name, d_in, cfg.block_size) * packed_size(cfg.block_size)


@register("oftv2")
class OFTv2(OFT):
    """OFTv2: OFT's parametrization, input-centric forward, Cayley–Neumann (5 terms) by default."""

    summary = "OFT with the input-centric forward and the Cayley–Neumann series (no solve); approx. orthogonal."

    @dataclasses.dataclass
    class Config:
        block_size: int = 32
        cayley: str = "neumann"
        neumann_terms: int = 5
