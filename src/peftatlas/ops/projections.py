"""Closed-form nearest matrices (Frobenius norm) in the structured families used by the methods.

Each is the optimal approximation of a target ``W`` (``d_out × d_in``) within its family:

* rank ``k`` — truncated SVD (Eckart–Young);
* cropped circulant ``C(c)[:d_out, :d_in]``, ``n = max(d_out, d_in)`` — ``c[k]`` is the mean of the
  entries on the wrapped diagonal ``(i − j) mod n = k`` (the family is linear and those index sets
  partition the matrix, so the least-squares solution is the per-set mean);
* Toeplitz — ``t[k]`` is the mean of diagonal ``i − j + d_in − 1 = k``;
* sum of ``k`` Kronecker products ``Σ Bᵢ ⊗ Aᵢ`` — Van Loan–Pitsianis: rearrange ``W`` so that each
  ``B ⊗ A`` becomes the rank-1 matrix ``vec(B) vec(A)ᵀ``, then truncate its SVD;
* orthogonal Procrustes ``argmin_{QᵀQ = I} ‖A Q − B‖`` — the polar factor ``U Vᵀ`` of ``Aᵀ B``
  (``special=True`` restricts to det +1 by flipping the weakest singular direction);
* block-diagonal Procrustes — the same per group of columns (the problem separates by block).
"""

from __future__ import annotations

import torch
from torch import Tensor


def nearest_low_rank(W: Tensor, k: int) -> Tensor:
    """Best rank-``k`` approximation of ``W``."""
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    return (U[:, :k] * S[:k]) @ Vh[:k]


def _diagonal_means(W: Tensor, index: Tensor, size: int) -> Tensor:
    flat = index.reshape(-1)
    sums = torch.zeros(size, dtype=W.dtype, device=W.device).index_add_(0, flat, W.reshape(-1))
    counts = torch.zeros(size, dtype=W.dtype, device=W.device).index_add_(0, flat, torch.ones_like(W.reshape(-1)))
    return sums / counts.clamp_min(1)


def nearest_circulant(W: Tensor) -> Tensor:
    """The first column ``c`` (length ``max(d_out, d_in)``) of the nearest cropped circulant."""
    d_out, d_in = W.shape
    n = max(d_out, d_in)
    i, j = torch.arange(d_out, device=W.device), torch.arange(d_in, device=W.device)
    return _diagonal_means(W, (i[:, None] - j[None, :]) % n, n)


def nearest_toeplitz(W: Tensor) -> Tensor:
    """The ``d_in + d_out − 1`` diagonals ``t`` of the nearest Toeplitz matrix (``T[i, j] = t[i − j + d_in − 1]``)."""
    d_out, d_in = W.shape
    i, j = torch.arange(d_out, device=W.device), torch.arange(d_in, device=W.device)
    return _diagonal_means(W, i[:, None] - j[None, :] + d_in - 1, d_in + d_out - 1)


def nearest_kronecker(W: Tensor, b_shape: tuple[int, int], a_shape: tuple[int, int],
                      terms: int = 1) -> tuple[Tensor, Tensor]:
    """Factors ``B (terms, b_out, b_in)`` and ``A (terms, a_out, a_in)`` of the best ``Σ Bᵢ ⊗ Aᵢ``."""
    (b_out, b_in), (a_out, a_in) = b_shape, a_shape
    if W.shape != (b_out * a_out, b_in * a_in):
        raise ValueError(f"factor shapes {b_shape} ⊗ {a_shape} give {(b_out * a_out, b_in * a_in)}, "
                         f"not the target's {tuple(W.shape)}")
    # blocks[p, k] = W[p·a_out:(p+1)·a_out, k·a_in:(k+1)·a_in]; row (p, k) of the rearrangement is vec(block)
    rearranged = W.reshape(b_out, a_out, b_in, a_in).permute(0, 2, 1, 3).reshape(b_out * b_in, a_out * a_in)
    U, S, Vh = torch.linalg.svd(rearranged, full_matrices=False)
    root = S[:terms].sqrt()
    B = (U[:, :terms] * root).t().reshape(terms, b_out, b_in)
    A = (Vh[:terms] * root[:, None]).reshape(terms, a_out, a_in)
    return B, A


def procrustes(A: Tensor, B: Tensor, special: bool = False) -> Tensor:
    """``Q = argmin ‖A Q − B‖_F`` over orthogonal ``Q`` (over rotations if ``special``)."""
    U, _, Vh = torch.linalg.svd(A.transpose(-1, -2) @ B)
    if special:
        det = torch.linalg.det(U @ Vh)
        flip = torch.ones(U.shape[-1], dtype=U.dtype, device=U.device)
        flip[-1] = torch.sign(det)
        U = U * flip
    return U @ Vh


def block_procrustes(A: Tensor, B: Tensor, block: int, special: bool = False) -> Tensor:
    """Block-diagonal orthogonal ``Q`` (blocks of ``block`` columns, the last may be smaller)."""
    d = A.shape[-1]
    Q = torch.zeros(d, d, dtype=A.dtype, device=A.device)
    for start in range(0, d, block):
        sl = slice(start, min(start + block, d))
        Q[sl, sl] = procrustes(A[:, sl], B[:, sl], special)
    return Q
