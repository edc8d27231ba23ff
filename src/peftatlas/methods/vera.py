"""VeRA: vector-based random matrix adaptation (Kopiczko, Blankevoort, Asano, ICLR 2024).

Hypothesis: random frozen subspaces shared by all layers suffice; each layer only needs to learn
per-dimension gains on them.

Pseudocode::

    A ~ KaimingUniform(r × max d_in), B ~ KaimingUniform(max d_out × r)   # frozen, shared, from a seed
    per layer:  b ← 0 ∈ R^{d_out},  d ← d_init·1 ∈ R^r                    # trainable
    y = W0 x + b ⊙ (B[:d_out] (d ⊙ (A[:, :d_in] x)))
    merge: W ← W0 + diag(b) B[:d_out] diag(d) A[:, :d_in]

A and B are regenerated bit-identically from ``projection_seed`` with a CPU generator, so the
adapter file stores only b and d (d_out + r numbers per layer).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.method import LayerAdapter, MethodError, register


def kaiming_uniform_from_seed(rows: int, cols: int, generator: torch.Generator) -> Tensor:
    """Kaiming-uniform with gain √2 and fan_in = cols: U(−√(6/cols), √(6/cols)), on the CPU."""
    bound = math.sqrt(6.0 / cols)
    return torch.rand(rows, cols, generator=generator, dtype=torch.float32) * (2 * bound) - bound


class VeRAProjections(nn.Module):
    """The frozen shared bases; non-persistent buffers (never saved, regenerated from the seed)."""

    def __init__(self, r: int, max_in: int, max_out: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator(device="cpu").manual_seed(seed)
        self.register_buffer("A", kaiming_uniform_from_seed(r, max_in, g), persistent=False)
        self.register_buffer("B", kaiming_uniform_from_seed(max_out, r, g), persistent=False)


@register("vera")
class VeRA(LayerAdapter):
    family = "random-subspace"
    summary = "Frozen shared random A, B; per-layer trainable scaling vectors b (d_out) and d (r)."
    formula = "d_out + r"
    size_knob: ClassVar[str | None] = "r"
    test_config: ClassVar[dict[str, Any]] = {"r": 16}

    @dataclasses.dataclass
    class Config:
        r: int = 256
        d_init: float = 0.1
        projection_seed: int = 0
        dropout: float = 0.0

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        if cfg.r < 1:
            raise MethodError(f"vera: rank r must be ≥ 1, got {cfg.r}")

    @classmethod
    def build_shared(cls, targets: dict[str, nn.Module], cfg: Config) -> nn.Module:
        shapes = [cls.dims(m) for m in targets.values()] or [(1, 1)]
        max_out = max(s[0] for s in shapes)
        max_in = max(s[1] for s in shapes)
        return VeRAProjections(cfg.r, max_in, max_out, cfg.projection_seed)

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        if shared is None:
            raise MethodError("vera needs its shared projections; use attach()/add_adapter()")
        d_out, d_in = self.dims(base)
        self.d_out, self.d_in = d_out, d_in
        self.vera_b = nn.Parameter(torch.zeros(d_out))
        self.vera_d = nn.Parameter(torch.full((cfg.r,), float(cfg.d_init)))
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def _bases(self) -> tuple[Tensor, Tensor]:
        shared = self.shared
        assert shared is not None
        return shared.A[:, : self.d_in], shared.B[: self.d_out, :]

    def delta_output(self, x: Tensor) -> Tensor:
        A, B = self._bases()
        x = self.dropout(x.to(self.vera_b.dtype))
        h = F.linear(x, A.to(x.dtype)) * self.vera_d
        return F.linear(h, B.to(x.dtype)) * self.vera_b

    def delta_weight(self, weight: Tensor) -> Tensor:
        A, B = self._bases()
        return ((self.vera_b[:, None] * B) @ (self.vera_d[:, None] * A)).to(weight.dtype)

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Config) -> int:
        return cls.dims(base)[0] + cfg.r
