"""Every layer type a weight-space method adapts, presented to it as one matrix on vectors.

A method is written once, for ``y = W x + b`` with ``W`` of shape ``(d_out × d_in)``. The engine
shows it every other layer type in that form through a :class:`MatrixView`:

============  =========================  ===============================  ==========================
layer type    stored weight              ``W`` (d_out × d_in)              one "vector" ``x``
============  =========================  ===============================  ==========================
Linear        (out, in)                  weight (the layer itself)        the input's last dim
Conv1D        (in, out)  (GPT-2)         weightᵀ                          the input's last dim
Conv1d/2d     (out, in, *kernel)         weight.reshape(out, in·Πkernel)  one unfolded input patch
Embedding     (vocab, dim)               weightᵀ  (dim × vocab)           the one-hot of a token id
============  =========================  ===============================  ==========================

* **Conv** (``groups = 1``, zero padding): every output position is ``W · patch + b``; the patches
  are ``F.unfold``'s (channel-major, then kernel rows, then columns — PEFT's reshape of a conv
  kernel), the output ``(N, L, out)`` is folded back to ``(N, out, *spatial)``.
* **Embedding**: looking up token ``i`` is ``W e_i`` (row ``i`` of the stored weight), so an
  update ``ΔW`` adds row ``i`` of ``ΔWᵀ`` — a gather, as PEFT does for embedding LoRA.
* The view runs the *base* layer natively (a conv, a lookup, GPT-2's ``addmm``) whenever a method
  calls it on the very vectors the engine made, so an additive method pays for patches / one-hots
  only on its own side of the sum.
* **Merging** converts the layer's parameters to the matrix layout, lets the method merge, and
  converts back (``unmerge`` restores the stored copy bit for bit, as for every layer).
* **Quantized bases** (QLoRA-style; e.g. torchao's weight-only int8/int4 ``nn.Linear``): the view
  presents ``W`` dequantized (``weight.dequantize()``) to methods that read it (DoRA's norms, ...)
  and runs the quantized layer natively for the base term; adapters train in full precision.
  Merging into a quantized weight is refused with a one-line error (it would need a re-quantization
  that changes the base); run the adapter unmerged.
* **Tied weights** (GPT-2's ``lm_head.weight`` *is* ``wte.weight``): adapting either module leaves
  the shared tensor untouched — the update acts only where the adapter sits, the other module keeps
  the pretrained weight. Merging into a tied tensor would change both modules (the update applied
  twice, or where it was never trained), so :meth:`AdaptedModule.merge` refuses it with a one-line
  error; run such adapters unmerged.

Methods state the types they accept in ``LayerAdapter.layer_types`` (names from :data:`LAYER_TYPES`);
a target of another type is refused with a one-line error naming the module, its type and the method.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

LINEAR, GPT2_CONV1D, CONV1D, CONV2D, EMBEDDING = "Linear", "Conv1D", "Conv1d", "Conv2d", "Embedding"
LAYER_TYPES: tuple[str, ...] = (LINEAR, GPT2_CONV1D, CONV1D, CONV2D, EMBEDDING)
LINEAR_LIKE: tuple[str, ...] = (LINEAR, GPT2_CONV1D)  # what "all-linear" selects (as PEFT does)
ALL_MATRIX_TYPES = LAYER_TYPES  # for methods whose math only needs "a matrix on vectors"


class LayerTypeError(ValueError):
    """A module of a type (or a configuration) the method cannot adapt."""


def _is_gpt2_conv1d(module: nn.Module) -> bool:
    kind = type(module)
    return any(c.__name__ == "Conv1D" and c.__module__.startswith("transformers") for c in kind.__mro__)


def layer_type(module: nn.Module) -> str | None:
    """The name of ``module``'s layer type in :data:`LAYER_TYPES`, or ``None``."""
    if isinstance(module, nn.Linear):
        return LINEAR
    if isinstance(module, nn.Conv2d):
        return CONV2D
    if isinstance(module, nn.Conv1d):
        return CONV1D
    if isinstance(module, nn.Embedding):
        return EMBEDDING
    if _is_gpt2_conv1d(module):
        return GPT2_CONV1D
    return None


def adapts_as_matrix(cls: Any) -> bool:
    """Whether method ``cls`` is written for "a matrix on vectors" (the default ``target_types``)."""
    return tuple(cls.target_types) == (nn.Linear,)


def matches(module: nn.Module, types: Sequence[str]) -> bool:
    return layer_type(module) in types


def unsupported_reason(module: nn.Module) -> str | None:
    """Why a module of a known layer type cannot be seen as one matrix, or ``None``."""
    kind = layer_type(module)
    if kind in (CONV1D, CONV2D):
        if module.groups != 1:
            return f"grouped convolution (groups={module.groups})"
        if module.padding_mode != "zeros":
            return f"padding_mode={module.padding_mode!r}"
        if isinstance(module.padding, str) and module.padding != "valid":
            return f"padding={module.padding!r}"
    if kind == EMBEDDING and module.max_norm is not None:
        return "max_norm (the lookup rewrites its weight)"
    return None


