"""GOFT and qGOFT: (quasi-)Givens orthogonal fine-tuning (Ma et al., ICML 2024, arXiv 2404.04316).

Hypothesis: fine-tuning mostly rotates each layer's input space (neuron norms and pairwise angles are
preserved), and the needed rotation lies in a (d−1)-parameter family: a binary tree of Givens
rotations. qGOFT adds that small departures from orthogonality (norm and angle changes, softly
penalised) carry the rest. Note: the tree is a (d−1)-dimensional subset of SO(d), whose dimension is
d(d−1)/2; the paper's "equivalent expressiveness to OFT" is false (see ``peftatlas expressivity goft``).

Convention (PyTorch layout ``W0 ∈ R^{d_out × d_in}``): the paper's ``h = (R W)ᵀ x`` with its ``W``
being ``W0ᵀ`` becomes ``W' = W0 Rᵀ``: R (``d_in × d_in``) rotates every neuron ``w_o`` (row of ``W0``)
into ``R w_o``, and the layer computes ``y = W0 (Rᵀ x) + b``. Rectangular layers need nothing special.

Pseudocode::

    R = P_L ⋯ P_2 P_1,  L = ⌈log₂ d_in⌉;  level r rotates pairs (i, i + 2^{r−1}), i ≡ 0 (mod 2^r)
    GOFT:   block(i, j) = [[cos θ, −sin θ], [sin θ, cos θ]],  θ = π·tanh(φ),  φ = 0 at init   (d_in − 1 params)
    qGOFT:  block(i, j) = [[a, b], [c, e]] free, I₂ at init                                   (4(d_in − 1) params)
            loss += λ Σ_blocks ⟨α, β⟩²,  α = (a, c), β = (b, e) the block's columns
    GOFT* (scaling=True):  R ← R · diag(s), s = 1 at init                                     (+ d_in params)
    y = W0 · (s ⊙ (P_1ᵀ ⋯ P_Lᵀ x)) + b     # level by level, deepest first; R is never built
    merge: W ← W0 · diag(s) · Rᵀ           # row o becomes R (s ⊙ w_o), again level by level

For ``d_in`` not a power of two, level r keeps only the pairs with ``i + 2^{r−1} < d_in``; every index
``j ≥ 1`` is the partner of exactly one pair, so the tree always has ``d_in − 1`` blocks.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..core.method import BaseFn, LayerAdapter, MethodError, register
from ..ops.givens import givens_rotation_apply, givens_tree_apply, givens_tree_dense, rotation_blocks


class _GivensTree(LayerAdapter):
    """Input-side tree rotation ``W' = W0 · diag(s) · Rᵀ``; subclasses define the 2×2 blocks."""

    family = "rotation"
    params_per_block: ClassVar[int] = 1  # trainable numbers per 2×2 block

    def __init__(self, base: nn.Module, cfg: Any, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        _, d_in = self.dims(base)
        self.d_in = d_in
        self.scaler = nn.Parameter(torch.ones(d_in)) if cfg.scaling else None

    def blocks(self) -> Tensor:
        """The ``(d_in − 1, 2, 2)`` blocks of the tree, level 1 first."""
        raise NotImplementedError

    def apply_tree(self, x: Tensor, transpose: bool) -> Tensor:
        """``R x`` or ``Rᵀ x`` on the last dimension, level by level (never builds R)."""
        return givens_tree_apply(x, self.blocks(), transpose)

    def rotate_input(self, x: Tensor) -> Tensor:
        """``diag(s) Rᵀ x`` in float32 (the fast path)."""
        xr = self.apply_tree(x.to(torch.float32), transpose=True)
        return xr * self.scaler if self.scaler is not None else xr

    def forward(self, x: Tensor, base_fn: BaseFn) -> Tensor:
        return base_fn(self.rotate_input(x).to(x.dtype))

    def merged_params(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        w = params["weight"]
        w32 = w.float() * self.scaler.detach() if self.scaler is not None else w.float()
        with torch.no_grad():
            rotated = self.apply_tree(w32, transpose=False)  # rows w_o ↦ R (s ⊙ w_o)
        return {**params, "weight": rotated.to(w.dtype)}

    def dense_rotation(self) -> Tensor:
        """Explicit ``R · diag(s)`` (``d_in × d_in``) from dense level matrices: the test oracle."""
        R = givens_tree_dense(self.blocks().detach(), self.d_in)
        return R * self.scaler.detach() if self.scaler is not None else R

    def reference_forward(self, x: Tensor, base: nn.Module) -> Tensor:
        params = {k: v.detach().float() for k, v in base.named_parameters(recurse=False)}
        params["weight"] = params["weight"] @ self.dense_rotation().t()
        return torch.func.functional_call(base, params, (x.float(),), strict=False)

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Any) -> int:
        _, d_in = cls.dims(base)
        return cls.params_per_block * (d_in - 1) + (d_in if cfg.scaling else 0)


@register("goft")
class GOFT(_GivensTree):
    summary = "W' = W0·Rᵀ with R a binary tree of d_in−1 Givens rotations (θ = π·tanh φ), applied level by level."
    formula = "d_in − 1  (scaling: 2·d_in − 1)"
    test_config: ClassVar[dict[str, Any]] = {}

    @dataclasses.dataclass
    class Config:
        scaling: bool = False  # GOFT*: learnable per-input-coordinate norm scaling (d_in extra params)

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        self.phi = nn.Parameter(torch.zeros(self.d_in - 1))

    def angles(self) -> Tensor:
        """θ = π·tanh(φ) ∈ (−π, π)."""
        return math.pi * torch.tanh(self.phi)

    def blocks(self) -> Tensor:
        return rotation_blocks(self.angles())

    def apply_tree(self, x: Tensor, transpose: bool) -> Tensor:
        return givens_rotation_apply(x, self.angles(), transpose)  # cheaper backward for rotations


@register("qgoft")
class QGOFT(_GivensTree):
    summary = "GOFT's tree with free 2×2 blocks and the soft orthogonality penalty λ·Σ⟨α,β⟩² (via extra_loss)."
    formula = "4·(d_in − 1)  (scaling: 5·d_in − 4)"
    params_per_block: ClassVar[int] = 4
    test_config: ClassVar[dict[str, Any]] = {"orth_lambda": 0.01}

    @dataclasses.dataclass
    class Config:
        orth_lambda: float = 0.001  # λ; paper uses 0.001–0.05 (GLUE), 0.01 (LLaMA)
        scaling: bool = False

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        if not (math.isfinite(cfg.orth_lambda) and cfg.orth_lambda >= 0):
            raise MethodError(f"qgoft: orth_lambda must be a finite number ≥ 0, got {cfg.orth_lambda}")

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        self.quasi = nn.Parameter(torch.eye(2).repeat(self.d_in - 1, 1, 1))

    def blocks(self) -> Tensor:
        return self.quasi

    def orthogonality_penalty(self) -> Tensor:
        """``Σ ⟨α, β⟩²`` over blocks, with α, β the columns of each block (0 for rotations)."""
        q = self.quasi
        return (q[:, 0, 0] * q[:, 0, 1] + q[:, 1, 0] * q[:, 1, 1]).pow(2).sum()

    def extra_loss(self) -> Tensor | None:
        return self.cfg.orth_lambda * self.orthogonality_penalty()
