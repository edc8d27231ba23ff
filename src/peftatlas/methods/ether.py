"""ETHER and ETHER+ — fine-tuning by hyperplane reflections (Bini, Roth, Akata, Khoreva, ICML 2024,
arXiv:2405.20271).

Hypothesis: a fine-tuning update needs very few degrees of freedom and should stay at a *fixed,
bounded distance* from the pretrained weights: one Householder reflection per block of the input
space (``‖H − I‖_F = 2`` whatever the learning rate) is enough, which makes training robust to
hyperparameters. ETHER+ relaxes the hard reflection into ``I − ûûᵀ + v̂v̂ᵀ`` (not orthogonal,
distance ≤ 2, identity at init) and may act on both sides of ``W``.

Pseudocode (PyTorch layout, ``n`` blocks of the input space)::

    ETHER : u_n ~ Kaiming;  H_n = I − 2 û_n û_nᵀ                 # a reflection: NOT the identity at init
    ETHER+: u_n ~ Kaiming, v_n ← −u_n;  H_n = I − û_n û_nᵀ + v̂_n v̂_nᵀ   # = I at init
    y = W0 · blockdiag(H) x + b                                   # O(d) per token: x − 2 û (ûᵀx)
    ETHER+ two-sided: y = H' (W0 H x) + b with H' on the output blocks (bias untouched)
    merge: W ← [H'] W0 blockdiag(H)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.method import BaseFn, LayerAdapter, MethodError, register
from ._rotation import effective_bias, orthogonality_error


def _unit(u: Tensor) -> Tensor:
    return u / u.norm(dim=-1, keepdim=True)


def _kaiming_blocks(n: int, size: int) -> Tensor:
    u = torch.empty(n, size)
    nn.init.kaiming_uniform_(u, a=math.sqrt(5))
    return u


def _reflect_delta(x: Tensor, u: Tensor, v: Tensor | None) -> Tensor:
    """``(H − I) x`` per block of the last dimension: ``−2û(ûᵀx)`` (ETHER) or ``v̂(v̂ᵀx) − û(ûᵀx)`` (ETHER+)."""
    n, size = u.shape
    xb = x.reshape(*x.shape[:-1], n, size)
    uh = _unit(u)
    if v is None:
        delta = -2.0 * (xb * uh).sum(-1, keepdim=True) * uh
    else:
        vh = _unit(v)
        delta = (xb * vh).sum(-1, keepdim=True) * vh - (xb * uh).sum(-1, keepdim=True) * uh
    return delta.reshape(x.shape)


def _dense(u: Tensor, v: Tensor | None) -> Tensor:
    """Explicit ``blockdiag(H_n)``."""
    blocks = []
    for n in range(u.shape[0]):
        uh = _unit(u[n])
        eye = torch.eye(u.shape[1], dtype=u.dtype)
        if v is None:
            blocks.append(eye - 2.0 * torch.outer(uh, uh))
        else:
            vh = _unit(v[n])
            blocks.append(eye - torch.outer(uh, uh) + torch.outer(vh, vh))
    return torch.block_diag(*blocks)


def _blocks(name: str, d: int, n: int) -> int:
    if n < 1 or d % n:
        raise MethodError(f"{name}: n_blocks = {n} must be ≥ 1 and divide the dimension {d}")
    return d // n


@register("ether")
class ETHER(LayerAdapter):
    family = "rotation"
    summary = "W' = W0·blockdiag(I − 2ûûᵀ): one hyperplane reflection per block; fixed distance 2 from W0."
    formula = "d_in"
    noop_at_init: ClassVar[bool] = False  # a reflection is never the identity
    test_config: ClassVar[dict[str, Any]] = {"n_blocks": 2}
    plus: ClassVar[bool] = False

    @dataclasses.dataclass
    class Config:
        n_blocks: int = 1

    def __init__(self, base: nn.Module, cfg: Any, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        object.__setattr__(self, "_base", base)
        d_out, d_in = self.dims(base)
        size = _blocks(self.name, d_in, cfg.n_blocks)
        self.ether_u = nn.Parameter(_kaiming_blocks(cfg.n_blocks, size))
        self.ether_v = nn.Parameter(-self.ether_u.detach().clone()) if self.plus else None
        if getattr(cfg, "two_sided", False):
            out_size = _blocks(self.name, d_out, cfg.n_blocks)
            self.ether_u_out = nn.Parameter(_kaiming_blocks(cfg.n_blocks, out_size))
            self.ether_v_out = nn.Parameter(-self.ether_u_out.detach().clone())
        else:
            self.ether_u_out = self.ether_v_out = None

    def transform_matrix(self) -> Tensor:
        """Dense input-side ``blockdiag(H_n)`` (d_in × d_in)."""
        return _dense(self.ether_u.detach(), None if self.ether_v is None else self.ether_v.detach())

    def orthogonality_error(self) -> float:
        """0 up to rounding for ETHER (a reflection); ETHER+ is not orthogonal by design."""
        return orthogonality_error(self.transform_matrix())

    def forward(self, x: Tensor, base_fn: BaseFn) -> Tensor:
        x32 = x.to(self.ether_u.dtype)
        y = base_fn((x32 + _reflect_delta(x32, self.ether_u, self.ether_v)).to(x.dtype))
        if self.ether_u_out is None:
            return y
        bias = effective_bias(base_fn, self._base, x)
        linear = y.float() if bias is None else y.float() - bias.float()
        return y + _reflect_delta(linear, self.ether_u_out, self.ether_v_out).to(y.dtype)

    def merged_params(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        w = params["weight"].float()
        u, v = self.ether_u.detach(), None if self.ether_v is None else self.ether_v.detach()
        merged = w + _reflect_delta(w, u, v)  # rows: w H (H symmetric)
        if self.ether_u_out is not None:
            uo, vo = self.ether_u_out.detach(), self.ether_v_out.detach()
            merged = merged + _reflect_delta(merged.T, uo, vo).T  # H' W
        return {**params, "weight": merged.to(params["weight"].dtype)}

    def reference_forward(self, x: Tensor, base: nn.Module) -> Tensor:
        W = base.weight.detach().float() @ self.transform_matrix()
        if self.ether_u_out is not None:
            W = _dense(self.ether_u_out.detach(), self.ether_v_out.detach()) @ W
        bias = None if base.bias is None else base.bias.detach().float()
        return F.linear(x.float(), W, bias)

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Any) -> int:
        d_out, d_in = cls.dims(base)
        _blocks(cls.name, d_in, cfg.n_blocks)
        if getattr(cfg, "two_sided", False):
            _blocks(cls.name, d_out, cfg.n_blocks)
        per_side = 2 if cls.plus else 1
        return per_side * d_in + (2 * d_out if getattr(cfg, "two_sided", False) else 0)


@register("ether_plus")
class ETHERPlus(ETHER):
    """ETHER+: ``H = I − ûûᵀ + v̂v̂ᵀ`` (v ← −u at init, so H = I); optionally on both sides of W0."""

    summary = "W' = [H'] W0 blockdiag(I − ûûᵀ + v̂v̂ᵀ); identity at init; distance from I ≤ 2 per side."
    formula = "2·d_in (+ 2·d_out when two_sided)"
    noop_at_init: ClassVar[bool] = True
    test_config: ClassVar[dict[str, Any]] = {"n_blocks": 2, "two_sided": True}
    plus: ClassVar[bool] = True

    @dataclasses.dataclass
    class Config:
        n_blocks: int = 1
        two_sided: bool = False
