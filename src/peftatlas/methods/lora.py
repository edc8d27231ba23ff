r"""LoRA (Hu et al., 2022) with the rsLoRA scaling option (Kalajdzievski, 2023).

Hypothesis: the fine-tuning update of each weight matrix has low intrinsic rank.

Pseudocode::

    A ~ KaimingUniform(r × d_in);  B ← 0 (d_out × r);  s = α / r   (rsLoRA: α / √r)
    y = W0 x + s · B (A dropout(x))
    merge: W ← W0 + s · B A
    with bias=True (PEFT's bias="lora_only"), on a layer that has a bias b0:
        Δb ← 0 (d_out);  y = W0 x + b0 + Δb + s · B (A dropout(x));  merge: b ← b0 + Δb
    per layer (PEFT's rank_pattern / alpha_pattern): r, α of the first pattern P whose
    regex matches the layer name as ``(.*\.)?P$``; the adapter-wide r, α otherwise

Fast path: ``h = s·(A x)`` is tiny (r numbers per token), so the scale is applied there and the
update is added by one fused GEMM, ``y = addmm(W0 x, h, Bᵀ)``, instead of a separate scale and add
over the full ``d_out``-wide output (and their backward). The adapter computes in the activations'
dtype (fp32 master weights cast down, as autocast does), so a bf16 model never upcasts its
activations. Mixed batches (:mod:`peftatlas.serving`) group rows by adapter and run every
group's update with one ``bmm`` + ``baddbmm_`` (or, for very unbalanced batches, gather one
``(A, B)`` per row) — a constant number of ops however many adapters the batch uses.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import serving
from ..core.method import BaseFn, LayerAdapter, MethodError, register


def pattern_value(patterns: dict[str, Any], layer: str, default: Any) -> Any:
    r"""The value of the first pattern ``P`` (a regex) with ``re.match(r"(.*\.)?(P)$", layer)``, else ``default``."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", layer):
            return value
    return default


def compute_dtype(x: Tensor, param: Tensor) -> torch.dtype:
    """The dtype adapter math runs in: the activations' (floating) dtype, else the parameter's."""
    return x.dtype if x.is_floating_point() else param.dtype


def add_lowrank(y: Tensor, h: Tensor, B: Tensor, *, reuse_y: bool = False) -> Tensor:
    """``y + h Bᵀ`` as one fused GEMM over the flattened leading dims.

    ``y``: (..., d_out), ``h``: (..., r), ``B``: (d_out, r). Under autocast ``addmm`` picks the
    autocast dtype itself; otherwise ``h`` and ``B`` are cast to ``y``'s dtype (tiny tensors).
    ``reuse_y=True`` (the caller owns ``y``, e.g. the base layer's fresh output): without autograd
    (inference) the update is added into ``y`` in place, since copying a ``tokens × d_out`` tensor
    costs more than the update itself.
    """
    d_out = y.shape[-1]
    autocast = torch.is_autocast_enabled(y.device.type)
    if not autocast:
        h, B = h.to(y.dtype), B.to(y.dtype)
    y2, h2 = y.reshape(-1, d_out), h.reshape(-1, h.shape[-1])
    needs_grad = torch.is_grad_enabled() and (y.requires_grad or h.requires_grad or B.requires_grad)
    if reuse_y and not autocast and not needs_grad:
        return y2.addmm_(h2, B.t()).view(y.shape)  # inference: add into y, no copy of the output
    return torch.addmm(y2, h2, B.t()).view(y.shape)


