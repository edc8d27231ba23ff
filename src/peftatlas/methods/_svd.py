"""Singular value decompositions of frozen base weights, computed once and shared (not a method module).

SVD-based methods (PiSSA, MiLoRA, SVFT, SSVD, PSOFT, AntiPaSTO, CLOVER) need the SVD of a frozen
weight ``W0 = U diag(σ) Vᵀ`` once, at injection. :func:`weight_svd` computes it in fp32 and keeps a
small cache keyed by the weight tensor (identity and in-place version), so a second adapter on the
same layer, or a second method asking for the same factors, does not pay again. Every LAPACK call
made here goes through :func:`_count`, which is what the "one SVD per layer" test reads.

Signs are canonical: each pair ``(u_i, v_i)`` is flipped so that the largest-magnitude entry of
``u_i`` is positive. The factors are then a deterministic function of ``W0`` (up to rounding), so
adapters that recompute them at load time see the same basis they were trained in.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import NamedTuple

import torch
from torch import Tensor

CACHE_BYTES = 256 * 2**20  # fp32 factors kept across calls; older entries are evicted first
_calls = 0
_cache: OrderedDict[tuple, tuple[weakref.ref, SVDFactors]] = OrderedDict()


class SVDFactors(NamedTuple):
    """``W0 = U diag(S) Vh`` (reduced: ``k = min(d_out, d_in)``), all fp32, canonical signs."""

    U: Tensor  # (d_out, k)
    S: Tensor  # (k,), descending
    Vh: Tensor  # (k, d_in)


def svd_calls() -> int:
    """How many decompositions this module has computed (cache hits do not count)."""
    return _calls


def _count() -> None:
    global _calls
    _calls += 1


def clear_cache() -> None:
    _cache.clear()


def canonical_signs(U: Tensor, Vh: Tensor) -> tuple[Tensor, Tensor]:
    """Flip each singular pair so the largest-|·| entry of every column of ``U`` is positive."""
    idx = U.abs().argmax(dim=-2, keepdim=True)
    sign = torch.sign(torch.gather(U, -2, idx))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return U * sign, Vh * sign.transpose(-1, -2)


def batched_svd(M: Tensor) -> SVDFactors:
    """Reduced SVD of a matrix or a batch of matrices (fp64 inside, fp32 out), canonical signs."""
    _count()
    U, S, Vh = torch.linalg.svd(M.detach().to(torch.float64), full_matrices=False)
    U, Vh = canonical_signs(U, Vh)
    return SVDFactors(U.float(), S.float(), Vh.float())


def _key(weight: Tensor) -> tuple:
    return (id(weight), weight._version, tuple(weight.shape), weight.dtype, str(weight.device))


def weight_svd(weight: Tensor) -> SVDFactors:
    """The (cached) SVD of a frozen 2-D weight, in fp32 on the weight's device."""
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(weight.shape)}")
    key = _key(weight)
    hit = _cache.get(key)
    if hit is not None and hit[0]() is weight:
        _cache.move_to_end(key)
        return hit[1]
    _count()
    with torch.no_grad():
        U, S, Vh = torch.linalg.svd(weight.detach().float(), full_matrices=False)
        U, Vh = canonical_signs(U, Vh)
    out = SVDFactors(U, S, Vh)
    size = sum(t.numel() * t.element_size() for t in out)
    if size <= CACHE_BYTES:
        _cache[key] = (weakref.ref(weight), out)
        total = sum(sum(t.numel() * t.element_size() for t in v[1]) for v in _cache.values())
        while total > CACHE_BYTES and _cache:
            _, (_, old) = _cache.popitem(last=False)
            total -= sum(t.numel() * t.element_size() for t in old)
    return out


def top_indices(k_total: int, r: int, which: str) -> slice:
    """The singular triplets a method adapts: the ``r`` largest (``"principal"``) or smallest (``"minor"``)."""
    if which == "principal":
        return slice(0, r)
    if which == "minor":
        return slice(k_total - r, k_total)
    raise ValueError(f"which must be 'principal' or 'minor', got {which!r}")
