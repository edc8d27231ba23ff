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
    (blocks ≤ 128: the block DFTs as real GEMMs with a hand-written backward; larger: torch.fft)

The 1/d_in factor follows HF PEFT's C3A, so learning rates transfer (its docs suggest LR ≈ 1e-1).
Several C3A adapters on one layer compose like every adapter here (each sees its own input);
HF PEFT 0.21 overwrites the input inside its adapter loop, so its unmerged output with two active
C3A adapters differs from the merged one (a known HF PEFT 0.21 quirk).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..core.method import LayerAdapter, register
from ._factors import dense_linear, require


def block_circulant_fft(x: Tensor, kernel: Tensor, scale: float) -> Tensor:
    """``scale · Σ_j circ(w[i, j]) x_j`` for every output block ``i`` by real FFTs (large blocks).

    One RFFT of the input blocks, one batched complex matmul per frequency, one inverse RFFT.
    """
    m, n, b = kernel.shape
    lead = x.shape[:-1]
    kernel_f = torch.fft.rfft(kernel, dim=-1) * scale  # (m, n, f)
    xf = torch.fft.rfft(x.reshape(-1, n, b), dim=-1)  # (N, n, f)
    yf = torch.bmm(xf.permute(2, 0, 1).contiguous(), kernel_f.permute(2, 1, 0).contiguous())  # (f, N, m)
    y = torch.fft.irfft(yf.permute(1, 2, 0), n=b, dim=-1)  # (N, m, b)
    return y.reshape(*lead, m * b)


def real_dft_matrices(b: int) -> tuple[Tensor, Tensor]:
    """``D`` (b × 2f) and ``E`` (2f × b), f = ⌊b/2⌋ + 1: ``[Re, Im](RFFT(v)) = v D`` and ``IRFFT = [Re, Im] E``."""
    f = b // 2 + 1
    angle = 2 * math.pi * torch.outer(torch.arange(b, dtype=torch.float64), torch.arange(f, dtype=torch.float64)) / b
    D = torch.cat([torch.cos(angle), -torch.sin(angle)], dim=1)
    weight = torch.full((f,), 2.0 / b, dtype=torch.float64)  # each inner frequency stands for ±u
    weight[0] = 1.0 / b
    if b % 2 == 0:
        weight[-1] = 1.0 / b
    E = torch.cat([(torch.cos(angle) * weight).T, (-torch.sin(angle) * weight).T], dim=0)
    return D.float(), E.float()


class _SpectralMix(torch.autograd.Function):
    """y = IRFFT(Σ_j Ŵ_ij ⊙ RFFT(x_j)) with the DFTs as dense GEMMs and a hand-written backward.

    Forward, per frequency u (X = x's spectrum, W = the kernels' spectrum; all real GEMMs)::

        [X_re; X_im] = Dᵀ x_blocksᵀ                      (2f × N·n)
        Y_re = X_re W_re − X_im W_im,  Y_im = X_re W_im + X_im W_re      (batched over u)
        y_blocks = [Y_re; Y_im]ᵀ E                          (N·m × b)
    """

    @staticmethod
    def forward(ctx, x_blocks: Tensor, w_re: Tensor, w_im: Tensor, D: Tensor, E: Tensor) -> Tensor:
        f, n, m = w_re.shape
        N = x_blocks.shape[0] // n
        X = torch.mm(D.T, x_blocks.T).view(2, f, N, n)
        Y = X.new_empty(2, f, N, m)
        torch.bmm(X[0], w_re, out=Y[0])
        Y[0].baddbmm_(X[1], w_im, alpha=-1)
        torch.bmm(X[0], w_im, out=Y[1])
        Y[1].baddbmm_(X[1], w_re)
        ctx.save_for_backward(X, w_re, w_im, D, E)
        return torch.mm(Y.view(2 * f, N * m).T, E)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        X, w_re, w_im, D, E = ctx.saved_tensors
        f, n, m = w_re.shape
        N = X.shape[2]
        gY = torch.mm(E, grad.T).view(2, f, N, m)
        g_x = g_re = g_im = None
        if ctx.needs_input_grad[0]:
            gX = X.new_empty(2, f, N, n)
            torch.bmm(gY[0], w_re.transpose(1, 2), out=gX[0])
            gX[0].baddbmm_(gY[1], w_im.transpose(1, 2))
            torch.bmm(gY[1], w_re.transpose(1, 2), out=gX[1])
            gX[1].baddbmm_(gY[0], w_im.transpose(1, 2), alpha=-1)
            g_x = torch.mm(gX.view(2 * f, N * n).T, D.T)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            Xt = X.transpose(2, 3)  # (2, f, n, N)
            g_re = torch.bmm(Xt[0], gY[0]).baddbmm_(Xt[1], gY[1])
            g_im = torch.bmm(Xt[0], gY[1]).baddbmm_(Xt[1], gY[0], alpha=-1)
        return g_x, g_re, g_im, None, None


def block_circulant_dft(x: Tensor, kernel: Tensor, scale: float, D: Tensor, E: Tensor) -> Tensor:
    """``scale · Σ_j circ(w[i, j]) x_j`` with the block DFTs as GEMMs (fast for small blocks on CPU)."""
    m, n, b = kernel.shape
    f = b // 2 + 1
    spectrum = (kernel.reshape(m * n, b) @ D * scale).reshape(m, n, 2 * f).permute(2, 1, 0)  # (2f, n, m)
    w_re, w_im = spectrum[:f].contiguous(), spectrum[f:].contiguous()
    lead = x.shape[:-1]
    y = _SpectralMix.apply(x.reshape(-1, b), w_re, w_im, D, E)
    return y.reshape(*lead, m * b)


# Blocks up to this size use the GEMM form of the DFT (fewer passes over memory); larger ones real FFTs.
DFT_GEMM_MAX_BLOCK = 128


@register("c3a")
class C3A(LayerAdapter):
    family = "structured-full-rank"
    summary = "ΔW block-circulant (b×b circulant blocks), applied by FFT convolution; full rank."
    formula = "d_out·d_in / b"
    size_knob: ClassVar[str | None] = "block_size"  # larger block → fewer parameters
    test_config: ClassVar[dict[str, Any]] = {"block_size": 4}

    @dataclasses.dataclass
    class Config:
        block_size: int = 128  # HF PEFT's default is 256, which does not divide 384-wide models (MiniLM)
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
        self.dft_gemm = b <= DFT_GEMM_MAX_BLOCK
        if self.dft_gemm:
            D, E = real_dft_matrices(b)
            self.register_buffer("dft", D, persistent=False)
            self.register_buffer("idft", E, persistent=False)
        kernel = torch.zeros(d_out // b, d_in // b, b)
        if cfg.init == "xavier":
            bound = math.sqrt(6.0 / (d_in + d_out))
            nn.init.uniform_(kernel, -bound, bound)
        self.c3a_kernel = nn.Parameter(kernel)

    def delta_output(self, x: Tensor) -> Tensor:
        x = x.to(self.c3a_kernel.dtype).contiguous()
        if self.dft_gemm:
            return block_circulant_dft(x, self.c3a_kernel, 1.0 / self.d_in, self.dft, self.idft)
        return block_circulant_fft(x, self.c3a_kernel, 1.0 / self.d_in)

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