@register("lora")
class LoRA(LayerAdapter):
    family = "low-rank"
    summary = "ΔW = s·BA with rank r; B=0 at init."
    formula = "r·(d_in + d_out) (+ d_out per biased layer with bias=True)"
    size_knob: ClassVar[str | None] = "r"
    rank_within_width = True
    test_config: ClassVar[dict[str, Any]] = {"r": 4, "alpha": 8}
    test_variants: ClassVar[dict[str, dict[str, Any]]] = {"bias": {"bias": True}}

    @dataclasses.dataclass
    class Config:
        r: int = 8
        alpha: float = 16.0
        dropout: float = 0.0
        rslora: bool = False
        rank_pattern: dict[str, int] = dataclasses.field(default_factory=dict)  # layer-name regex → r
        alpha_pattern: dict[str, float] = dataclasses.field(default_factory=dict)  # layer-name regex → α
        bias: bool = False  # also train Δb on each adapted layer that has a bias (PEFT's bias="lora_only")

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        if cfg.r < 1 or any(r < 1 for r in cfg.rank_pattern.values()):
            raise MethodError(f"lora: rank r must be ≥ 1, got {cfg.r} (rank_pattern {cfg.rank_pattern})")
        if not 0.0 <= cfg.dropout < 1.0:
            raise MethodError(f"lora: dropout must be in [0, 1), got {cfg.dropout}")

    @classmethod
    def layer_configs(cls, bases: dict[str, nn.Module], cfg: Config) -> dict[str, Any]:
        """Each layer's r and α after ``rank_pattern`` / ``alpha_pattern`` (PEFT's matching rule)."""
        if not cfg.rank_pattern and not cfg.alpha_pattern:
            return {n: cfg for n in bases}
        return {n: dataclasses.replace(cfg, r=int(pattern_value(cfg.rank_pattern, n, cfg.r)),
                                       alpha=float(pattern_value(cfg.alpha_pattern, n, cfg.alpha)))
                for n in bases}

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        d_out, d_in = self.dims(base)
        self.lora_A = nn.Parameter(torch.empty(cfg.r, d_in))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(d_out, cfg.r))
        self.scale = cfg.alpha / (math.sqrt(cfg.r) if cfg.rslora else cfg.r)
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.bias_delta = nn.Parameter(torch.zeros(d_out)) if self.trains_bias(base, cfg) else None

    @staticmethod
    def trains_bias(base: nn.Module, cfg: Config) -> bool:
        """Whether this layer gets a trained ``Δb``: ``bias=True`` and the layer has a bias."""
        return cfg.bias and getattr(base, "bias", None) is not None

    def _add_bias(self, y: Tensor) -> Tensor:
        """``y + Δb`` (``y`` unchanged without a trained bias)."""
        return y if self.bias_delta is None else y + self.bias_delta.to(y.dtype)

    def _h(self, x: Tensor) -> Tensor:
        """``s · A dropout(x)`` in the compute dtype: (..., r)."""
        dt = compute_dtype(x, self.lora_A)
        return F.linear(self.dropout(x.to(dt)), self.lora_A.to(dt)) * self.scale

    def forward(self, x: Tensor, base_fn: BaseFn) -> Tensor:
        return self._add_bias(add_lowrank(base_fn(x), self._h(x), self.lora_B, reuse_y=True))

    def delta_output(self, x: Tensor) -> Tensor:
        h = self._h(x)
        return self._add_bias(F.linear(h, self.lora_B.to(h.dtype)))

    def delta_weight(self, weight: Tensor) -> Tensor:
        return (self.lora_B @ self.lora_A * self.scale).to(weight.dtype)

    def merged_params(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        """``W0 + s·B A`` and, with a trained bias, ``b0 + Δb`` (both added in fp32, cast back)."""
        merged = super().merged_params(params)
        if self.bias_delta is not None:
            b = params["bias"]
            merged["bias"] = (b.float() + self.bias_delta.detach().float()).to(b.dtype)
        return merged

    def reference_forward(self, x: Tensor, base: nn.Module) -> Tensor:
        """Dense oracle: ``(W0 + s·B A) x + b0 (+ Δb)`` with ``ΔW`` built explicitly in fp64."""
        delta = self.lora_B.detach().double() @ self.lora_A.detach().double() * self.scale
        bias = None if base.bias is None else base.bias.detach().double()
        if self.bias_delta is not None:
            bias = bias + self.bias_delta.detach().double()
        return F.linear(x.float(), (base.weight.detach().double() + delta).float(),
                        None if bias is None else bias.float())

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Config) -> int:
        """``r·(d_in + d_out)``, plus ``d_out`` where a bias is trained."""
        d_out, d_in = cls.dims(base)
        return cfg.r * (d_in + d_out) + (d_out if cls.trains_bias(base, cfg) else 0)

    @staticmethod
    def mixed_batch_forward(layer: nn.Module, x: Tensor, rows: list[str], present: list[str]) -> Tensor:
        """Each row through its own LoRA in a constant number of batched ops (:mod:`peftatlas.serving`)."""
        only = serving.single_adapter(rows, present)
        if only is not None:
            return layer.adapters[only](x, layer.base)
        adapters = [layer.adapters[n] for n in present]
        layout = serving.groups(rows, present)
        if serving.strategy(layout, len(rows)) == "grouped":
            y = _mixed_grouped(layer, present, adapters, x, layout)
        else:
            y = _mixed_gather(layer, present, adapters, x, rows)
        return _add_row_biases(y, adapters, rows, present)


