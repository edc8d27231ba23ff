"""The task head trained alongside an adapter, kept per adapter (PEFT's ``modules_to_save``).

A head module ``h`` (a classifier, a score layer) is replaced by :class:`HeadCopies`, which keeps
the pretrained ``h`` frozen under ``base`` and one trainable deep copy per adapter under
``adapters.<name>``::

    y = copies[a](x)     a = the active adapter (the first active one that has a copy)
    y = h(x)             inside ``disable()``, for rows named "__base__", or with no adapter

so the disabled model, and every base row of a mixed batch, is exactly the pretrained model even
after the head was trained. ``merge_and_unload`` keeps the active copy; ``unload`` the original.
The wrapper uses the same child names as :class:`~peftatlas.core.layer.AdaptedModule`, so module
paths seen through :mod:`peftatlas.core.tree` stay the user's (``classifier.dense.weight``).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from .layer import BASE_NAME


class HeadCopies(nn.Module):
    """A head with its pretrained original (``base``) and one trainable copy per adapter."""

    _peftatlas_wrapper = True

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base
        self.adapters = nn.ModuleDict()
        self.active: str | None = None
        self.disabled = False
        self.row_adapters: list[str] | None = None  # set by the model during a mixed-batch forward

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.current(), name)

    def current(self) -> nn.Module:
        """The module a plain forward runs now: the active adapter's copy, or the original."""
        modules = self._modules
        if self.disabled or self.active is None:
            return modules["base"]
        return modules["adapters"][self.active]

    def add(self, name: str) -> nn.Module:
        """Give adapter ``name`` a trainable copy of the original head; returns the copy."""
        if name in self.adapters:
            raise ValueError(f"adapter {name!r} already has a head copy")
        head = copy.deepcopy(self.base)
        for p in head.parameters():
            p.requires_grad_(True)
        self.adapters[name] = head.train(self.base.training)
        return head

    def remove(self, name: str) -> None:
        del self.adapters[name]
        if self.active == name:
            self.active = None

    def forward(self, *args, **kwargs):
        if self.row_adapters is None or self.disabled:
            return self.current()(*args, **kwargs)
        return self._mixed_forward(self.row_adapters, args, kwargs)

    def _mixed_forward(self, rows: list[str], args: tuple, kwargs: dict) -> Tensor:
        """Row *i* through the copy of ``rows[i]`` (the original for "__base__" or an unknown name)."""
        batch = len(rows)
        groups: dict[str, list[int]] = {}
        for i, n in enumerate(rows):
            groups.setdefault(n if n in self.adapters else BASE_NAME, []).append(i)
        if len(groups) == 1:
            (only,) = groups
            return (self.base if only == BASE_NAME else self.adapters[only])(*args, **kwargs)

        def rows_of(v, index: Tensor):
            if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == batch:
                return v.index_select(0, index)
            return v

        out: Tensor | None = None
        for n, idx in groups.items():
            index = torch.tensor(idx, device=next(t for t in (*args, *kwargs.values()) if isinstance(t, Tensor)).device)
            module = self.base if n == BASE_NAME else self.adapters[n]
            ys = module(*(rows_of(a, index) for a in args), **{k: rows_of(v, index) for k, v in kwargs.items()})
            if out is None:
                out = ys.new_empty((batch, *ys.shape[1:]))
            out.index_copy_(0, index, ys)
        assert out is not None
        return out

    def extra_repr(self) -> str:
        return f"active={self.active}, disabled={self.disabled}"
