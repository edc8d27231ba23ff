"""Mixed-adapter batched inference: many adapters resident at once, each row routed to its own.

The engine (:func:`peftatlas.core.layer._batched_mixed_forward`) calls a method's
``mixed_batch_forward(layer, x, rows, present)`` when every adapter named in the batch is of that
method. Methods implement it with the helpers here, so that a batch whose rows use *k* different
adapters costs one base forward plus one batched adapter computation — not *k* sub-batches::

    idx[i]  = position of rows[i] in present, or k for "__base__" / adapters this layer lacks
    bank    = stack(θ_1, …, θ_k, 0)          # one extra all-zero slot: base rows add nothing
    θ_rows  = bank[idx]                       # gather: one parameter set per row
    y       = base(x) + batched_update(x, θ_rows)   # bmm / baddbmm over the batch dimension

LoRA gathers its factors (``bmm`` with per-row ``A``, ``B``); VeRA shares its random bases across
adapters and gathers only the per-adapter vectors. Use it through the model::

    model.eval()
    logits = model(**batch, adapter_names=["a", "b", "__base__", ...]).logits   # one name per row
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def row_index(rows: Sequence[str], present: Sequence[str], device: torch.device | str) -> Tensor:
    """Row *i* → position of ``rows[i]`` in ``present``; rows naming anything else → ``len(present)``.

    The extra position addresses the zero slot that :func:`bank` appends, so base rows (and rows
    naming an adapter this layer does not have) get exactly the base output.
    """
    slot = {n: i for i, n in enumerate(present)}
    zero = len(present)
    return torch.tensor([slot.get(n, zero) for n in rows], dtype=torch.long, device=device)


def bank(tensors: Sequence[Tensor], dtype: torch.dtype | None = None) -> Tensor:
    """Stack same-rank tensors along a new dim 0 and append one all-zero slot.

    Tensors whose shapes differ (LoRA adapters of different ranks) are zero-padded at the end of
    every dimension to the common maximum shape; zero rows/columns of a low-rank factor add
    nothing to the product, so padding is exact.
    """
    if not tensors:
        raise ValueError("bank() needs at least one tensor")
    ndim = tensors[0].dim()
    if any(t.dim() != ndim for t in tensors):
        raise ValueError(f"bank(): tensors have different numbers of dimensions {[t.dim() for t in tensors]}")
    dtype = dtype or tensors[0].dtype
    if all(t.shape == tensors[0].shape for t in tensors):  # the common case: one stack, no padding
        return torch.stack([*tensors, torch.zeros_like(tensors[0])]).to(dtype)
    shape = [max(int(t.shape[d]) for t in tensors) for d in range(ndim)]
    out = tensors[0].new_zeros((len(tensors) + 1, *shape), dtype=dtype)
    for i, t in enumerate(tensors):
        out[(i, *(slice(0, s) for s in t.shape))] = t.to(dtype)
    return out


def as_rows(t: Tensor, batch: int) -> Tensor:
    """View ``(batch, …, d)`` as ``(batch, M, d)`` with ``M`` the product of the middle dimensions."""
    if t.dim() < 2 or t.shape[0] != batch:
        raise ValueError(f"expected a tensor with {batch} rows in dim 0, got shape {tuple(t.shape)}")
    return t.reshape(batch, -1, t.shape[-1])
