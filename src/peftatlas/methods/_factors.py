"""Small helpers shared by the low-rank and structured methods (not a method module: no registration).

* :func:`kaiming_rows` — LoRA's Kaiming-uniform init of a down-projection ``A ∈ R^{r×d_in}``;
* :func:`require` — one-line hyperparameter checks that raise :class:`MethodError` naming the problem;
* :func:`near_square_factors` — ``d = u·v`` with ``u ≤ v`` as close to √d as allowed (Kronecker shapes);
* :func:`seeded_uniform` — unit-variance uniform noise from a private CPU generator (shared frozen bases);
* :func:`last_axis_mm` — ``t @ wᵀ`` over the last axis as one plain 2-D matmul;
* :func:`dense_linear` — ``(W0 + ΔW) x + b`` in fp32 (the explicit oracle of the dense reference tests).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.method import MethodError


def kaiming_rows(r: int, d_in: int) -> Tensor:
    """``A ∈ R^{r×d_in}`` with LoRA's init ``U(−1/√d_in, 1/√d_in)`` (Kaiming-uniform, a=√5), from the global RNG."""
    a = torch.empty(r, d_in)
    nn.init.kaiming_uniform_(a, a=math.sqrt(5))
    return a


def require(ok: bool, method: str, message: str) -> None:
    """Raise ``MethodError(f"{method}: {message}")`` unless ``ok``."""
    if not ok:
        raise MethodError(f"{method}: {message}")


def near_square_factors(d: int, factor: int = -1) -> tuple[int, int]:
    """``(u, v)`` with ``u·v = d`` and ``u ≤ v``.

    ``factor > 0`` and dividing ``d``: ``u = min(factor, d/factor)``. Otherwise ``u`` is the largest
    divisor of ``d`` with ``u ≤ √d`` (and ``u ≤ factor`` when ``factor > 0``), so the pair is as
    square as the divisors allow.
    """
    if d < 1:
        raise MethodError(f"cannot factor a dimension of size {d}")
    if factor > 0 and d % factor == 0:
        u, v = factor, d // factor
        return (u, v) if u <= v else (v, u)
    limit = math.isqrt(d) if factor <= 0 else min(math.isqrt(d), factor)
    u = max(k for k in range(1, limit + 1) if d % k == 0)
    return u, d // u


def seeded_uniform(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """Uniform noise with zero mean and unit variance, ``U(−√3, √3)``, drawn on the CPU from ``generator``."""
    bound = math.sqrt(3.0)
    return torch.rand(shape, generator=generator, dtype=torch.float32) * (2 * bound) - bound


def dense_linear(x: Tensor, base: nn.Module, delta: Tensor) -> Tensor:
    """``x (W0 + ΔW)ᵀ + b`` in fp32 with an explicitly formed ``ΔW`` (for ``reference_forward``)."""
    bias = base.bias.detach().float() if getattr(base, "bias", None) is not None else None
    return F.linear(x.float(), base.weight.detach().float() + delta.float(), bias)


def last_axis_mm(t: Tensor, w: Tensor) -> Tensor:
    """``t @ wᵀ`` over the last axis of ``t`` as a single 2-D matmul on a contiguous copy.

    Broadcast ``matmul``/``linear`` calls on non-contiguous or batched operands pick different
    kernels depending on whether an operand requires grad, so a frozen (loaded) adapter would not
    reproduce a trainable one bit for bit; one 2-D ``mm`` does not have that problem.
    """
    return (t.reshape(-1, t.shape[-1]) @ w.T).reshape(*t.shape[:-1], w.shape[0])