def _add_row_biases(y: Tensor, adapters: list[LoRA], rows: list[str], present: list[str]) -> Tensor:
    """Row ``i`` of ``y`` plus the trained ``Δb`` of its adapter (zero for base rows and for adapters
    without one); ``y`` itself when no adapter trains a bias."""
    if all(a.bias_delta is None for a in adapters):
        return y
    d_out = y.shape[-1]
    deltas = [y.new_zeros(d_out) if a.bias_delta is None else a.bias_delta for a in adapters]
    per_row = serving.bank(deltas, y.dtype).index_select(0, serving.row_index(rows, present, y.device))
    return (serving.as_rows(y, len(rows)) + per_row.unsqueeze(1)).view(y.shape)


def _banks(layer: nn.Module, present: list[str], adapters: list[LoRA], dt: torch.dtype) -> tuple[Tensor, Tensor]:
    """``(A_1 … A_k, 0)`` and ``(s_1 B_1 … s_k B_k, 0)``; ranks zero-padded to the largest (exact).

    Cached on the layer between inference calls (:func:`peftatlas.serving.cached_bank`).
    """
    tag = (tuple(present), tuple(a.scale for a in adapters), dt)
    A = serving.cached_bank(layer, ("lora_A", *tag), [a.lora_A for a in adapters],
                            lambda: serving.bank([a.lora_A for a in adapters], dt))
    B = serving.cached_bank(layer, ("lora_B", *tag), [a.lora_B for a in adapters],
                            lambda: serving.bank([a.lora_B * a.scale for a in adapters], dt))
    return A, B


def _mixed_grouped(layer: nn.Module, present: list[str], adapters: list[LoRA], x: Tensor,
                   layout: serving.Groups) -> Tensor:
    """Rows grouped by adapter (padded to equal groups): base once, one ``bmm`` + ``baddbmm_`` for all groups."""
    dt = compute_dtype(x, adapters[0].lora_A)
    A, B = _banks(layer, present, adapters, dt)
    slots = torch.tensor(layout.slots, device=x.device)
    A, B = A.index_select(0, slots), B.index_select(0, slots)  # (groups, r, d_in), (groups, d_out, r)
    xs = x if layout.order is None else serving.take_rows(x, layout.order)
    ys = layer.base(xs)
    n_groups = len(layout.slots)
    h = torch.bmm(xs.reshape(n_groups, -1, xs.shape[-1]).to(dt), A.transpose(1, 2))  # (groups, G·M, r)
    ys.view(n_groups, -1, ys.shape[-1]).baddbmm_(h.to(ys.dtype), B.transpose(1, 2).to(ys.dtype))
    return ys if layout.pos is None else serving.take_rows(ys, layout.pos)


def _mixed_gather(layer: nn.Module, present: list[str], adapters: list[LoRA], x: Tensor, rows: list[str]) -> Tensor:
    """One ``(A, s·B)`` per row gathered from the bank, two batched matmuls over the rows."""
    y = layer.base(x)
    dt = compute_dtype(x, adapters[0].lora_A)
    idx = serving.row_index(rows, present, x.device)
    A, B = (t.index_select(0, idx) for t in _banks(layer, present, adapters, dt))  # (batch, r, d_in), (batch, d_out, r)
    batch = len(rows)
    h = torch.bmm(serving.as_rows(x.to(dt), batch), A.transpose(1, 2))  # (batch, M, r)
    out = torch.baddbmm(serving.as_rows(y, batch).to(dt), h, B.transpose(1, 2))
    return out.to(y.dtype).view(y.shape)
