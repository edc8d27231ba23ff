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
per step in the dense formulation).
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
        init = torch.randn(cfg.n_frequency) if cfg.init == "paper" else torch.zeros(cfg.n_frequency)
        self.spectrum = nn.Parameter(init)

    def delta_output(self, x: Tensor) -> Tensor:
        x = x.to(self.spectrum.dtype)
        h = torch.fft.ifft(x, dim=-1)  # (..., d_in) complex
        picked = h.index_select(-1, self.cols) * self.spectrum  # (..., n)
        g = picked.new_zeros(*x.shape[:-1], self.d_out).index_add(-1, self.rows, picked)
        return torch.fft.ifft(g, dim=-1).real * self.cfg.scaling

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
