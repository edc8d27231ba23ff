"""C3A: block-circulant adaptation via the FFT (Chen et al., "Parameter-Efficient Fine-Tuning via
Circular Convolution", arXiv:2407.19342).

Hypothesis: ΔW is well approximated by a block-circulant matrix — full rank from d_out·d_in / b
numbers, applied in O(d log b) per token by circular convolution.

Pseudocode::

    b divides d_in and d_out;  m = d_out / b,  n = d_in / b
    w ← 0 ∈ R^{m × n × b}      (init="xavier": the paper's / HF PEFT's random start, not a no-op)
    ΔW = (1 / d_in) · [circ(w[i, j])]_{i<m, j<n},   circ(v)[p, q] = v[(p − q) mod b]
    forward without ΔW:  x → blocks x_j ∈ R^b
        y_i = (1 / d_in) · Σ_j w[i, j] ⊛ x_j = (1 / d_in) · IRFFT( Σ_j RFFT(w[i, j]) ⊙ RFFT(x_j) )

The 1/d_in factor follows HF PEFT's C3A, so learning rates transfer (its docs suggest LR ≈ 1e-1).
Several C3A adapters on one layer compose like every adapter here (each sees its own input);
HF PEFT 0.21 overwrites the input inside its adapter loop, so its unmerged output with two active
C3A adapters differs from the merged one (see research/peft_anchor.md §3.5).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..core.method import LayerAdapter, register
from ._factors import dense_linear, require


def block_circulant_product(x: Tensor, kernel_f: Tensor, b: int) -> Tensor:
    """``Σ_j circ(w[i, j]) x_j`` for every output block ``i``, given ``kernel_f = RFFT(w)`` of shape (m, n, f).

    One real FFT of the input blocks, one batched complex matmul per frequency, one inverse FFT.
    """
    m, n, _ = kernel_f.shape
    lead = x.shape[:-1]
    xf = torch.fft.rfft(x.reshape(-1, n, b), dim=-1)  # (N, n, f)
    yf = torch.bmm(xf.permute(2, 0, 1).contiguous(), kernel_f.permute(2, 1, 0).contiguous())  # (f, N, m)
    y = torch.fft.irfft(yf.permute(1, 2, 0), n=b, dim=-1)  # (N, m, b)
    return y.reshape(*lead, m * b)


@register("c3a")
class C3A(LayerAdapter):
    family = "structured-full-rank"
    summary = "ΔW block-circulant (b×b circulant blocks), applied by FFT convolution; full rank."
    formula = "d_out·d_in / b"
    size_knob: ClassVar[str | None] = "block_size"  # larger block → fewer parameters
    test_config: ClassVar[dict[str, Any]] = {"block_size": 4}

    @dataclasses.dataclass
    class Config:
        block_size: int = 256
        init: str = "zeros"  # "zeros" (no-op start) or "xavier" (the paper's random start)

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        require(cfg.block_size >= 1, "c3a", f"block_size must be ≥ 1, got {cfg.block_size}")
        require(cfg.init in ("zeros", "xavier"), "c3a", f"init must be 'zeros' or 'xavier', got {cfg.init!r}")

    @classmethod
    def check_layer(cls, base: nn.Module, cfg: Config) -> tuple[int, int]:
        d_out, d_in = cls.dims(base)
        b = cfg.block_size
        require(d_in % b == 0 and d_out % b == 0, "c3a",
                f"block_size={b} must divide both d_in={d_in} and d_out={d_out} of this layer")
        return d_out, d_in

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        d_out, d_in = self.check_layer(base, cfg)
        b = cfg.block_size
        self.b, self.d_in = b, d_in
        kernel = torch.zeros(d_out // b, d_in // b, b)
        if cfg.init == "xavier":
            bound = math.sqrt(6.0 / (d_in + d_out))
            nn.init.uniform_(kernel, -bound, bound)
        self.c3a_kernel = nn.Parameter(kernel)

    def delta_output(self, x: Tensor) -> Tensor:
        x = x.to(self.c3a_kernel.dtype)
        kernel_f = torch.fft.rfft(self.c3a_kernel, dim=-1)
        return block_circulant_product(x, kernel_f, self.b) / self.d_in

    def delta_weight(self, weight: Tensor) -> Tensor:
        m, n, b = self.c3a_kernel.shape
        idx = (torch.arange(b)[:, None] - torch.arange(b)[None, :]) % b  # circ(v)[p, q] = v[(p − q) mod b]
        blocks = self.c3a_kernel[:, :, idx.to(self.c3a_kernel.device)]  # (m, n, b, b)
        return (blocks.permute(0, 2, 1, 3).reshape(m * b, n * b) / self.d_in).to(weight.dtype)

    def reference_forward(self, x: Tensor, base: nn.Module) -> Tensor:
        """Each circulant block assembled column by column: column q of circ(v) is v rolled down by q."""
        m, n, b = self.c3a_kernel.shape
        w = self.c3a_kernel.double()
        rows = []
        for i in range(m):
            row = [torch.stack([torch.roll(w[i, j], q) for q in range(b)], dim=1) for j in range(n)]
            rows.append(torch.cat(row, dim=1))
        return dense_linear(x, base, torch.cat(rows, dim=0) / self.d_in)

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Config) -> int:
        d_out, d_in = cls.check_layer(base, cfg)
        return d_out * d_in // cfg.block_size
