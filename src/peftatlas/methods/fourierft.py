"""FourierFT: fine-tuning with a sparse 2-D Fourier spectrum (Gao et al., "Parameter-Efficient
Fine-Tuning with Discrete Fourier Transform", ICML 2024, arXiv:2405.03003).

Hypothesis: ΔW is well represented by a few 2-D Fourier coefficients at fixed random frequencies,
more so than by as many coefficients in a generic orthogonal basis.

Pseudocode::

    E = n random entries (u_k, v_k) of the d_out × d_in grid   # frozen; from random_loc_seed, so
                                                               # every layer of one shape shares E
    c ← 0 ∈ R^n        (init="paper": c ~ N(0, 1), not a no-op)
    F = zeros(d_out, d_in) complex;  F[u_k, v_k] = c_k
    ΔW = α · Re(IFFT2(F))                                      # merge: W ← W0 + ΔW
    y  = W0 x + ΔW x

Fast path (no d_out × d_in matrix per step): IFFT2 separates into a 1-D inverse DFT over each axis,
so for a real input x,

    ΔW x = α · Re( IFFT_out( g ) ),   g[u] = Σ_{k: u_k = u} c_k · h[v_k],   h = IFFT_in(x)

i.e. one length-d_in FFT of the input, a gather–scale–scatter over the n coefficients, and one
length-d_out FFT: O(d log d + n) per token instead of O(d_out·d_in) (plus an O(d² log d) IFFT2
per step in the dense formulation). Both transforms are real (half-spectrum) FFTs, since x is real
and only Re(·) is kept:

    h[v] = conj(R[v]) / d_in  (v ≤ d_in/2),   R[d_in − v] / d_in  (v > d_in/2),   R = RFFT(x)
    Re(IFFT(g)) = IRFFT(G),   G[u] = (g[u] + conj(g[−u])) / 2   on the half spectrum u ≤ d_out/2
so each coefficient reads one bin of R and adds to one bin of G with fixed real weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..core.method import LayerAdapter, register
from ._factors import dense_linear, require


def spectrum_entries(d_out: int, d_in: int, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """The frozen frequency set: ``n`` distinct (row, col) pairs drawn with a CPU generator from ``seed``."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    flat = torch.randperm(d_out * d_in, generator=g)[:n]
    return flat // d_in, flat % d_in


