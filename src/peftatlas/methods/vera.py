"""VeRA: vector-based random matrix adaptation (Kopiczko, Blankevoort, Asano, ICLR 2024).

Hypothesis: random frozen subspaces shared by all layers suffice; each layer only needs to learn
per-dimension gains on them.

Pseudocode::

    A ~ KaimingUniform(r × max d_in), B ~ KaimingUniform(max d_out × r)   # frozen, shared, from a seed
    per layer:  b ← 0 ∈ R^{d_out},  d ← d_init·1 ∈ R^r                    # trainable
    y = W0 x + b ⊙ (B[:d_out] (d ⊙ (A[:, :d_in] x)))                      # per token: r·(d_in + d_out)
      = (W0 + ΔW) x,  ΔW = diag(b) B[:d_out] diag(d) A[:, :d_in]          # dense: r·d_in·d_out per call
    merge: W ← W0 + ΔW

A and B are regenerated bit-identically from ``projection_seed`` with a CPU generator, so the
adapter file stores only b and d (d_out + r numbers per layer). The draw order and arithmetic match
HF PEFT's VeRA (``projection_prng_key``), so the same seed gives the same bases bit for bit there.

Fast paths: the gain b is folded into the frozen basis, ``B_b = diag(b) B`` (d_out × r, tiny), and
the update is added to the base output by one GEMM, ``y = addmm(W0 x, d ⊙ (A x), B_bᵀ)`` (in place
in inference). In training the fold costs a d_out × r GEMM for ``∂L/∂B_b``; above
:data:`FOLD_MAX_RANK` ``y = W0 x + b ⊙ (B (d ⊙ A x))`` (one ``addcmul``) is cheaper: it gets
``∂L/∂b`` from one pass over the saved product (measured at r = 256 on the small Llama: 1.09× →
1.02× PEFT's step). Both cost r·(d_in + d_out) per token, which is more than the base layer's
d_in·d_out once r > d_in·d_out / (d_in + d_out) — VeRA's shared r is routinely wider than the layer.
The **dense path** then builds ``ΔW = (b ⊙ B)(d ⊙ A)`` once per call (r·d_in·d_out, independent of
the token count) and applies it at the base layer's price: merged on the fly, ``y = x (W0 + ΔW)ᵀ +
bias``, when the adapter sits directly on a plain ``nn.Linear`` (``base_fn`` is the layer itself)
and no dropout is active; otherwise through ``base_fn``, ``y = base_fn(x) + x ΔWᵀ`` (Conv1D, conv,
embedding views, quantized bases, stacked adapters). :func:`dense_is_cheaper` chooses per call from
the shapes alone (tokens, r, d_in, d_out, training or not), so the choice is deterministic. Mixed
batches compute ``A x`` and ``(·) Bᵀ`` once for all rows (the bases are shared) and gather only
each row's vectors b and d.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import serving
from ..core.layer_types import is_quantized
from ..core.method import BaseFn, LayerAdapter, MethodError, register
from ..serving import as_rows, bank, cached_bank, row_index
from .lora import add_lowrank, compute_dtype

# Training keeps b folded into the basis up to this rank. The fold's extra cost is a GEMM of
# 2r flops per output element; the alternative's is ~3 passes over a tokens × d_out tensor. They
# break even near r ≈ 60 on a CPU (measured: fold 3–8% faster at r = 51 on MiniLM shapes, slower
# at r = 256 on the small Llama).
FOLD_MAX_RANK = 64


def dense_is_cheaper(tokens: int, r: int, d_in: int, d_out: int, *, grad: bool, merged: bool) -> bool:
    """Whether building ``ΔW = diag(b) B diag(d) A`` beats the per-token path, in multiply-adds.

    Costs beyond the base layer's own (forward, plus backward when ``grad``), T = ``tokens``:

    * per token (``b ⊙ B (d ⊙ A x)``): ``T·r·(d_in + d_out)`` forward; A and B are frozen, so the
      backward is the same chain once more (``∂(A x)`` and ``∂x``): ×2 with ``grad``.
    * dense: building ``ΔW`` costs ``r·d_in·d_out``; its backward to b and d costs two such GEMMs
      (``G (d ⊙ A)ᵀ`` and ``(b ⊙ B)ᵀ G``): ×3 with ``grad``. Applying it:

      - ``merged`` (``y = x (W0 + ΔW)ᵀ + bias``, the base's GEMM itself): nothing forward; the
        backward adds ``∂ΔW = gᵀ x`` (``T·d_in·d_out``), the ``∂x`` GEMM is the base's own;
      - additive (``y = base_fn(x) + x ΔWᵀ``): ``T·d_in·d_out`` forward; backward ``∂x`` and
        ``∂ΔW``: ×3 with ``grad``.

    Dense when strictly cheaper. E.g. DINOv2-S q (384², r = 649, T = 3,940, training, merged):
    3.9·10⁹ per token vs 0.87·10⁹ dense; SmolLM2 (576², r = 541, T = 512, training, merged):
    0.64·10⁹ vs 0.71·10⁹ (the per-token path stays). Measured on one CPU thread (indicative): the
    DINOv2-S layer 3.1× faster; the SmolLM2 layer's per-token/dense time 0.61 / 0.91 / 1.56 at
    T = 256 / 512 / 1,024, where this count predicts 0.51 / 0.90 / 1.45.
    """
    per_token = tokens * r * (d_in + d_out) * (2 if grad else 1)
    build = r * d_in * d_out * (3 if grad else 1)
    apply = tokens * d_in * d_out * ((1 if grad else 0) if merged else (3 if grad else 1))
    return build + apply < per_token


def kaiming_uniform_from_seed(rows: int, cols: int, generator: torch.Generator) -> Tensor:
    """Kaiming-uniform with gain √2 and fan_in = cols: U(−√(6/cols), √(6/cols)), on the CPU.

    The bound is evaluated as √3 · (√2 / √cols) and drawn with ``uniform_`` — the same arithmetic
    as HF PEFT, so both libraries produce identical bits from one seed.
    """
    bound = math.sqrt(3.0) * (math.sqrt(2.0) / math.sqrt(cols))
    return torch.empty(rows, cols, dtype=torch.float32).uniform_(-bound, bound, generator=generator)


class VeRAProjections(nn.Module):
    """The frozen shared bases; non-persistent buffers (never saved, regenerated from the seed)."""

    def __init__(self, r: int, max_in: int, max_out: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator(device="cpu").manual_seed(seed)
        self.register_buffer("A", kaiming_uniform_from_seed(r, max_in, g), persistent=False)
        self.register_buffer("B", kaiming_uniform_from_seed(max_out, r, g), persistent=False)


@register("vera")
class VeRA(LayerAdapter):
    family = "random-subspace"
    summary = "Frozen shared random A, B; per-layer trainable scaling vectors b (d_out) and d (r)."
    formula = "d_out + r"
    size_knob: ClassVar[str | None] = "r"
    test_config: ClassVar[dict[str, Any]] = {"r": 16}
    # r wider than every tiny layer (as in the arena, r = 649 on 384-wide DINOv2-S): the dense path
    test_variants: ClassVar[dict[str, dict[str, Any]]] = {"wide": {"r": 48}}

    @dataclasses.dataclass
    class Config:
        r: int = 256
        d_init: float = 0.1
        projection_seed: int = 0
        dropout: float = 0.0

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        if cfg.r < 1:
            raise MethodError(f"vera: rank r must be ≥ 1, got {cfg.r}")

    @classmethod
    def build_shared(cls, targets: dict[str, nn.Module], cfg: Config) -> nn.Module:
        shapes = [cls.dims(m) for m in targets.values()] or [(1, 1)]
        max_out = max(s[0] for s in shapes)
        max_in = max(s[1] for s in shapes)
        return VeRAProjections(cfg.r, max_in, max_out, cfg.projection_seed)

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        if shared is None:
            raise MethodError("vera needs its shared projections; use attach()/add_adapter()")
        d_out, d_in = self.dims(base)
        self.d_out, self.d_in = d_out, d_in
        object.__setattr__(self, "_base", base)  # plain reference: the layer this adapter was built on
        self.vera_b = nn.Parameter(torch.zeros(d_out))
        self.vera_d = nn.Parameter(torch.full((cfg.r,), float(cfg.d_init)))
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def _bases(self) -> tuple[Tensor, Tensor]:
        shared = self.shared
        assert shared is not None
        return shared.A[:, : self.d_in], shared.B[: self.d_out, :]

    def _hd(self, x: Tensor) -> Tensor:
        """``d ⊙ (A dropout(x))`` in the compute dtype: (..., r)."""
        A, _ = self._bases()
        dt = compute_dtype(x, self.vera_d)
        return F.linear(self.dropout(x.to(dt)), A.to(dt)) * self.vera_d.to(dt)

    def _dense_delta(self, dt: torch.dtype) -> Tensor:
        """``ΔW = (b ⊙ B)(d ⊙ A)`` (d_out × d_in) in dtype ``dt``, differentiable in b and d."""
        A, B = self._bases()
        return (self.vera_b.to(dt)[:, None] * B.to(dt)) @ (self.vera_d.to(dt)[:, None] * A.to(dt))

    def _merges_on_the_fly(self, base_fn: BaseFn) -> bool:
        """Whether ``base_fn`` is exactly ``x W0ᵀ + bias`` of a plain ``nn.Linear`` we may fold ΔW into
        (no other adapter before us, not a matrix view or quantized weight, no dropout on our side)."""
        base = self._base
        return (base_fn is base and type(base) is nn.Linear and not is_quantized(base.weight)
                and not (self.training and isinstance(self.dropout, nn.Dropout)))

    def forward(self, x: Tensor, base_fn: BaseFn) -> Tensor:
        grad = torch.is_grad_enabled() and (self.vera_b.requires_grad or self.vera_d.requires_grad
                                             or x.requires_grad)
        merged = self._merges_on_the_fly(base_fn)
        tokens = x.numel() // max(self.d_in, 1)
        if dense_is_cheaper(tokens, self.cfg.r, self.d_in, self.d_out, grad=grad, merged=merged):
            return self._dense_forward(x, base_fn, merged)
        _, B = self._bases()
        hd = self._hd(x)
        y = base_fn(x)
        if torch.is_grad_enabled() and self.vera_b.requires_grad and hd.shape[-1] > FOLD_MAX_RANK:
            # training at large r: ∂L/∂b = Σ_tokens g ⊙ (B hd) is one pass over the saved product,
            # where the folded form needs the d_out × r GEMM gᵀ hd for ∂L/∂(diag(b) B)
            u = F.linear(hd, B.to(hd.dtype))
            return torch.addcmul(y, u.to(y.dtype), self.vera_b.to(y.dtype))
        return add_lowrank(y, hd, self.vera_b[:, None] * B, reuse_y=True)

    def _dense_forward(self, x: Tensor, base_fn: BaseFn, merged: bool) -> Tensor:
        """``(W0 + ΔW) x + bias`` with ``ΔW`` built once (see :func:`dense_is_cheaper`).

        ``merged``: one GEMM with ``W0 + ΔW`` (the base ``nn.Linear``'s own); otherwise
        ``base_fn(x) + dropout(x) ΔWᵀ`` (one extra GEMM of the base's size, in place in inference).
        """
        dt = compute_dtype(x, self.vera_d)
        delta = self._dense_delta(dt)
        if merged:
            base = self._base
            bias = None if base.bias is None else base.bias.to(dt)
            return F.linear(x.to(dt), base.weight.to(dt) + delta, bias)
        y = base_fn(x)
        return add_lowrank(y, self.dropout(x.to(dt)), delta, reuse_y=True)

    def delta_output(self, x: Tensor) -> Tensor:
        _, B = self._bases()
        hd = self._hd(x)
        return F.linear(hd, B.to(hd.dtype)) * self.vera_b.to(hd.dtype)

    def delta_weight(self, weight: Tensor) -> Tensor:
        A, B = self._bases()
        return ((self.vera_b[:, None] * B) @ (self.vera_d[:, None] * A)).to(weight.dtype)

    def reference_forward(self, x: Tensor, base: nn.Module) -> Tensor:
        """Dense oracle: ``(W0 + diag(b) B diag(d) A) x + bias`` with ``ΔW`` built in float64."""
        A, B = (t.detach().double() for t in self._bases())
        delta = torch.diag(self.vera_b.detach().double()) @ B @ torch.diag(self.vera_d.detach().double()) @ A
        bias = None if base.bias is None else base.bias.detach().float()
        return F.linear(x.float(), (base.weight.detach().double() + delta).float(), bias)

    @staticmethod
    def mixed_batch_forward(layer: nn.Module, x: Tensor, rows: list[str], present: list[str]) -> Tensor | None:
        """Each row through its own VeRA: shared ``A x`` and ``(·) Bᵀ``, per-row vectors d and b.

        Returns ``None`` (the engine then groups rows by adapter) when the present adapters do not
        share their random bases (different seeds, ranks or shapes).
        """
        only = serving.single_adapter(rows, present)
        if only is not None:
            return layer.adapters[only](x, layer.base)
        adapters = [layer.adapters[n] for n in present]
        first = adapters[0]
        key = _bases_key(first)
        if any(_bases_key(a) != key for a in adapters[1:]):
            return None
        A, B = first._bases()
        y = layer.base(x)
        dt = compute_dtype(x, first.vera_d)
        idx = row_index(rows, present, x.device)
        d_bank = cached_bank(layer, ("vera_d", tuple(present), dt), [a.vera_d for a in adapters],
                             lambda: bank([a.vera_d for a in adapters], dt))
        b_bank = cached_bank(layer, ("vera_b", tuple(present), dt), [a.vera_b for a in adapters],
                             lambda: bank([a.vera_b for a in adapters], dt))
        d_rows = d_bank.index_select(0, idx)[:, None, :]  # (batch, 1, r)
        b_rows = b_bank.index_select(0, idx)[:, None, :]  # (batch, 1, d_out)
        batch = len(rows)
        h = F.linear(as_rows(x.to(dt), batch), A.to(dt)) * d_rows          # (batch, M, r)
        u = F.linear(h, B.to(dt))                                          # (batch, M, d_out)
        out = torch.addcmul(as_rows(y, batch).to(dt), u, b_rows)
        return out.to(y.dtype).view(y.shape)

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Config) -> int:
        return cls.dims(base)[0] + cfg.r


def _bases_key(adapter: VeRA) -> tuple:
    """What determines an adapter's random bases: same key ⇒ bit-identical A and B."""
    shared = adapter.shared
    assert shared is not None
    return (adapter.cfg.r, adapter.cfg.projection_seed, tuple(shared.A.shape), tuple(shared.B.shape),
            adapter.d_in, adapter.d_out, shared.A.dtype, shared.A.device)
