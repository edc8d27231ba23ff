"""Mixed-adapter batched inference: many adapters resident at once, each row routed to its own.

The engine (:func:`peftatlas.core.layer._batched_mixed_forward`) calls a method's
``mixed_batch_forward(layer, x, rows, present)`` when every adapter named in the batch is of that
method. Methods implement it with the helpers here, so that a batch whose rows use *k* different
adapters costs one base forward plus a constant number of batched operations — never a loop over
adapters (each op in such a loop costs a kernel launch on a GPU and a thread wake-up on a CPU)::

    bank = stack(θ_1, …, θ_k, 0)              # one extra all-zero slot: base rows add nothing

    "grouped" (default):  rows permuted so each adapter's rows are contiguous, every group padded
        to the largest one (G rows) with copies of its own first row:
            xs = x[order]                      # (groups·G, …, d_in)
            ys = base(xs);  ys_g += bmm(bmm(xs_g, A_gᵀ), B_gᵀ)    # one (A, B) per group, batched
            y  = ys[pos]                       # each row's own position; padding dropped
    "gather" (heavily unbalanced batches):  one (A, B) per *row*, gathered from the bank:
            y = base(x) + bmm(bmm(x, A_rowsᵀ), B_rowsᵀ)

``"auto"`` picks "grouped" unless padding would add more than half the batch (e.g. one adapter
with most rows and many with one each), where the per-row gather is cheaper. VeRA shares its
random bases, so it needs neither: it runs the bases once for all rows and gathers only each row's
vectors. Use it through the model::

    model.eval()
    logits = model(**batch, adapter_names=["a", "b", "__base__", ...]).logits   # one name per row
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Hashable, Sequence

import torch
from torch import Tensor, nn

# "auto", "grouped" or "gather"; set to force one (tests, benchmarks).
MIXED_STRATEGY = "auto"
MAX_PADDING = 0.5  # "auto" leaves "grouped" when padding would add more than this fraction of the batch


@dataclasses.dataclass
class Groups:
    """The grouped layout of a mixed batch (see the module docstring).

    ``slots[g]`` is the bank slot of group ``g`` (``len(present)`` = the zero slot for base rows);
    every group has ``size`` rows; ``order`` lists the source row of each of the ``len(slots)·size``
    grouped rows and ``pos[i]`` is where row *i* landed (both ``None`` when the layout is the
    batch itself).
    """

    slots: list[int]
    size: int
    order: list[int] | None
    pos: list[int] | None


def groups(rows: Sequence[str], present: Sequence[str]) -> Groups:
    """Group rows by adapter (bank slot order), pad every group to the largest with its first row."""
    slot = {n: i for i, n in enumerate(present)}
    zero = len(present)
    slot_of = [slot.get(n, zero) for n in rows]
    by_slot = sorted(range(len(rows)), key=slot_of.__getitem__)  # stable: rows keep their order
    counts = collections.Counter(slot_of)
    keys = sorted(counts)
    size = max(counts.values())
    order: list[int] = []
    start = 0
    for key in keys:  # each group's rows, padded to ``size`` with its first row
        idx = by_slot[start:start + counts[key]]
        start += counts[key]
        order += idx + [idx[0]] * (size - len(idx))
    pos = [0] * len(rows)
    for g, key in enumerate(keys):
        first = g * size
        for t, i in enumerate(order[first:first + counts[key]]):
            pos[i] = first + t
    if order == list(range(len(rows))):
        return Groups(keys, size, None, None)
    return Groups(keys, size, order, pos)


def strategy(layout: Groups, batch: int) -> str:
    """``"grouped"`` or ``"gather"`` for a batch of ``batch`` rows laid out as ``layout``."""
    if MIXED_STRATEGY in ("grouped", "gather"):
        return MIXED_STRATEGY
    if MIXED_STRATEGY != "auto":
        raise ValueError(f"serving.MIXED_STRATEGY must be 'auto', 'grouped' or 'gather', got {MIXED_STRATEGY!r}")
    padded = len(layout.slots) * layout.size
    return "grouped" if padded <= (1 + MAX_PADDING) * batch else "gather"


def single_adapter(rows: Sequence[str], present: Sequence[str]) -> str | None:
    """The adapter every row uses, when there is exactly one (then the plain forward serves)."""
    first = rows[0] if rows else None
    if first in present and all(n == first for n in rows):
        return first
    return None


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


BANK_CACHE_SIZE = 8  # stacked banks kept per layer (least recently used dropped first)
_BANKS = "_serving_banks"


def cached_bank(owner: nn.Module, tag: Hashable, sources: Sequence[Tensor], build: Callable[[], Tensor]) -> Tensor:
    """``build()`` (a :func:`bank` of ``sources``), reused while no source has changed.

    Stacking every resident adapter on every call costs more than the batch's own update once
    hundreds are resident, so in inference the bank is kept on ``owner`` and rebuilt only when a
    source tensor is replaced or modified in place (its storage pointer or version counter moves)
    or ``tag`` changes (put everything else ``build`` depends on in it: names, scales, dtype).
    With gradients flowing to a source, it is built fresh so autograd sees it.

    The cache is bounded: at most :data:`BANK_CACHE_SIZE` banks per owner, least recently used
    evicted first. The engine lists a batch's adapters in sorted order, so a tag holding those
    names does not depend on the order rows arrive in; :func:`forget` drops every bank naming an
    adapter (the engine calls it when an adapter is deleted or replaced). ``owner.__dict__`` keeps
    the cache out of ``state_dict``.
    """
    if torch.is_grad_enabled() and any(t.requires_grad for t in sources):
        return build()
    stamp = tuple((t.data_ptr(), t._version) for t in sources)
    cache: collections.OrderedDict[Hashable, tuple[tuple, Tensor]] = owner.__dict__.setdefault(
        _BANKS, collections.OrderedDict())
    hit = cache.get(tag)
    if hit is not None and hit[0] == stamp:
        cache.move_to_end(tag)
        return hit[1]
    with torch.no_grad():
        value = build()
    cache[tag] = (stamp, value)
    cache.move_to_end(tag)
    while len(cache) > BANK_CACHE_SIZE:
        cache.popitem(last=False)
    return value


def cached_tags(owner: nn.Module) -> list[Hashable]:
    """The tags of the banks cached on ``owner``, least recently used first."""
    return list(owner.__dict__.get(_BANKS, {}))


def forget(owner: nn.Module, name: str) -> None:
    """Drop every bank cached on ``owner`` whose tag mentions adapter ``name`` (at any depth)."""
    cache = owner.__dict__.get(_BANKS)
    if cache:
        for tag in [t for t in cache if _mentions(t, name)]:
            del cache[tag]


def _mentions(tag: Hashable, name: str) -> bool:
    if isinstance(tag, tuple):
        return any(_mentions(t, name) for t in tag)
    return tag == name


def take_rows(t: Tensor, index: Sequence[int]) -> Tensor:
    """``t[index]`` along dim 0 as one contiguous row copy (2-D ``index_select`` is memcpy speed;
    on 3-D tensors it is ~2× slower on CPU)."""
    idx = torch.tensor(index, device=t.device)
    return t.reshape(t.shape[0], -1).index_select(0, idx).view(len(index), *t.shape[1:])


def as_rows(t: Tensor, batch: int) -> Tensor:
    """View ``(batch, …, d)`` as ``(batch, M, d)`` with ``M`` the product of the middle dimensions."""
    if t.dim() < 2 or t.shape[0] != batch:
        raise ValueError(f"expected a tensor with {batch} rows in dim 0, got shape {tuple(t.shape)}")
    return t.reshape(batch, -1, t.shape[-1])
