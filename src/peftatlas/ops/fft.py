"""FFT products with circulant, skew-circulant, Toeplitz and low-displacement-rank matrices.

Conventions (vectors act on the last dimension of ``x``; ``n`` is the structured size):

* ``C(c)`` — circulant with **first column** ``c``: ``C[i, j] = c[(i − j) mod n]``.
  ``C(c) x`` is the circular convolution ``c ⊛ x = irfft(rfft(c) · rfft(x))``: O(n log n).
* ``S(h)`` — skew-circulant with first column ``h``: ``S[i, j] = h[i − j]`` for ``i ≥ j`` and
  ``−h[i − j + n]`` for ``i < j`` (the ``Z₋₁``-circulant). With ``η = exp(iπ/n)`` (so ``ηⁿ = −1``) and
  ``D = diag(η⁰, …, η^{n−1})``, ``S(h) = D⁻¹ C(D h) D``, hence
  ``S(h) x = conj(ηᵏ) ⊙ ifft(fft(ηᵏ ⊙ h) · fft(ηᵏ ⊙ x))``.
* ``T(t)`` — rectangular Toeplitz ``d_out × d_in`` given by its ``d_in + d_out − 1`` diagonals:
  ``T[i, j] = t[i − j + d_in − 1]`` (``t[0]`` is the top-right corner, ``t[d_in − 1]`` the main
  diagonal, ``t[−1]`` the bottom-left corner). ``(T x)_i`` is entry ``i + d_in − 1`` of the linear
  convolution ``t * x``; a zero-padded FFT of any length ``≥ d_in + d_out − 1`` computes it without
  wrap-around (the circulant embedding), O((d_in + d_out) log(d_in + d_out)).
* Low displacement rank: ``L(g, h) = Σᵢ C(gᵢ) S(hᵢ)``; each term has ``(Z₁, Z₋₁)``-displacement rank 1
  because ``Z₁ C(g) S(h) − C(g) S(h) Z₋₁ = C(g) (Z₁ − Z₋₁) S(h)`` and ``Z₁ − Z₋₁ = 2 e₀ e_{n−1}ᵀ``.

Rectangular use of the square families: the ``n × n`` matrix with ``n = max(d_in, d_out)`` cropped to
its top-left ``d_out × d_in`` block (``x`` is zero-padded to ``n``, the result truncated to ``d_out``).

All products run in at least float32 (bf16/fp16 inputs are upcast) and return that dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _real_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def good_fft_size(n: int) -> int:
    """The smallest 5-smooth integer (2^a 3^b 5^c) ≥ ``n``: a length FFT libraries handle fast."""
    if n < 1:
        raise ValueError(f"FFT size must be ≥ 1, got {n}")
    m = n
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def _fit(x: Tensor, n: int) -> Tensor:
    """Zero-pad (or check) the last dimension to length ``n``."""
    d = x.shape[-1]
    if d > n:
        raise ValueError(f"input has {d} features but the structured matrix has only {n} columns")
    return x if d == n else torch.nn.functional.pad(x, (0, n - d))


# --- circulant -----------------------------------------------------------------------------------


def circulant_matvec(c: Tensor, x: Tensor, d_out: int | None = None) -> Tensor:
    """``C(c)[:d_out, :d_in] x`` for ``x`` of shape ``(..., d_in)``, ``d_in ≤ n = len(c)``."""
    n = c.shape[-1]
    dtype = _real_dtype(c, x)
    xf = torch.fft.rfft(_fit(x.to(dtype), n), n=n)
    y = torch.fft.irfft(xf * torch.fft.rfft(c.to(dtype), n=n), n=n)
    return y if d_out is None or d_out == n else y[..., :d_out]


def circulant_dense(c: Tensor, d_out: int | None = None, d_in: int | None = None) -> Tensor:
    """Explicit ``C(c)[:d_out, :d_in]`` built by indexing (no FFT): the test oracle."""
    n = c.shape[-1]
    i = torch.arange(n if d_out is None else d_out, device=c.device)
    j = torch.arange(n if d_in is None else d_in, device=c.device)
    return c[..., (i[:, None] - j[None, :]) % n]


# --- skew-circulant ------------------------------------------------------------------------------


def _eta_powers(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``ηᵏ = exp(iπk/n)`` for k < n: the twist that turns ``Z₋₁``-circulants into circulants."""
    k = torch.arange(n, device=device, dtype=torch.float64)
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    return torch.polar(torch.ones_like(k), math.pi * k / n).to(cdtype)


