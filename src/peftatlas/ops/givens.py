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

from collections.abc import Callable

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
    Differentiable in ``x`` and ``blocks`` (hand-written backward: the adjoint of one direction is
    the other direction with transposed blocks, plus four column reductions per level).
    """
    return _apply(_GivensTreeFn, x, blocks, blocks.shape[-3:] == (x.shape[-1] - 1, 2, 2), transpose)


def givens_rotation_apply(x: Tensor, theta: Tensor, transpose: bool = False) -> Tensor:
    """:func:`givens_tree_apply` with Givens rotations by ``theta`` (length ``d − 1``).

    Same result as ``givens_tree_apply(x, rotation_blocks(theta), transpose)``, computed faster: each
    level is one complex multiplication of the pairs ``e + i·o`` by ``e^{±iθ}``, and ``∂L/∂θ`` needs one
    column reduction per level instead of four.
    """
    return _apply(_GivensRotationFn, x, theta, theta.shape == (x.shape[-1] - 1,), transpose)


def _apply(fn: type[torch.autograd.Function], x: Tensor, params: Tensor, ok: bool, transpose: bool) -> Tensor:
    d = x.shape[-1]
    if not ok:
        raise ValueError(f"a Givens tree on R^{d} has {d - 1} blocks (2×2 or one angle each); "
                         f"got parameters of shape {tuple(params.shape)}")
    lead = x.shape[:-1]
    x2 = x.to(params.dtype).reshape(-1, d).contiguous()
    return fn.apply(x2, params, transpose).reshape(*lead, d)


# (e, o) of one level, rows × pairs: what a backward pass reads. Never a view of the output: a custom
# Function's ctx holding one forms a reference cycle through the output's grad_fn that nothing frees
# (every training step leaked the activations of each adapted layer; tests/test_goft.py).
Level = tuple[Tensor, Tensor]
Reduce = Callable[[int, Tensor, Tensor], Tensor]


def _combine(e: Tensor, o: Tensor, h0: Tensor, h1: Tensor, out: Tensor) -> None:
    """``out ← h0 ⊙ e + h1 ⊙ o`` written in place (``out`` may be a strided view; ``torch.compile``
    cannot trace a strided ``out=``, so there the sum is formed first and copied in)."""
    if torch.compiler.is_compiling():
        out.copy_(torch.addcmul(e * h0, o, h1))
        return
    torch.mul(e, h0, out=out)
    out.addcmul_(o, h1)


def _down(x: Tensor, H: list[Tensor], reduce: Reduce | None = None) -> tuple[Tensor, list[Level], list[Tensor]]:
    """Level 1 first. Level r pairs survivor 2k (``e``) with 2k+1 (``o``): the survivor becomes
    ``new_i = H00 e + H01 o``, the partner is final, ``new_j = H10 e + H11 o``. ``reduce(r, e, o)``
    (used by backward passes) is collected per level."""
    out = torch.empty_like(x)
    V, levels, reduced = x, [], []
    for r, h in enumerate(H):
        s, m = 1 << r, V.shape[1]
        p = m // 2
        e, o = V[:, 0 : 2 * p : 2], V[:, 1 : 2 * p : 2]
        if reduce is not None:
            reduced.append(reduce(r, e, o))
        nxt = torch.empty(x.shape[0], m - p, dtype=x.dtype, device=x.device)
        new_i, new_j = nxt[:, :p], out[:, s :: 2 * s]
        _combine(e, o, h[:, 0, 0], h[:, 0, 1], new_i)
        _combine(e, o, h[:, 1, 0], h[:, 1, 1], new_j)
        levels.append((e, o))
        if m % 2:
            nxt[:, p] = V[:, 2 * p]
        V = nxt
    out[:, 0] = V[:, 0]
    return out, levels, reduced


def _up(x: Tensor, H: list[Tensor], reduce: Reduce | None = None) -> tuple[Tensor, list[Level], list[Tensor]]:
    """Deepest level first. Level r takes the current survivors ``e`` (multiples of 2s) and the
    untouched partners ``o = x[s::2s]`` and interleaves ``new_i = H00 e + H01 o`` with
    ``new_j = H10 e + H11 o``."""
    d = x.shape[1]
    V = x[:, 0:1]
    levels: list[Level] = [None] * len(H)  # type: ignore[list-item]
    reduced: list[Tensor] = [None] * len(H)  # type: ignore[list-item]
    for r in reversed(range(len(H))):
        s = 1 << r
        m = (d + s - 1) // s
        p = m // 2
        e, o = V[:, :p], x[:, s :: 2 * s]
        if reduce is not None:
            reduced[r] = reduce(r, e, o)
        nxt = torch.empty(x.shape[0], m, dtype=x.dtype, device=x.device)
        new_i, new_j = nxt[:, 0 : 2 * p : 2], nxt[:, 1 : 2 * p : 2]
        _combine(e, o, H[r][:, 0, 0], H[r][:, 0, 1], new_i)
        _combine(e, o, H[r][:, 1, 0], H[r][:, 1, 1], new_j)
        levels[r] = (e, o)
        if m % 2:
            nxt[:, 2 * p] = V[:, p]
        V = nxt
    return (V if H else x.clone()), levels, reduced


def _run(x: Tensor, blocks: list[Tensor], transpose: bool, reduce: Reduce | None = None
         ) -> tuple[Tensor, list[Level], list[Tensor]]:
    """``R x = _down(x, G)``; ``Rᵀ x = _up(x, Gᵀ)``."""
    return _up(x, [b.transpose(1, 2) for b in blocks], reduce) if transpose else _down(x, blocks, reduce)


class _GivensTreeFn(torch.autograd.Function):
    """Free 2×2 blocks. The adjoint of ``R x`` is ``Rᵀ g`` and vice versa; at each level the adjoint
    pass sees ``(g_new_i, g_new_j)`` and the block gradient is their outer product with the forward
    level's ``(e, o)`` summed over rows (transposed when the forward used ``Gᵀ``)."""

    @staticmethod
    def forward(ctx, x: Tensor, blocks: Tensor, transpose: bool) -> Tensor:  # type: ignore[override]
        split = _split_levels(blocks, x.shape[1])
        out, levels, _ = _run(x, split, transpose)
        ctx.split, ctx.levels, ctx.transpose = split, levels, transpose
        ctx.save_for_backward(x, out)  # the level views alias these: autograd now detects in-place edits
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor) -> tuple[Tensor, Tensor | None, None]:  # type: ignore[override]
        dot = torch.linalg.vecdot

        def block_grad(r: int, gi: Tensor, gj: Tensor) -> Tensor:
            e, o = ctx.levels[r]
            dh = torch.stack((torch.stack((dot(gi, e, dim=0), dot(gi, o, dim=0)), -1),
                              torch.stack((dot(gj, e, dim=0), dot(gj, o, dim=0)), -1)), -2)
            return dh.transpose(1, 2) if ctx.transpose else dh

        ctx.saved_tensors  # noqa: B018  (raises if x or the output was modified in place)
        reduce = block_grad if ctx.needs_input_grad[1] else None
        gx, _, grads = _run(g.contiguous(), ctx.split, not ctx.transpose, reduce)
        gblocks = None
        if reduce is not None:
            gblocks = torch.cat(grads, 0) if grads else g.new_zeros(0, 2, 2)
        return gx, gblocks, None


