"""GOFT's binary tree of 2×2 blocks (Givens rotations or free quasi-Givens blocks) on R^d.

Layout (Ma et al., ICML 2024, Eq. 3, extended to any ``d``): level ``r = 1, 2, …, ⌈log₂ d⌉`` has
stride ``s = 2^{r−1}`` and acts on the disjoint pairs ``(i, i + s)`` for every ``i ≡ 0 (mod 2s)`` with
``i + s < d``. Every index ``j ≥ 1`` is the partner of exactly one pair (the level of its lowest set
bit), so the tree holds exactly ``d − 1`` blocks for every ``d``. Blocks are stored flat, shape
``(d − 1, 2, 2)``, level 1 first, pairs by increasing ``i``.

A block ``G = [[a, b], [c, e]]`` on pair ``(i, j)`` acts as ``v'_i = a v_i + b v_j``,
``v'_j = c v_i + e v_j`` (a Givens rotation by θ is ``[[cos θ, −sin θ], [sin θ, cos θ]]``).
``P_r`` is the product of the level-``r`` blocks and ``R = P_L ⋯ P_2 P_1``.

Fast application (no ``d × d`` matrix): the indices still active at level ``r`` are the multiples of
``2^{r−1}``; kept contiguous ("survivors"), level ``r`` pairs survivor ``2k`` with survivor ``2k + 1``.
Each level therefore touches half as many coordinates as the one before: about ``2d`` multiply-adds
per token for the whole tree (O(d log d) is the bound asked for; this is O(d)).
"""

from __future__ import annotations

import torch
from torch import Tensor


def givens_tree_level_sizes(d: int) -> list[int]:
    """Number of blocks per level (level 1 first); they sum to ``d − 1``."""
    if d < 1:
        raise ValueError(f"dimension must be ≥ 1, got {d}")
    sizes, m = [], d
    while m > 1:
        sizes.append(m // 2)
        m -= m // 2
    return sizes


def givens_tree_pairs(d: int) -> list[tuple[int, int]]:
    """The ``(i, j)`` coordinate pairs in storage order, straight from the level rule."""
    pairs, s = [], 1
    while s < d:
        pairs.extend((i, i + s) for i in range(0, d, 2 * s) if i + s < d)
        s *= 2
    return pairs


def _split_levels(blocks: Tensor, d: int) -> list[Tensor]:
    if blocks.shape[-3:] != (d - 1, 2, 2):
        raise ValueError(f"a Givens tree on R^{d} has {d - 1} blocks of shape 2×2; got {tuple(blocks.shape)}")
    return list(torch.split(blocks, givens_tree_level_sizes(d), dim=0)) if d > 1 else []


def givens_tree_apply(x: Tensor, blocks: Tensor, transpose: bool = False) -> Tensor:
    """``R x`` (or ``Rᵀ x`` if ``transpose``) on the last dimension of ``x``, with ``R = P_L ⋯ P_1``.

    ``R x`` applies level 1 first; ``Rᵀ x = P_1ᵀ ⋯ P_Lᵀ x`` applies the deepest level first with each
    block transposed. ``blocks`` has shape ``(d − 1, 2, 2)``; computation runs in ``blocks.dtype``.
    """
    levels = _split_levels(blocks, x.shape[-1])
    return _apply(x.to(blocks.dtype), levels, 0, transpose)


def _apply(u: Tensor, levels: list[Tensor], r: int, transpose: bool) -> Tensor:
    m = u.shape[-1]
    if r == len(levels):
        return u
    p = m // 2
    blk = levels[r]
    a, b, c, e = blk[:, 0, 0], blk[:, 0, 1], blk[:, 1, 0], blk[:, 1, 1]
    even, odd = u[..., 0::2], u[..., 1::2]  # even = survivors of this level (with one leftover if m is odd)
    if transpose:  # deeper levels act first, then this level's transposed blocks
        even = _apply(even, levels, r + 1, transpose)
        xi = even[..., :p]
        new_i, new_j = a * xi + c * odd, b * xi + e * odd
        out = torch.stack((new_i, new_j), dim=-1).flatten(-2)
        return torch.cat((out, even[..., p:]), dim=-1) if m % 2 else out
    xi = even[..., :p]
    new_i, new_j = a * xi + b * odd, c * xi + e * odd
    survivors = torch.cat((new_i, even[..., p:]), dim=-1) if m % 2 else new_i
    survivors = _apply(survivors, levels, r + 1, transpose)
    out = torch.stack((survivors[..., :p], new_j), dim=-1).flatten(-2)
    return torch.cat((out, survivors[..., p:]), dim=-1) if m % 2 else out


def givens_tree_dense(blocks: Tensor, d: int) -> Tensor:
    """Explicit ``R = P_L ⋯ P_1`` as a ``d × d`` matrix, built level by level from dense ``P_r``."""
    _split_levels(blocks, d)
    pairs = givens_tree_pairs(d)
    R = torch.eye(d, dtype=blocks.dtype, device=blocks.device)
    start = 0
    for size in givens_tree_level_sizes(d):
        P = torch.eye(d, dtype=blocks.dtype, device=blocks.device)
        for k in range(start, start + size):
            i, j = pairs[k]
            P[i, i], P[i, j], P[j, i], P[j, j] = blocks[k, 0, 0], blocks[k, 0, 1], blocks[k, 1, 0], blocks[k, 1, 1]
        R = P @ R
        start += size
    return R


def rotation_blocks(theta: Tensor) -> Tensor:
    """Givens blocks ``[[cos θ, −sin θ], [sin θ, cos θ]]`` for a vector of angles, shape ``(n, 2, 2)``."""
    cos, sin = torch.cos(theta), torch.sin(theta)
    return torch.stack((torch.stack((cos, -sin), -1), torch.stack((sin, cos), -1)), -2)
