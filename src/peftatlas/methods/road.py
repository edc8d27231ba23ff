"""RoAd — 2D rotary adaptation (Liao, Monz, 2024, arXiv:2409.00119).

Hypothesis: fine-tuning mostly changes the *angle* of pairs of output features (the paper finds
angular rather than magnitude changes dominate in fine-tuned representations); rotating disjoint
2-D planes of each layer's output, with a per-plane scale, is enough — and it costs only
element-wise work, so batches mixing many adapters stay cheap.

Pseudocode (outputs grouped in runs of g; coordinate j of the first half pairs with j + g/2)::

    road_1: one (θ, α) per pair         road_2: one per output coordinate
    road_4: per coordinate (θ_cos, θ_sin, α_cos, α_sin)
    c_k = α cos θ,  s_k = α sin θ           # θ ← 0, α ← 1 at init → identity
    h = W0 x + b
    y_first  = c ⊙ h_first − s ⊙ h_second
    y_second = c ⊙ h_second + s ⊙ h_first    # y = R h with R block-2×2 (scaled rotations)
    merge: W ← R W0,  b ← R b                  # applied element-wise, no d × d matrix
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..core.method import BaseFn, LayerAdapter, MethodError, register
from ._rotation import orthogonality_error

VARIANTS = {"road_1": 1, "road_2": 2, "road_4": 4}  # trainable numbers per output coordinate


@register("road")
class RoAd(LayerAdapter):
    family = "rotation"
    summary = "y = R(W0x + b), R = 2×2 scaled rotations on paired output coordinates; element-wise."
    formula = "road_1: d_out; road_2: 2·d_out; road_4: 4·d_out"
    test_config: ClassVar[dict[str, Any]] = {"group_size": 8, "variant": "road_2"}

    @dataclasses.dataclass
    class Config:
        variant: str = "road_1"
        group_size: int = 64

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        if cfg.variant not in VARIANTS:
            raise MethodError(f"road: variant must be one of {sorted(VARIANTS)}, got {cfg.variant!r}")
        if cfg.group_size < 2 or cfg.group_size % 2:
            raise MethodError(f"road: group_size must be an even number ≥ 2, got {cfg.group_size}")

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        self.param_count(base, cfg)  # validates group_size against the layer
        d_out, _ = self.dims(base)
        size = d_out * VARIANTS[cfg.variant] // 2
        self.road_theta = nn.Parameter(torch.zeros(size))
        self.road_alpha = nn.Parameter(torch.ones(size))

    def coefficients(self) -> tuple[Tensor, Tensor]:
        """Per-output-coordinate ``(c, s)``, each of shape ``(d_out,)``."""
        g, v = self.cfg.group_size, self.cfg.variant
        theta, alpha = self.road_theta, self.road_alpha
        if v == "road_1":  # one pair shares (θ, α): repeat each half-group for both halves
            theta = theta.view(-1, 1, g // 2).expand(-1, 2, -1).reshape(-1)
            alpha = alpha.view(-1, 1, g // 2).expand(-1, 2, -1).reshape(-1)
            return alpha * theta.cos(), alpha * theta.sin()
        if v == "road_2":
            return alpha * theta.cos(), alpha * theta.sin()
        theta, alpha = theta.view(-1, 2, g), alpha.view(-1, 2, g)  # road_4: [cos-part, sin-part] per group
        return (alpha[:, 0] * theta[:, 0].cos()).reshape(-1), (alpha[:, 1] * theta[:, 1].sin()).reshape(-1)

    def rotate_output(self, h: Tensor, c: Tensor, s: Tensor) -> Tensor:
        """``R h`` on the last dimension (element-wise)."""
        g = self.cfg.group_size
        hv = h.reshape(*h.shape[:-1], -1, 2, g // 2)
        partner = torch.stack((-hv[..., 1, :], hv[..., 0, :]), dim=-2).reshape(h.shape)
        return h * c + partner * s

    def rotation_matrix(self) -> Tensor:
        """Dense ``R`` (d_out × d_out) written entry by entry; for tests and probes."""
        c, s = (t.detach() for t in self.coefficients())
        d, half = c.shape[0], self.cfg.group_size // 2
        R = torch.diag(c)
        for k in range(d):
            first = (k % self.cfg.group_size) < half
            j = k + half if first else k - half
            R[k, j] = -s[k] if first else s[k]
        return R

    def orthogonality_error(self) -> float:
        """‖RᵀR − I‖_F; non-zero whenever a scale α ≠ 1 (RoAd's blocks are *scaled* rotations)."""
        return orthogonality_error(self.rotation_matrix())

    def forward(self, x: Tensor, base_fn: BaseFn) -> Tensor:
        y = base_fn(x)
        c, s = self.coefficients()
        return self.rotate_output(y.to(c.dtype), c, s).to(y.dtype)

    def merged_params(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        c, s = (t.detach() for t in self.coefficients())
        out = dict(params)
        w = params["weight"]
        out["weight"] = self.rotate_output(w.float().T, c, s).T.to(w.dtype)
        if params.get("bias") is not None:
            b = params["bias"]
            out["bias"] = self.rotate_output(b.float(), c, s).to(b.dtype)
        return out

    def reference_forward(self, x: Tensor, base: nn.Module) -> Tensor:
        h = torch.nn.functional.linear(x.float(), base.weight.detach().float(),
                                       None if base.bias is None else base.bias.detach().float())
        return h @ self.rotation_matrix().T

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Config) -> int:
        d_out = cls.dims(base)[0]
        if d_out % cfg.group_size:
            raise MethodError(f"road: group_size {cfg.group_size} must divide the layer's output size {d_out}")
        return d_out * VARIANTS[cfg.variant]