def half_spectrum_plan(rows: Tensor, cols: Tensor, d_out: int, d_in: int) -> tuple[Tensor, Tensor, Tensor]:
    """Where each coefficient reads and writes, as flat indices into ``view_as_real`` half spectra.

    Returns ``(read, write, weight)``, each of length 2n (Re, Im interleaved): coefficient k reads
    ``RFFT(x)`` bin ``v_k`` (folded to the half spectrum) and adds ``weight · c_k · value`` into bin
    ``u_k`` (folded) of ``G``, so that ``IRFFT(G) = ΔW x`` (see the module docstring).
    """
    low_in = cols <= d_in // 2
    low_out = rows <= d_out // 2
    in_bin = torch.where(low_in, cols, d_in - cols)
    out_bin = torch.where(low_out, rows, d_out - rows)
    self_conjugate = (rows == 0) | ((d_out % 2 == 0) & (rows == d_out // 2))
    w_re = torch.where(self_conjugate, 1.0, 0.5)  # G[u] = (g[u] + conj g[−u]) / 2; both halves when u = −u
    w_im = torch.where(self_conjugate, 0.0, torch.where(low_out, 0.5, -0.5))
    w_im = w_im * torch.where(low_in, -1.0, 1.0)  # h = conj(R[v]) on the low half of the input spectrum

    def pairs(bins: Tensor) -> Tensor:
        return torch.stack([2 * bins, 2 * bins + 1], dim=-1).flatten()

    return pairs(in_bin), pairs(out_bin), torch.stack([w_re, w_im], dim=-1).flatten() / d_in


def _apply_plan(R: Tensor, coef: Tensor, read: Tensor, write: Tensor, d_out: int) -> tuple[Tensor, Tensor]:
    """``(IRFFT(G), R[:, read])`` with ``G = scatter_add(write, coef ⊙ R[:, read])``; R is (N, 2·(d_in/2+1))."""
    picked = R.index_select(1, read)
    G = picked.new_zeros(R.shape[0], 2 * (d_out // 2 + 1)).index_add(1, write, picked * coef)
    return torch.fft.irfft(torch.view_as_complex(G.view(R.shape[0], -1, 2)), n=d_out, dim=-1), picked


def _half_spectrum(x: Tensor) -> Tensor:
    """``view_as_real(RFFT(x))`` flattened to (N, 2·(d/2+1))."""
    return torch.view_as_real(torch.fft.rfft(x, dim=-1)).reshape(x.shape[0], -1)


class _SparseSpectrum(torch.autograd.Function):
    """``y = ΔW x`` for a sparse real spectrum, with a hand-written backward:

    * ∂/∂x: ΔWᵀ is the same construction with rows ↔ columns, so the same gather–scatter runs
      with the transposed plan on ``RFFT(grad)``;
    * ∂/∂c_k = α/(d_out·d_in) · Σ_rows Re(ĝ[u_k]·x̂[v_k])·d_out·d_in, ĝ, x̂ the unnormalised inverse
      DFTs, i.e. a product of the two half-spectrum bins the coefficient connects.
    """

    @staticmethod
    def forward(ctx, x: Tensor, c: Tensor, module: FourierFT) -> Tensor:
        coef = module.fwd_weight * c.repeat_interleave(2) * module.cfg.scaling
        y, picked = _apply_plan(_half_spectrum(x), coef, module.fwd_read, module.fwd_write, module.d_out)
        ctx.module = module
        ctx.save_for_backward(picked, c)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        picked, c = ctx.saved_tensors
        m: FourierFT = ctx.module
        Rg = _half_spectrum(grad.contiguous())
        grad_x = grad_c = None
        if ctx.needs_input_grad[0]:
            coef = m.bwd_weight * c.repeat_interleave(2) * m.cfg.scaling
            grad_x = _apply_plan(Rg, coef, m.bwd_read, m.bwd_write, m.d_in)[0]
        if ctx.needs_input_grad[1]:
            at_out = Rg.index_select(1, m.bwd_read)  # the bins of ĝ each coefficient writes to
            grad_c = (picked * at_out).sum(0).mul_(m.grad_sign).view(-1, 2).sum(-1) * m.cfg.scaling
        return grad_x, grad_c, None


@register("fourierft")
class FourierFT(LayerAdapter):
    family = "structured-full-rank"
    summary = "ΔW = α·Re(IFFT2(F)); F has n trainable real coefficients at fixed random frequencies."
    formula = "n_frequency"
    size_knob: ClassVar[str | None] = "n_frequency"
    test_config: ClassVar[dict[str, Any]] = {"n_frequency": 24, "scaling": 10.0}

    @dataclasses.dataclass
    class Config:
        n_frequency: int = 1000
        scaling: float = 150.0
        random_loc_seed: int = 777
        init: str = "zeros"  # "zeros" (no-op start) or "paper" (c ~ N(0, 1))

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        require(cfg.n_frequency >= 1, "fourierft", f"n_frequency must be ≥ 1, got {cfg.n_frequency}")
        require(cfg.init in ("zeros", "paper"), "fourierft", f"init must be 'zeros' or 'paper', got {cfg.init!r}")

    @classmethod
    def check_layer(cls, base: nn.Module, cfg: Config) -> tuple[int, int]:
        d_out, d_in = cls.dims(base)
        require(cfg.n_frequency <= d_out * d_in, "fourierft",
                f"n_frequency={cfg.n_frequency} exceeds the {d_out}×{d_in} = {d_out * d_in} entries of this layer")
        return d_out, d_in

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        d_out, d_in = self.check_layer(base, cfg)
        self.d_out, self.d_in = d_out, d_in
        rows, cols = spectrum_entries(d_out, d_in, cfg.n_frequency, cfg.random_loc_seed)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        for tag, plan in (("fwd", half_spectrum_plan(rows, cols, d_out, d_in)),
                          ("bwd", half_spectrum_plan(cols, rows, d_in, d_out))):  # ΔWᵀ: rows ↔ cols
            for name, t in zip(("read", "write", "weight"), plan):
                self.register_buffer(f"{tag}_{name}", t, persistent=False)
        # ∂y/∂c_k pairs Re·Re and Im·Im of the two bins with sign −τ_k·σ_k (conjugations of the folding)
        tau, sigma = torch.where(rows <= d_out // 2, -1.0, 1.0), torch.where(cols <= d_in // 2, -1.0, 1.0)
        sign = torch.stack([torch.ones_like(tau), -tau * sigma], dim=-1).flatten() / (d_out * d_in)
        self.register_buffer("grad_sign", sign, persistent=False)
        init = torch.randn(cfg.n_frequency) if cfg.init == "paper" else torch.zeros(cfg.n_frequency)
        self.spectrum = nn.Parameter(init)

    def delta_output(self, x: Tensor) -> Tensor:
        x = x.to(self.spectrum.dtype)
        y = _SparseSpectrum.apply(x.reshape(-1, self.d_in).contiguous(), self.spectrum, self)
        return y.reshape(*x.shape[:-1], self.d_out)

    def _dense_spectrum(self) -> Tensor:
        F = torch.zeros(self.d_out, self.d_in, dtype=torch.complex64, device=self.spectrum.device)
        return F.index_put((self.rows, self.cols), self.spectrum.to(torch.complex64), accumulate=True)

    def delta_weight(self, weight: Tensor) -> Tensor:
        return (torch.fft.ifft2(self._dense_spectrum()).real * self.cfg.scaling).to(weight.dtype)

    def reference_forward(self, x: Tensor, base: nn.Module) -> Tensor:
        """ΔW[p, q] = α/(d_out·d_in) · Σ_k c_k cos(2π(u_k p / d_out + v_k q / d_in)), summed explicitly."""
        p = torch.arange(self.d_out, dtype=torch.float64)[:, None, None]
        q = torch.arange(self.d_in, dtype=torch.float64)[None, :, None]
        phase = 2 * torch.pi * (self.rows.double() * p / self.d_out + self.cols.double() * q / self.d_in)
        delta = (torch.cos(phase) * self.spectrum.double()).sum(-1) * self.cfg.scaling / (self.d_out * self.d_in)
        return dense_linear(x, base, delta)

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Config) -> int:
        cls.check_layer(base, cfg)
        return cfg.n_frequency
