"""Shared math of the rotation family (not a method module: no registration).

Conventions: vectors are rows (the last dimension of ``x``); a block matrix ``R`` acts on a block
``x_n`` as ``R x_n`` (column-vector notation), i.e. ``x_n @ Rᵀ`` on rows. Fast paths act on ``x``;
the ``*_dense`` constructors build the full ``d × d`` matrix and exist only as test oracles and for
geometry probes.

* :func:`skew` — packed strictly-upper entries → skew-symmetric ``Q = P − Pᵀ`` (``b(b−1)/2`` numbers);
* :func:`cayley` — ``R = (I − Q)⁻¹(I + Q)`` exactly (a solve), or its truncated Neumann series
  ``(I + Q)(I + Q + … + Q^{t−1})``, which is orthogonal only approximately (see
  :func:`orthogonality_error`);
* :func:`block_apply` / :func:`block_apply_weight` — a block-diagonal ``R`` on activations / on a weight;
* :func:`butterfly_apply` — one butterfly factor: blocks of ``b`` coordinates spaced ``s`` apart,
  applied through a reshape (no permutation matrix);
* :func:`householder_wy` / :func:`householder_apply` — ``H = H_1 ⋯ H_r`` with ``H_i = I − 2 v_i v_iᵀ``
  in compact WY form ``H = I − Vᵀ T V`` (``T`` upper triangular, ``r × r``): ``O(r d)`` per token;
* :func:`effective_bias` — the bias of the (affine) function an adapter wraps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def packed_size(b: int) -> int:
    """Number of free entries of a ``b × b`` skew-symmetric matrix."""
    return b * (b - 1) // 2


_UPPER_INDEX: dict[tuple[int, str], Tensor] = {}


def _upper_index(b: int, device: torch.device) -> Tensor:
    """Flat positions ``i·b + j`` of the strictly-upper entries (``i < j``, row-major), per size and device."""
    key = (b, str(device))
    idx = _UPPER_INDEX.get(key)
    if idx is None:
        rows, cols = torch.triu_indices(b, b, offset=1)
        idx = _UPPER_INDEX.setdefault(key, (rows * b + cols).to(device))
    return idx


def skew(packed: Tensor, b: int) -> Tensor:
    """``(..., b(b−1)/2)`` strictly-upper entries ``p`` → ``(..., b, b)`` skew-symmetric ``Q = P − Pᵀ``
    (``Q_ij = p``, ``Q_ji = −p`` for ``i < j``).

    ``P`` is written with ``index_copy`` at distinct positions, so the backward pass is a plain gather
    (a gather *from* ``[0, p, −p]`` would need an accumulating scatter in backward, twice as slow).
    """
    lead = packed.shape[:-1]
    P = packed.new_zeros(*lead, b * b).index_copy(-1, _upper_index(b, packed.device), packed)
    P = P.view(*lead, b, b)
    return P - P.transpose(-1, -2)


def cayley(Q: Tensor, method: str = "exact", terms: int = 5) -> Tensor:
    """Cayley transform of skew ``Q`` (batched): ``(I − Q)⁻¹(I + Q)``.

    ``method="neumann"`` replaces the inverse by ``I + Q + … + Q^{terms−1}`` (no solve; orthogonal
    only to ``O(‖Q‖^terms)``, and divergent once ``‖Q‖₂ ≥ 1``).
    """
    eye = torch.eye(Q.shape[-1], dtype=Q.dtype, device=Q.device).expand_as(Q)
    if method == "exact":
        return torch.linalg.solve(eye - Q, eye + Q)
    if method == "neumann":  # Horner: S ← I + Q S (t−1 times), R = S + Q S; one fused op per term
        if terms == 1:
            return eye + Q
        b = Q.shape[-1]
        Q3 = Q.reshape(-1, b, b)
        I3 = torch.eye(b, dtype=Q.dtype, device=Q.device).expand(Q3.shape[0], b, b)
        S = I3 + Q3  # I + Q
        for _ in range(terms - 2):
            S = torch.baddbmm(I3, Q3, S)
        return torch.baddbmm(S, Q3, S).reshape(Q.shape)
    raise ValueError(f"unknown Cayley method {method!r}; use 'exact' or 'neumann'")


@torch.no_grad()
def orthogonality_error(R: Tensor) -> float:
    """``max_n ‖R_nᵀ R_n − I‖_F`` over a batch of square matrices (0 for exact rotations)."""
    R = R.detach().double()
    eye = torch.eye(R.shape[-1], dtype=R.dtype, device=R.device)
    return float(torch.linalg.matrix_norm(R.transpose(-1, -2) @ R - eye).max())


def block_apply(x: Tensor, R: Tensor) -> Tensor:
    """``blockdiag(R_1..R_n) x`` on the last dimension (``n·b``) of ``x``; ``R`` has shape ``(n, b, b)``."""
    n, b, _ = R.shape
    xb = x.reshape(*x.shape[:-1], n, b)
    return torch.einsum("...nj,nkj->...nk", xb, R).reshape(x.shape)


def block_apply_weight(W: Tensor, R: Tensor) -> Tensor:
    """``W · blockdiag(R)`` for ``W`` of shape ``(d_out, n·b)`` (rows of ``W`` times each block)."""
    n, b, _ = R.shape
    Wb = W.reshape(W.shape[0], n, b)
    return torch.einsum("onk,nkj->onj", Wb, R).reshape(W.shape)


def butterfly_apply(x: Tensor, R: Tensor, stride: int, transpose: bool = False) -> Tensor:
    """One butterfly factor ``F`` (or ``Fᵀ``) on the last dimension of ``x``.

    Coordinates are split into groups of ``b·stride``; inside a group, block ``t`` (``t < stride``)
    holds the ``b`` coordinates ``t, t + stride, …, t + (b−1)·stride``. ``R`` has shape
    ``(d / b, b, b)`` with block index ``g·stride + t``. ``stride = 1`` is a plain block diagonal.
    """
    nblocks, b, _ = R.shape
    groups = nblocks // stride
    xv = x.reshape(*x.shape[:-1], groups, b, stride)
    Rv = R.reshape(groups, stride, b, b)
    eq = "...gkt,gtkj->...gjt" if transpose else "...gjt,gtkj->...gkt"
    return torch.einsum(eq, xv, Rv).reshape(x.shape)


def butterfly_permutation(d: int, b: int, stride: int) -> Tensor:
    """Index ``p ↦ original coordinate`` of the contiguous-block order used by :func:`butterfly_apply`."""
    g = torch.arange(d // (b * stride)).view(-1, 1, 1)
    t = torch.arange(stride).view(1, -1, 1)
    j = torch.arange(b).view(1, 1, -1)
    return (g * b * stride + j * stride + t).reshape(-1)


def butterfly_dense(R: Tensor, stride: int) -> Tensor:
    """Dense oracle of one butterfly factor: ``Pᵀ · blockdiag(R) · P`` with an explicit permutation matrix."""
    nblocks, b, _ = R.shape
    d = nblocks * b
    perm = butterfly_permutation(d, b, stride)
    P = torch.zeros(d, d, dtype=R.dtype, device=R.device)
    P[torch.arange(d), perm] = 1.0
    return P.T @ torch.block_diag(*R) @ P


def householder_wy(U: Tensor) -> tuple[Tensor, Tensor]:
    """Compact WY form of ``H_1 H_2 ⋯ H_r``, ``H_i = I − 2 v_i v_iᵀ``, ``v_i = u_i / ‖u_i‖``.

    ``U`` holds the ``u_i`` as rows, shape ``(r, d)``. Returns ``(V, T)`` with ``H = I − Vᵀ T V``
    and ``T⁻¹ = ½ I + striu(V Vᵀ)`` (upper triangular, ``r × r``).
    """
    V = U / U.norm(dim=-1, keepdim=True)
    r = V.shape[0]
    eye = torch.eye(r, dtype=V.dtype, device=V.device)
    T_inv = 0.5 * eye + torch.triu(V @ V.T, diagonal=1)
    T = torch.linalg.solve_triangular(T_inv, eye, upper=True)
    return V, T


def householder_apply(x: Tensor, V: Tensor, T: Tensor, transpose: bool = False) -> Tensor:
    """``H x`` (or ``Hᵀ x``) for ``H = I − Vᵀ T V``, on the last dimension of ``x``: ``O(r d)``."""
    coeff = x @ V.T  # (..., r)
    coeff = coeff @ (T if transpose else T.T)
    return x - coeff @ V


def householder_dense(U: Tensor) -> Tensor:
    """Dense oracle: the explicit product ``(I − 2 v_1 v_1ᵀ) ⋯ (I − 2 v_r v_rᵀ)``."""
    d = U.shape[-1]
    H = torch.eye(d, dtype=U.dtype, device=U.device)
    for u in U:
        v = u / u.norm()
        H = H @ (torch.eye(d, dtype=U.dtype, device=U.device) - 2.0 * torch.outer(v, v))
    return H


def effective_bias(base_fn: Callable[[Tensor], Tensor], base: nn.Module, like: Tensor) -> Tensor | None:
    """The bias of ``base_fn`` (an affine map): ``base.bias`` if it is the bare base, else ``base_fn(0)``.

    Output-side adapters that must leave the bias alone (``y = S (W x) + b``) use it so that they
    compose exactly with other adapters stacked below them on the same layer.
    """
    if base_fn is base:
        bias = getattr(base, "bias", None)
        return bias
    zero = like.new_zeros(1, like.shape[-1])
    return base_fn(zero).reshape(-1)


def orthogonality_report(model: nn.Module, name: str | None = None) -> dict[str, float]:
    """``{layer: ‖RᵀR − I‖}`` for every adapter (of adapter ``name``, or all) that reports one.

    Exact Cayley / Householder variants report rounding (≲1e-6 in fp32); the Neumann and
    first-order variants report their approximation error, which grows with the generator's norm.
    """
    from ..core.layer import AdaptedModule

    report: dict[str, float] = {}
    for layer_name, module in model.named_modules():
        if not isinstance(module, AdaptedModule):
            continue
        for adapter_name, adapter in module.adapters.items():
            if (name is None or adapter_name == name) and hasattr(adapter, "orthogonality_error"):
                key = layer_name if name is not None else f"{layer_name}[{adapter_name}]"
                report[key] = adapter.orthogonality_error()
    return report
