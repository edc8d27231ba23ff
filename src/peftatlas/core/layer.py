"""The adapted-layer wrapper: one base module plus any number of named adapters.

Forward with active adapters ``a1..ak`` (none merged) composes them in order::

    f0 = base;  f_i(x) = adapter_i(x, f_{i-1});  y = f_k(x)

Merging folds adapters into the base parameters in the same order and keeps an exact backup of
the original parameters, so ``unmerge()`` restores the base bit for bit. Mixed batches route each
row to its own adapter (or to the base, ``"__base__"``).

Weight-space methods see every base as ``y = W x + b`` on vectors: an ``nn.Linear`` directly, any
other layer type through its :class:`~peftatlas.core.layer_types.MatrixView` (``self.matrix``),
which turns the input into vectors (patches, one-hots) and the output back.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .layer_types import MatrixView, adapts_as_matrix, as_matrix, is_quantized
from .method import BaseFn, LayerAdapter

BASE_NAME = "__base__"


class MergeError(ValueError):
    """Merging would write non-finite values; nothing was changed."""


class AdaptedModule(nn.Module):
    """Wraps ``base`` and holds adapters in ``self.adapters`` (an ``nn.ModuleDict``)."""

    _peftatlas_wrapper = True

    def __init__(self, base: nn.Module, matrix: nn.Module | None = None) -> None:
        super().__init__()
        self.base = base
        # The base as a matrix on vectors (the base itself for nn.Linear); a plain attribute, not a
        # submodule: it owns nothing. Adapters of weight-space methods were built on this object.
        object.__setattr__(self, "_matrix", matrix)
        # Other modules sharing this base's weight tensor (tied embeddings): merging is refused.
        self.tied_with: list[str] = []
        self.adapters = nn.ModuleDict()
        self.active: list[str] = []
        self.merged: list[str] = []
        self.disabled = False
        self.row_adapters: list[str] | None = None  # set by the model during a mixed-batch forward
        self._backup: dict[str, Tensor] | None = None

    # --- attribute passthrough (code that reads .weight / .in_features keeps working) ----------
    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["base"], name)

    @property
    def matrix(self) -> nn.Module:
        """The base layer as ``y = W x + b`` on vectors (see :mod:`peftatlas.core.layer_types`)."""
        if self.__dict__.get("_matrix") is None:
            object.__setattr__(self, "_matrix", as_matrix(self._modules["base"]))
        return self.__dict__["_matrix"]

    def _on_matrix(self, names: Sequence[str]) -> bool:
        """Whether ``names`` run on the matrix view (a non-Linear base under weight-space methods)."""
        if self.matrix is self.base:
            return False
        flags = {adapts_as_matrix(type(self.adapters[n])) for n in names}
        if len(flags) > 1:
            raise TypeError(f"adapters {list(names)} on {type(self.base).__name__} mix weight-space methods with "
                            "methods that wrap the module itself; activate them one at a time")
        return flags == {True}

    # --- forward -----------------------------------------------------------------------------------
    def _chain(self, names: Sequence[str], start: nn.Module | None = None) -> BaseFn:
        fn: BaseFn = self.base if start is None else start
        for n in names:
            adapter = self.adapters[n]
            fn = (lambda a, prev: (lambda x: a(x, prev)))(adapter, fn)
        return fn

    def _live(self) -> list[str]:
        return [n for n in self.active if n in self.adapters and n not in self.merged]

    def forward(self, *args, **kwargs) -> Tensor:
        if self.disabled:
            return self.base(*args, **kwargs)
        if self.row_adapters is not None:
            return self._mixed_forward(self.row_adapters, args, kwargs)
        return self._run(self._live(), args, kwargs)

    def _run(self, names: Sequence[str], args: tuple, kwargs: dict) -> Tensor:
        if not names:
            return self.base(*args, **kwargs)
        if self._on_matrix(names):
            if len(args) != 1 or kwargs:
                raise TypeError(f"adapter(s) {list(names)} on {type(self.base).__name__} take one input tensor")
            view = self.matrix
            assert isinstance(view, MatrixView)
            return view.run(self._chain(names, view), args[0])
        if len(args) == 1 and not kwargs:
            return self._chain(names)(args[0])
        if len(names) == 1:
            return self.adapters[names[0]].functional_forward(self.base, args, kwargs)
        raise TypeError(
            f"adapter(s) {list(names)} on {type(self.base).__name__} cannot handle a call with extra arguments"
        )

    def _mixed_forward(self, rows: list[str], args: tuple, kwargs: dict) -> Tensor:
        batch = len(rows)

        def rows_of(v, index=None):
            if not isinstance(v, Tensor) or v.dim() == 0 or v.shape[0] not in (1, batch):
                return v
            v = v.expand(batch, *v.shape[1:]) if v.shape[0] == 1 and batch > 1 else v
            return v if index is None else v.index_select(0, index)

        args = tuple(rows_of(a) for a in args)
        kwargs = {k: rows_of(v) for k, v in kwargs.items()}
        first = args[0] if args else next(iter(kwargs.values()))
        if not isinstance(first, Tensor) or first.shape[0] != batch:
            got = first.shape[0] if isinstance(first, Tensor) else "?"
            raise ValueError(f"adapter_names has {batch} entries but the batch has {got} rows")
        here = self.adapters.keys()
        present = [n for n in dict.fromkeys(rows) if n in here]
        present.sort()  # one order whatever the rows' order: serving caches are keyed by it
        if len(args) == 1 and not kwargs:
            # batched method paths are written for nn.Linear; other layer types group rows below
            fast = _batched_mixed_forward(self, args[0], rows, present) if self.matrix is self.base else None
            if fast is not None:
                return fast
        elif present and all(type(self.adapters[n]) is type(self.adapters[present[0]]) for n in present):
            # block-level methods (e.g. LoReFT) run the base once and edit each row's output
            out = type(self.adapters[present[0]]).mixed_batch_functional_forward(self, args, kwargs, rows, present)
            if out is not None:
                return out
        groups: dict[str, list[int]] = {}
        for i, n in enumerate(rows):
            groups.setdefault(n if n in here else BASE_NAME, []).append(i)
        out: Tensor | None = None
        for n, idx in groups.items():
            index = torch.tensor(idx, device=first.device)
            sub_args = tuple(rows_of(a, index) for a in args)
            sub_kwargs = {k: rows_of(v, index) for k, v in kwargs.items()}
            nested = [m for m in self.base.modules() if isinstance(m, AdaptedModule)]
            saved = [m.row_adapters for m in nested]
            for m in nested:  # wrapped modules inside this one see the sub-batch
                m.row_adapters = [n] * len(idx)
            try:
                ys = self._run([] if n == BASE_NAME else [n], sub_args, sub_kwargs)
            finally:
                for m, r in zip(nested, saved):
                    m.row_adapters = r
            if out is None:
                out = ys.new_empty((batch, *ys.shape[1:]))
            out.index_copy_(0, index, ys)
        assert out is not None
        return out

    # --- merging ------------------------------------------------------------------------------------
    def _params(self) -> dict[str, Tensor]:
        return dict(self.base.named_parameters(recurse=False))

    def merge(self, names: Sequence[str]) -> list[str]:
        """Fold ``names`` (in order) into the base parameters. Returns the names newly merged."""
        todo = [n for n in names if n not in self.merged]
        if not todo:
            return []
        if self.tied_with:
            raise MergeError(f"cannot merge adapter(s) {todo}: this layer's weight is tied to "
                             f"{', '.join(self.tied_with)} (the same tensor), so merging would change both; "
                             "use the adapter unmerged")
        params = self._params()
        quantized = [k for k, v in params.items() if is_quantized(v)]
        if quantized:
            raise MergeError(f"cannot merge adapter(s) {todo} into the quantized {', '.join(quantized)} "
                             f"({type(params[quantized[0]]).__name__}); run them unmerged or dequantize the base first")
        current = {k: v.detach() for k, v in params.items()}
        for n in todo:
            adapter = self.adapters[n]
            if not adapter.mergeable:
                raise MergeError(f"method {adapter.name!r} (adapter {n!r}) cannot be merged into the weights")
            with torch.no_grad():
                if self._on_matrix([n]):
                    view = self.matrix
                    assert isinstance(view, MatrixView)
                    current = view.from_matrix(adapter.merged_params(view.to_matrix(current)))
                else:
                    current = adapter.merged_params(current)
        bad = [k for k, v in current.items() if not torch.isfinite(v).all()]
        if bad:
            raise MergeError(
                f"merging adapter(s) {todo} would write non-finite values into {', '.join(bad)}; "
                "the base weights were left untouched"
            )
        if self._backup is None:
            self._backup = {k: v.detach().clone() for k, v in params.items()}
        with torch.no_grad():
            for k, v in current.items():
                params[k].copy_(v.to(params[k].dtype))
        self.merged.extend(todo)
        return todo

    def unmerge(self) -> None:
        """Restore the exact original base parameters."""
        if self._backup is not None:
            with torch.no_grad():
                for k, v in self._params().items():
                    v.copy_(self._backup[k])
        self._backup = None
        self.merged = []

    def drop_backup(self) -> None:
        """Forget the pre-merge copy (the merged weights become the new base)."""
        self._backup = None

    def add(self, name: str, adapter: LayerAdapter) -> None:
        if name in self.adapters:
            raise ValueError(f"adapter {name!r} already exists on this layer")
        store_row_major_(adapter)
        self.adapters[name] = adapter

    def remove(self, name: str) -> None:
        if name in self.merged:
            raise ValueError(f"adapter {name!r} is merged; unmerge before deleting it")
        del self.adapters[name]
        self.active = [n for n in self.active if n != name]

    def extra_repr(self) -> str:
        return f"active={self.active}, merged={self.merged}, disabled={self.disabled}"


def _batched_mixed_forward(
    layer: AdaptedModule, x: Tensor, rows: list[str], present: list[str]
) -> Tensor | None:
    """Hook for a method-specific batched path (e.g. gathered LoRA); ``None`` = use grouping."""
    if not present:
        return None
    adapters = layer.adapters
    kind = type(adapters[present[0]])
    if any(type(adapters[n]) is not kind for n in present):
        return None
    return kind.mixed_batch_forward(layer, x, rows, present)


def store_row_major_(module: nn.Module) -> None:
    """Store every parameter and buffer of ``module`` densely in row-major order, in place.

    Save → load must reproduce outputs bit for bit. Two tensors with equal values but different
    strides (a transposed view vs a dense copy) reach a matmul through different BLAS kernels, and
    those round differently on some CPUs (MKL on AVX2 without AVX-512). An adapter built from its
    partner layers and the same adapter filled from its file (safetensors loads row-major) must
    therefore share one layout; this makes the layout row-major for every method, by construction.
    A tensor keeps its identity, so modules that share it keep sharing it.
    """
    for tensor in [*module.parameters(), *module.buffers()]:
        if not tensor.is_contiguous():
            tensor.data = tensor.data.contiguous()  # same tensor object: references to it stay valid

def warn_once(msg: str) -> None:
    warnings.warn(msg, stacklevel=3)
