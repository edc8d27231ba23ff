"""VeRA: vector-based random matrix adaptation (Kopiczko, Blankevoort, Asano, ICLR 2024).

Hypothesis: random frozen subspaces shared by all layers suffice; each layer only needs to learn
per-dimension gains on them.

Pseudocode::

    A ~ KaimingUniform(r × max d_in), B ~ KaimingUniform(max d_out × r)   # frozen, shared, from a seed
    per layer:  b ← 0 ∈ R^{d_out},  d ← d_init·1 ∈ R^r                    # trainable
    y = W0 x + b ⊙ (B[:d_out] (d ⊙ (A[:, :d_in] x)))
    merge: W ← W0 + diag(b) B[:d_out] diag(d) A[:, :d_in]

A and B are regenerated bit-identically from ``projection_seed`` with a CPU generator, so the
adapter file stores only b and d (d_out + r numbers per layer). The draw order and arithmetic match
HF PEFT's VeRA (``projection_prng_key``), so the same seed gives the same bases bit for bit there.

Fast paths: the gain b is folded into the frozen basis, ``B_b = diag(b) B`` (d_out × r, tiny), and
the update is added to the base output by one GEMM, ``y = addmm(W0 x, d ⊙ (A x), B_bᵀ)`` (in place
in inference). In training the fold costs a d_out × r GEMM for ``∂L/∂B_b``; above
:data:`FOLD_MAX_RANK` ``y = W0 x + b ⊙ (B (d ⊙ A x))`` (one ``addcmul``) is cheaper: it gets
``∂L/∂b`` from one pass over the saved product (measured at r = 256 on the small Llama: 1.09× →
1.02× PEFT's step). Mixed batches compute ``A x`` and ``(·) Bᵀ`` once for all rows (the bases are
shared) and gather only each row's vectors b and d.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import serving
from ..core.method import BaseFn, LayerAdapter, MethodError, register
from ..serving import as_rows, bank, cached_bank, row_index
from .lora import add_lowrank, compute_dtype

# Training keeps b folded into the basis up to this rank. The fold's extra cost is a GEMM of
# 2r flops per output element; the alternative's is ~3 passes over a tokens × d_out tensor. They
# break even near r ≈ 60 on a CPU (measured: fold 3–8% faster at r = 51 on MiniLM shapes, slower
# at r = 256 on the small Llama).
FOLD_MAX_RANK = 64


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

    def forward(self, x: Tensor, base_fn: BaseFn) -> Tensor:
        _, B = self._bases()
        hd = self._hd(x)
        y = base_fn(x)
        if torch.is_grad_enabled() and self.vera_b.requires_grad and hd.shape[-1] > FOLD_MAX_RANK:
            # training at large r: ∂L/∂b = Σ_tokens g ⊙ (B hd) is one pass over the saved product,
            # where the folded form needs the d_out × r GEMM gᵀ hd for ∂L/∂(diag(b) B)
            u = F.linear(hd, B.to(hd.dtype))
            return torch.addcmul(y, u.to(y.dtype), self.vera_b.to(y.dtype))
        return add_lowrank(y, hd, self.vera_b[:, None] * B, reuse_y=True)

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