def check_layer(method: str, types: Sequence[str], name: str, module: nn.Module) -> None:
    """Raise a one-line :class:`LayerTypeError` unless ``method`` can adapt ``module``."""
    kind = layer_type(module) or type(module).__name__
    if kind not in types:
        raise LayerTypeError(f"{method} cannot adapt {name} ({kind}): its math applies to "
                             f"{', '.join(types)} layers only")
    reason = unsupported_reason(module)
    if reason:
        raise LayerTypeError(f"{method} cannot adapt {name} ({kind}): {reason} is not supported")


def is_quantized(weight: Any) -> bool:
    """Whether ``weight`` is a quantized tensor (a tensor subclass such as torchao's, or integer storage)."""
    if not isinstance(weight, Tensor):
        return False
    return type(weight) not in (Tensor, nn.Parameter) or not weight.is_floating_point()


def dense(weight: Tensor) -> Tensor:
    """``weight`` as a plain floating tensor (dequantized if quantized)."""
    if not is_quantized(weight):
        return weight
    dequantize = getattr(weight, "dequantize", None)
    if dequantize is None:
        raise LayerTypeError(f"quantized weight of type {type(weight).__name__} has no dequantize()")
    return dequantize()


def as_matrix(module: nn.Module) -> nn.Module:
    """``module`` itself for a plain ``nn.Linear``, else a :class:`MatrixView` of it."""
    if isinstance(module, nn.Linear) and not is_quantized(module.weight):
        return module
    return MatrixView(module)


@dataclasses.dataclass
class _Call:
    """One forward in progress: the vectors handed to the methods and how to run the base natively."""

    vectors: Tensor
    native: Callable[[], Tensor]


