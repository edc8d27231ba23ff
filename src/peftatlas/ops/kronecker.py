"""Kronecker products applied without forming them.

``B ∈ R^{b_out × b_in}``, ``A ∈ R^{a_out × a_in}``, ``(B ⊗ A)[p·a_out + q, k·a_in + l] = B[p, k] A[q, l]``.
With the row-major reshape ``X = x.reshape(b_in, a_in)``:  ``(B ⊗ A) x = vec(B X Aᵀ)`` (row-major
``vec``), which costs ``b_in·a_in·a_out + b_out·b_in·a_out`` multiplies per token instead of
``b_out a_out · b_in a_in`` and never allocates the ``d_out × d_in`` matrix.
"""

from __future__ import annotations

import torch
from torch import Tensor


def kron_matvec(B: Tensor, A: Tensor, x: Tensor) -> Tensor:
    """``(B ⊗ A) x`` for ``x`` of shape ``(..., b_in·a_in)``; returns ``(..., b_out·a_out)``."""
    (b_out, b_in), (a_out, a_in) = B.shape, A.shape
    if x.shape[-1] != b_in * a_in:
        raise ValueError(f"B ⊗ A has {b_in * a_in} columns ({b_in}·{a_in}) but the input has {x.shape[-1]} features")
    lead = x.shape[:-1]
    # Two plain 2-D GEMMs (explicit reshapes keep the result independent of autograd's folding choices).
    Z = x.reshape(-1, a_in) @ A.t()  # rows (token, k): (X Aᵀ)[k, :]
    Zt = Z.reshape(-1, b_in, a_out).transpose(1, 2).reshape(-1, b_in)  # rows (token, q)
    Y = (Zt @ B.t()).reshape(-1, a_out, b_out).transpose(1, 2)  # (token, p, q) = (B X Aᵀ)[p, q]
    return Y.reshape(*lead, b_out * a_out)


def kron_dense(B: Tensor, A: Tensor) -> Tensor:
    """Explicit ``B ⊗ A`` (test oracle and merging)."""
    return torch.kron(B, A)