def skew_circulant_matvec(h: Tensor, x: Tensor, d_out: int | None = None) -> Tensor:
    """``S(h)[:d_out, :d_in] x`` via the η-twisted FFT, O(n log n)."""
    n = h.shape[-1]
    dtype = _real_dtype(h, x)
    eta = _eta_powers(n, dtype, x.device)
    xf = torch.fft.fft(_fit(x.to(dtype), n) * eta)
    y = (torch.fft.ifft(xf * torch.fft.fft(h.to(dtype) * eta)) * eta.conj()).real
    return y if d_out is None or d_out == n else y[..., :d_out]


def skew_circulant_dense(h: Tensor, d_out: int | None = None, d_in: int | None = None) -> Tensor:
    """Explicit ``S(h)[:d_out, :d_in]``: ``h[i − j]`` on and below the diagonal, ``−h[i − j + n]`` above."""
    n = h.shape[-1]
    i = torch.arange(n if d_out is None else d_out, device=h.device)
    j = torch.arange(n if d_in is None else d_in, device=h.device)
    diff = i[:, None] - j[None, :]
    sign = torch.where(diff < 0, -1.0, 1.0).to(h.dtype)
    return h[..., diff % n] * sign


# --- low displacement rank -----------------------------------------------------------------------


def ldr_matvec(g: Tensor, h: Tensor, x: Tensor, d_out: int | None = None) -> Tensor:
    """``(Σᵢ C(gᵢ) S(hᵢ))[:d_out, :d_in] x`` for ``g, h`` of shape ``(r, n)``.

    One twisted FFT of ``x``, ``r`` inverse FFTs for the skew-circulant factors, then the circulant
    factors are summed in the frequency domain: ``2r + 2`` length-``n`` FFTs per token.
    """
    if g.shape != h.shape or g.dim() != 2:
        raise ValueError(f"g and h must both have shape (r, n); got {tuple(g.shape)} and {tuple(h.shape)}")
    n = g.shape[-1]
    dtype = _real_dtype(g, h, x)
    eta = _eta_powers(n, dtype, x.device)
    xf = torch.fft.fft(_fit(x.to(dtype), n) * eta).unsqueeze(-2)  # (..., 1, n)
    u = (torch.fft.ifft(xf * torch.fft.fft(h.to(dtype) * eta)) * eta.conj()).real  # (..., r, n) = S(hᵢ) x
    yf = (torch.fft.rfft(u, n=n) * torch.fft.rfft(g.to(dtype), n=n)).sum(-2)
    y = torch.fft.irfft(yf, n=n)
    return y if d_out is None or d_out == n else y[..., :d_out]


def ldr_dense(g: Tensor, h: Tensor, d_out: int | None = None, d_in: int | None = None) -> Tensor:
    """Explicit ``(Σᵢ C(gᵢ) S(hᵢ))[:d_out, :d_in]`` from dense factors."""
    full = (circulant_dense(g) @ skew_circulant_dense(h)).sum(0)
    n = g.shape[-1]
    return full[: n if d_out is None else d_out, : n if d_in is None else d_in]


# --- rectangular Toeplitz ------------------------------------------------------------------------


def toeplitz_matvec(t: Tensor, x: Tensor, d_out: int) -> Tensor:
    """``T(t) x`` for the ``d_out × d_in`` Toeplitz matrix with diagonals ``t`` (length d_in + d_out − 1)."""
    d_in = x.shape[-1]
    if t.shape[-1] != d_in + d_out - 1:
        raise ValueError(f"a {d_out}×{d_in} Toeplitz matrix has {d_in + d_out - 1} diagonals, got {t.shape[-1]}")
    dtype = _real_dtype(t, x)
    n = good_fft_size(d_in + d_out - 1)
    y = torch.fft.irfft(torch.fft.rfft(x.to(dtype), n=n) * torch.fft.rfft(t.to(dtype), n=n), n=n)
    return y[..., d_in - 1 : d_in - 1 + d_out]


def toeplitz_dense(t: Tensor, d_out: int, d_in: int) -> Tensor:
    """Explicit ``T(t)``: ``T[i, j] = t[i − j + d_in − 1]``."""
    if t.shape[-1] != d_in + d_out - 1:
        raise ValueError(f"a {d_out}×{d_in} Toeplitz matrix has {d_in + d_out - 1} diagonals, got {t.shape[-1]}")
    i = torch.arange(d_out, device=t.device)
    j = torch.arange(d_in, device=t.device)
    return t[..., i[:, None] - j[None, :] + d_in - 1]