def _rot_up(x: Tensor, w: list[Tensor], fwd: list[Tensor] | None = None, sign: float = 1.0
            ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """:func:`_up` for rotations in complex form: a level maps the pair ``z = e + i·o`` to ``z·w``.

    With ``fwd`` (the forward's complex level outputs) it also returns ``sign·Im Σ_rows conj(z'_fwd)·z``
    per level — the angle gradient when this pass is the adjoint."""
    n, d = x.shape
    V = x[:, 0:1]
    outs: list[Tensor] = [None] * len(w)  # type: ignore[list-item]
    grads: list[Tensor] = [None] * len(w)  # type: ignore[list-item]
    for r in reversed(range(len(w))):
        s = 1 << r
        m = (d + s - 1) // s
        p = m // 2
        z = torch.complex(V[:, :p], x[:, s :: 2 * s])
        if fwd is not None:
            grads[r] = torch.linalg.vecdot(fwd[r], z, dim=0).imag.mul_(sign)
        outs[r] = z.mul_(w[r])
        pairs = torch.view_as_real(z).view(n, 2 * p)  # (new_i, new_j) interleaved, no copy
        V = torch.cat((pairs, V[:, p : p + 1]), 1) if m % 2 else pairs
    return (V if w else x.clone()), outs, grads


def _rot_down(x: Tensor, w: list[Tensor], fwd: list[Tensor] | None = None, sign: float = 1.0
              ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """:func:`_down` for rotations in complex form; survivor arrays keep an even physical width so
    adjacent (e, o) pairs can be viewed as complex numbers without copying."""
    n, d = x.shape
    out = torch.empty_like(x)
    V, m = (torch.nn.functional.pad(x, (0, 1)) if d % 2 and d > 1 else x), d
    outs: list[Tensor] = []
    grads: list[Tensor] = []
    for r in range(len(w)):
        s, p = 1 << r, m // 2
        z = torch.view_as_complex(V.view(n, -1, 2))[:, :p]
        if fwd is not None:
            grads.append(torch.linalg.vecdot(fwd[r], z, dim=0).imag.mul_(sign))
        zp = z * w[r]
        outs.append(zp)
        left = m - p
        nxt = torch.empty(n, left + (left % 2 if left > 1 else 0), dtype=x.dtype, device=x.device)
        nxt[:, :p].copy_(zp.real)
        out[:, s :: 2 * s].copy_(zp.imag)
        if m % 2:
            nxt[:, p] = V[:, 2 * p]
        V, m = nxt, left
    out[:, 0] = V[:, 0]
    return out, outs, grads


class _GivensRotationFn(torch.autograd.Function):
    """Givens rotations by θ in complex form: for ``R x`` a level maps ``z = e + i·o`` to ``z·e^{iθ}``
    (``Rᵀ x``: ``z·e^{−iθ}``). The adjoint multiplies by the conjugate phases in the opposite traversal,
    and ``∂L/∂θ = ±Im Σ_rows conj(z')·g'`` (z' the level output, g' its gradient): one reduction per level."""

    @staticmethod
    def forward(ctx, x: Tensor, theta: Tensor, transpose: bool) -> Tensor:  # type: ignore[override]
        d = x.shape[1]
        angles = torch.split(theta, givens_tree_level_sizes(d)) if d > 1 else ()
        phases = [torch.polar(torch.ones_like(t), -t if transpose else t) for t in angles]
        out, outs, _ = (_rot_up if transpose else _rot_down)(x, phases)
        ctx.phases, ctx.outs, ctx.transpose = phases, outs, transpose
        ctx.save_for_backward(x, out)  # the level outputs alias these: autograd detects in-place edits
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor) -> tuple[Tensor, Tensor | None, None]:  # type: ignore[override]
        ctx.saved_tensors  # noqa: B018  (raises if x or the output was modified in place)
        fwd = ctx.outs if ctx.needs_input_grad[1] else None
        conj = [ph.conj() for ph in ctx.phases]
        if ctx.transpose:  # forward was _rot_up: its adjoint is _rot_down with conjugate phases
            gx, _, grads = _rot_down(g.contiguous(), conj, fwd, -1.0)
        else:
            gx, _, grads = _rot_up(g.contiguous(), conj, fwd, 1.0)
        gtheta = None
        if fwd is not None:
            gtheta = torch.cat(grads, 0) if grads else g.new_zeros(0)
        return gx, gtheta, None


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