class MatrixView(nn.Module):
    """A base layer seen as ``y = W x + b`` on vectors (see the module docstring for ``W`` and ``x``).

    ``weight`` and ``bias`` are computed from the live base parameters on every access (views, no
    copies), so merges and ``.to()`` of the model are always seen. The view owns nothing: it is
    neither a submodule nor saved.
    """

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        kind = layer_type(base)
        if kind is None or (kind == LINEAR and not is_quantized(base.weight)):
            raise LayerTypeError(f"no matrix view for {type(base).__name__}")
        object.__setattr__(self, "base", base)
        self.kind = kind
        self.training = base.training
        self._override: dict[str, Tensor | None] = {}
        self._call: _Call | None = None

    # --- W and b ------------------------------------------------------------------------------
    def to_matrix(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        """The base's parameters (its own layout) → ``{"weight": W (d_out × d_in), "bias": b}``."""
        w = dense(params["weight"])
        if self.kind in (GPT2_CONV1D, EMBEDDING):
            w = w.t()
        elif self.kind != LINEAR:
            w = w.reshape(w.shape[0], -1)
        return {**params, "weight": w}

    def from_matrix(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        """Inverse of :meth:`to_matrix`."""
        w = params["weight"]
        if self.kind in (GPT2_CONV1D, EMBEDDING):
            w = w.t()
        elif self.kind != LINEAR:
            w = w.reshape(self.base.weight.shape)
        return {**params, "weight": w}

    @property
    def weight(self) -> Tensor:
        override = self._override.get("weight")
        if override is not None:
            return override
        w = self.to_matrix({"weight": self.base.weight})["weight"]
        self.__dict__["_presented"] = w  # recognised when functional_call hands it back
        return w

    @property
    def bias(self) -> Tensor | None:
        if "bias" in self._override:
            return self._override["bias"]
        return getattr(self.base, "bias", None)

    def __setattr__(self, name: str, value: Any) -> None:
        # torch.func.functional_call swaps "weight"/"bias" in and back out; the swap back hands over
        # the live tensor (or a view of it), which ends the override.
        if name in ("weight", "bias"):
            live = self.base.weight if name == "weight" else getattr(self.base, "bias", None)
            is_live = value is live or (name == "weight" and value is self.__dict__.get("_presented")) or (
                isinstance(value, Tensor) and live is not None and value._base is live)
            if is_live:
                self._override.pop(name, None)
            else:
                self._override[name] = value
            return
        super().__setattr__(name, value)

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):  # type: ignore[override]
        """``weight`` (W, matrix layout) and ``bias`` of the base: what a Linear's own parameters would be."""
        for name, value in (("weight", self.weight), ("bias", self.bias)):
            if value is not None:
                yield prefix + name, value

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    # --- forward ------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        call = self._call
        if call is not None and x is call.vectors and not self._override:
            return call.native()
        return F.linear(x.to(self.weight.dtype) if x.dtype != self.weight.dtype else x, self.weight, self.bias)

    def run(self, fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """``fn`` (the methods' chain, ending at this view) on ``x`` in vector form, then back."""
        vectors, native, fold = self._vectors(x)
        self._call = _Call(vectors, native)
        try:
            y = fn(vectors)
        finally:
            self._call = None
        return fold(y)

    def _vectors(self, x: Tensor) -> tuple[Tensor, Callable[[], Tensor], Callable[[Tensor], Tensor]]:
        base = self.base
        if self.kind in (GPT2_CONV1D, LINEAR):
            return x, lambda: base(x), lambda y: y
        if self.kind == EMBEDDING:
            onehot = F.one_hot(x, base.num_embeddings).to(base.weight.dtype)
            return onehot, lambda: base(x), lambda y: y
        return _conv_vectors(base, x, self.kind == CONV1D)


def _conv_vectors(conv: nn.Module, x: Tensor, one_d: bool
                  ) -> tuple[Tensor, Callable[[], Tensor], Callable[[Tensor], Tensor]]:
    """Patches ``(N, L, in·Πk)`` of ``x``, the native conv as ``(N, L, out)``, and the fold back."""
    if x.dim() != (3 if one_d else 4):
        raise LayerTypeError(f"{type(conv).__name__} adapter needs a batched input, got shape {list(x.shape)}")
    def pair(v: Sequence[int], fill: int) -> tuple[int, ...]:  # Conv1d runs as a (1 × k) Conv2d
        return (fill, v[0]) if one_d else tuple(v)

    x4 = x.unsqueeze(2) if one_d else x
    padding = (0,) * (1 if one_d else 2) if conv.padding == "valid" else conv.padding
    kernel, stride = pair(conv.kernel_size, 1), pair(conv.stride, 1)
    dilation, pad = pair(conv.dilation, 1), pair(padding, 0)
    patches = F.unfold(x4, kernel, dilation=dilation, padding=pad, stride=stride).transpose(1, 2).contiguous()
    spatial = [
        math.floor((size + 2 * p - d * (k - 1) - 1) / s) + 1
        for size, k, s, d, p in zip(x4.shape[2:], kernel, stride, dilation, pad)
    ]
    out_shape = (x.shape[0], conv.out_channels, *(spatial[1:] if one_d else spatial))

    def native() -> Tensor:
        return conv(x).reshape(x.shape[0], conv.out_channels, -1).transpose(1, 2).contiguous()

    def fold(y: Tensor) -> Tensor:
        return y.transpose(1, 2).reshape(out_shape)

    return patches, native, fold


def tied_partners(model: nn.Module, name: str, module: nn.Module) -> list[str]:
    """Other modules of ``model`` whose ``weight`` is the very tensor of ``module`` (tied embeddings)."""
    w = getattr(module, "weight", None)
    if not isinstance(w, Tensor):
        return []
    out = []
    for other_name, other in model.named_modules():
        if other is module or other_name == name or other_name.endswith(".base"):
            continue
        if getattr(other, "_peftatlas_wrapper", False):
            other = other.base
            if other is module:
                continue
        if getattr(other, "weight", None) is w:
            out.append(other_name)
    return out


def select_targets(cls: Any, model: nn.Module, targets: str | Sequence[str], heads: Sequence[str],
                   exclude: str | Sequence[str] | None) -> list[str]:
    """The modules ``targets`` selects for method ``cls``; a one-line error for a type it cannot adapt.

    ``"all-linear"`` takes the Linear-like layers (``nn.Linear``, GPT-2's ``Conv1D``) the method
    accepts, never convolutions or embeddings (as PEFT); named targets may be any type in
    ``cls.layer_types``.
    """
    from .targeting import TargetError, match_targets

    if not adapts_as_matrix(cls):
        return match_targets(model, targets, cls.target_types, heads, exclude, cls.can_adapt)
    allowed = tuple(cls.layer_types)
    if targets in ("all-linear", "all"):
        broad = tuple(t for t in allowed if t in LINEAR_LIKE)
        present = tuple({type(m) for _, m in model.named_modules() if layer_type(m) in broad}) or (nn.Linear,)
        return match_targets(model, targets, present, heads, exclude,
                             lambda m: unsupported_reason(m) is None and cls.can_adapt(as_matrix(m)))
    known = tuple({type(m) for _, m in model.named_modules() if layer_type(m) is not None}) or (nn.Linear,)
    chosen = match_targets(model, targets, known, heads, exclude)  # a type outside LAYER_TYPES fails here
    modules = dict(model.named_modules())
    for n in chosen:
        check_layer(cls.name, allowed, n, modules[n])
        if not cls.can_adapt(as_matrix(modules[n])):
            raise TargetError(f"{cls.name} cannot adapt {n} ({layer_type(modules[n])}): its shape does not fit")
    return chosen
