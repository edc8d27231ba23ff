"""VB-LoRA: extreme parameter-efficient fine-tuning with a vector bank (Y. Li, S. Han, et al.,
NeurIPS 2024, arXiv:2405.15179).

Hypothesis: the low-rank factors of all layers are redundant with each other — every length-L piece
of every A and B can be a sparse (top-k) mixture of a small bank of vectors shared model-wide.

Pseudocode::

    bank ∈ R^{N × L} ~ U(−0.02, 0.02), shared by every layer, trained     (built once: build_shared)
    per layer, trained logits:  ℓ_A ∈ R^{r × d_in/L × N},  ℓ_B ∈ R^{d_out/L × r × N}   ~ N(0, 0.1²)
    piece(ℓ) = Σ_{j ∈ topk(ℓ)} softmax(ℓ[topk])_j · bank[j]                 # a length-L vector
    A = [piece(ℓ_A[i, g])]_g  (r × d_in),   B[:, i] = [piece(ℓ_B[g, i])]_g  (d_out × r)
    ΔW = B A − B₀ A₀        B₀ A₀ = the product at init, frozen   (init="paper": ΔW = B A, not a no-op)
    y = W0 x + B (A x) − B₀ (A₀ x)

The default subtracts the initial product so training starts from W0 exactly, as every method here
does; B₀, A₀ are regenerated at load from the seeds (the bank from ``bank_seed``, the logits from the
adapter's init seed), so they are never stored. The adapter file holds the logits and the bank.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.method import BaseFn, LayerAdapter, MethodError, register
from ._factors import dense_linear, require
from .lora import add_lowrank


class VectorBank(nn.Module):
    """The model-wide trainable bank of N vectors of length L."""

    def __init__(self, num_vectors: int, length: int, bound: float, seed: int) -> None:
        super().__init__()
        g = torch.Generator(device="cpu").manual_seed(seed)
        self.bank = nn.Parameter(torch.rand(num_vectors, length, generator=g) * (2 * bound) - bound)


def mix_pieces(logits: Tensor, bank: Tensor, k: int) -> Tensor:
    """Σ over the top-k logits of softmax-weighted bank vectors: (..., N) → (..., L)."""
    top, index = logits.topk(k, dim=-1)
    return (F.softmax(top, dim=-1).unsqueeze(-1) * bank[index]).sum(-2)


@register("vblora")
class VBLoRA(LayerAdapter):
    family = "random-subspace"
    summary = "LoRA factors assembled from top-k mixtures of a model-wide shared vector bank."
    formula = "r·N·(d_in + d_out)/L per layer, plus N·L shared"
    size_knob: ClassVar[str | None] = "r"
    test_config: ClassVar[dict[str, Any]] = {"r": 2, "num_vectors": 16, "vector_length": 4}

    @dataclasses.dataclass
    class Config:
        r: int = 4
        num_vectors: int = 256
        vector_length: int = 128  # the paper / HF PEFT use 256; 128 also divides 384-wide models (MiniLM)
        topk: int = 2
        init_logits_std: float = 0.1
        init_bank_bound: float = 0.02
        bank_seed: int = 0
        init: str = "noop"  # "noop" (subtract the initial product) or "paper"

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        require(cfg.r >= 1, "vblora", f"rank r must be ≥ 1, got {cfg.r}")
        require(cfg.vector_length >= 1, "vblora", f"vector_length must be ≥ 1, got {cfg.vector_length}")
        require(1 <= cfg.topk <= cfg.num_vectors, "vblora",
                f"topk must be in [1, num_vectors={cfg.num_vectors}], got {cfg.topk}")
        require(cfg.init in ("noop", "paper"), "vblora", f"init must be 'noop' or 'paper', got {cfg.init!r}")

    @classmethod
    def check_layer(cls, base: nn.Module, cfg: Config) -> tuple[int, int]:
        d_out, d_in = cls.dims(base)
        L = cfg.vector_length
        require(d_in % L == 0 and d_out % L == 0, "vblora",
                f"vector_length={L} must divide both d_in={d_in} and d_out={d_out} of this layer")
        return d_out, d_in

    @classmethod
    def build_shared(cls, targets: dict[str, nn.Module], cfg: Config) -> nn.Module:
        return VectorBank(cfg.num_vectors, cfg.vector_length, cfg.init_bank_bound, cfg.bank_seed)

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        if shared is None:
            raise MethodError("vblora needs its shared vector bank; use attach()/add_adapter()")
        d_out, d_in = self.check_layer(base, cfg)
        L, N, std = cfg.vector_length, cfg.num_vectors, cfg.init_logits_std
        self.logits_A = nn.Parameter(torch.randn(cfg.r, d_in // L, N) * std)
        self.logits_B = nn.Parameter(torch.randn(d_out // L, cfg.r, N) * std)
        A0, B0 = self._factors()
        if cfg.init == "paper":
            A0, B0 = A0.new_zeros(0, d_in), B0.new_zeros(d_out, 0)
        self.register_buffer("A0", A0.detach().clone(), persistent=False)
        self.register_buffer("B0", B0.detach().clone(), persistent=False)

    def _factors(self) -> tuple[Tensor, Tensor]:
        bank = self.shared.bank  # type: ignore[union-attr]
        k = self.cfg.topk
        A = mix_pieces(self.logits_A, bank, k).flatten(1)  # (r, d_in)
        B = mix_pieces(self.logits_B, bank, k).transpose(1, 2).flatten(0, 1)  # (d_out, r)
        return A, B

    def _stacked(self) -> tuple[Tensor, Tensor]:
        """[A; A₀] and [B, −B₀]: the update and its frozen initial value in one pair of matmuls."""
        A, B = self._factors()
        return torch.cat([A, self.A0.to(A)], dim=0), torch.cat([B, -self.B0.to(B)], dim=1)

    def forward(self, x: Tensor, base_fn: BaseFn) -> Tensor:
        """``W0 x + [B, −B₀] ([A; A₀] x)``, the second product fused into the base output (one ``addmm``)."""
        A, B = self._stacked()
        return add_lowrank(base_fn(x), F.linear(x.to(A.dtype), A), B, reuse_y=True)

    def delta_output(self, x: Tensor) -> Tensor:
        A, B = self._stacked()
        return F.linear(F.linear(x.to(A.dtype), A), B)

    def delta_weight(self, weight: Tensor) -> Tensor:
        A, B = self._stacked()
        return (B @ A).to(weight.dtype)

    def reference_forward(self, x: Tensor, base: nn.Module) -> Tensor:
        """Each piece mixed explicitly (sort, exp-normalise the k largest logits), ΔW = BA − B₀A₀ in float64."""
        bank = self.shared.bank.detach().double()  # type: ignore[union-attr]
        k, L = self.cfg.topk, self.cfg.vector_length

        def piece(logit_row: Tensor) -> Tensor:
            values, order = torch.sort(logit_row.double(), descending=True)
            w = torch.exp(values[:k] - values[0])
            return (w[:, None] * bank[order[:k]]).sum(0) / w.sum()

        r, groups_in, _ = self.logits_A.shape
        groups_out = self.logits_B.shape[0]
        A = torch.stack([torch.cat([piece(self.logits_A[i, g].detach()) for g in range(groups_in)])
                         for i in range(r)])
        B = torch.zeros(groups_out * L, r, dtype=torch.float64)
        for g in range(groups_out):
            for i in range(r):
                B[g * L:(g + 1) * L, i] = piece(self.logits_B[g, i].detach())
        delta = B @ A - self.B0.double() @ self.A0.double()
        return dense_linear(x, base, delta)

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Config) -> int:
        d_out, d_in = cls.check_layer(base, cfg)
        return cfg.r * cfg.num_vectors * (d_in + d_out) // cfg.vector_length
