"""SURM: structured unrestricted-rank matrices (Sehanobish et al., NeurIPS 2024, arXiv 2406.17740).

Hypothesis: at a linear parameter budget the fine-tuning update of a weight matrix is better captured
by a structured matrix that can be full rank — circulant, Toeplitz, Kronecker, or low displacement
rank (LDR) — than by a low-rank matrix.

Pseudocode, LoRA form (ΔW is one structured ``d_out × d_in`` matrix; ``n = max(d_in, d_out)``)::

    surm_circulant:  c = c_A ⊙ c_B  (c_A ~ N(0, σ²), c_B = 0)   or  c = 0 (hadamard=False)
                     ΔW = α · C(c)[:d_out, :d_in]                     n or 2n params
    surm_toeplitz:   t = 0 ∈ R^{d_in + d_out − 1};   ΔW = α · T(t)    (general, not only symmetric)
    surm_kronecker:  A ~ KaimingUniform(r × d_in/r),  B = 0 ∈ R^{d_out/r × r};  ΔW = α · (B ⊗ A)
                     d_in + d_out params whatever r
    surm_ldr:        gᵢ = 0, hᵢ ~ N(0, σ²) ∈ R^n, i = 1..r;  ΔW = α · (Σᵢ C(gᵢ) S(hᵢ))[:d_out, :d_in]
    y = W0 x + ΔW x        # ΔW x by FFT / the Kronecker reshape trick; ΔW is never formed in forward
    merge: W ← W0 + ΔW

Adapter form (``surm_adapter``), on the output ``y = W0 x + b0`` of a linear layer::

    S = the structured d_out × d_out matrix above (S = 0 at init), bias = 0
    y' = y + act(S y) + bias            # not mergeable (act is nonlinear)

By default it wraps the Houlsby positions: the attention-output and FFN-output dense layers
(``*.output.dense``, ``o_proj``, ``down_proj``, ``out_proj``, ``fc2``), i.e. two adapters per block
before the residual LayerNorm, as in the authors' GLUE code (3d params per circulant adapter: 55,296
on BERT-base).

Non-square rule: circulant and LDR use the ``n × n`` matrix, ``n = max(d_in, d_out)``, cropped to its
top-left ``d_out × d_in`` block (``x`` zero-padded to ``n``, the output truncated to ``d_out``);
Toeplitz is natively rectangular (``d_in + d_out − 1`` diagonals); Kronecker needs ``r`` to divide
both ``d_in`` and ``d_out`` (``r = 0`` picks the divisor of ``gcd(d_in, d_out)`` whose factor shapes
allow the highest rank, ``rank(B ⊗ A) ≤ min(d_out/r, r)·min(r, d_in/r)``).

Differences from the authors' code, on purpose: Toeplitz is one general (not a product of two
symmetric) Toeplitz matrix; Kronecker is applied as ``vec(B X Aᵀ)`` instead of materialising
``B ⊗ A``; the skew-circulant root is ``η = exp(iπ/n)`` (the repo's helper used a root of
``x^{n+1} + 1``); circulant/Toeplitz/LDR accept rectangular layers. FFTs always run in float32.
Circulant and Toeplitz structure is tied to the order of hidden units (not permutation invariant).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.hyperparameters import at_least
from ..core.method import BaseFn, LayerAdapter, MethodError, register
from ..ops import (
    circulant_dense,
    circulant_matvec,
    kron_dense,
    kron_matvec,
    ldr_dense,
    ldr_matvec,
    toeplitz_dense,
    toeplitz_matvec,
)

# --- structured operators: parameters + fast product + explicit matrix -----------------------------


class StructuredOp(nn.Module):
    """A trainable ``d_out × d_in`` structured matrix: ``forward(x) = M x`` fast, ``dense() = M``."""

    def __init__(self, d_out: int, d_in: int) -> None:
        super().__init__()
        self.d_out, self.d_in = d_out, d_in

    def dense(self) -> Tensor:
        raise NotImplementedError

    @staticmethod
    def count(d_out: int, d_in: int, **kw: Any) -> int:
        raise NotImplementedError


class CirculantOp(StructuredOp):
    """``C(c)[:d_out, :d_in]`` with ``c = c_A ⊙ c_B`` (Hadamard reparametrisation) or a free ``c``."""

    def __init__(self, d_out: int, d_in: int, hadamard: bool = True, init_std: float = 1.0) -> None:
        super().__init__(d_out, d_in)
        n = max(d_out, d_in)
        self.hadamard = hadamard
        if hadamard:
            self.c_A = nn.Parameter(torch.randn(n) * init_std)
            self.c_B = nn.Parameter(torch.zeros(n))
        else:
            self.c = nn.Parameter(torch.zeros(n))

    def vector(self) -> Tensor:
        return self.c_A * self.c_B if self.hadamard else self.c

    def forward(self, x: Tensor) -> Tensor:
        return circulant_matvec(self.vector(), x, self.d_out)

    def dense(self) -> Tensor:
        return circulant_dense(self.vector(), self.d_out, self.d_in)

    @staticmethod
    def count(d_out: int, d_in: int, hadamard: bool = True, **_: Any) -> int:
        return max(d_out, d_in) * (2 if hadamard else 1)


class ToeplitzOp(StructuredOp):
    """General rectangular ``T(t)``, ``T[i, j] = t[i − j + d_in − 1]``; ``t = 0`` at init."""

    def __init__(self, d_out: int, d_in: int) -> None:
        super().__init__(d_out, d_in)
        self.t = nn.Parameter(torch.zeros(d_in + d_out - 1))

    def forward(self, x: Tensor) -> Tensor:
        return toeplitz_matvec(self.t, x, self.d_out)

    def dense(self) -> Tensor:
        return toeplitz_dense(self.t, self.d_out, self.d_in)

    @staticmethod
    def count(d_out: int, d_in: int, **_: Any) -> int:
        return d_in + d_out - 1


def kronecker_rank_bound(d_out: int, d_in: int, r: int) -> int:
    """Largest rank ``B ⊗ A`` can reach with ``A: r × d_in/r`` and ``B: d_out/r × r``."""
    return min(d_out // r, r) * min(r, d_in // r)


def kronecker_factor(d_out: int, d_in: int, r: int = 0) -> int:
    """Check ``r`` divides both dimensions; ``r = 0`` picks the divisor allowing the highest rank."""
    g = math.gcd(d_out, d_in)
    divisors = [k for k in range(1, g + 1) if g % k == 0]
    if r == 0:
        middle = 0.25 * math.log(d_out * d_in)
        return max(divisors, key=lambda k: (kronecker_rank_bound(d_out, d_in, k), -abs(math.log(k) - middle)))
    if d_in % r or d_out % r:
        raise MethodError(f"surm kronecker: r={r} must divide both d_in={d_in} and d_out={d_out}; "
                          f"valid r: {', '.join(map(str, divisors))} (or 0 = automatic)")
    return r


class KroneckerOp(StructuredOp):
    """``B ⊗ A`` with ``A ∈ R^{r × d_in/r}`` (Kaiming-uniform), ``B ∈ R^{d_out/r × r}`` (zeros)."""

    def __init__(self, d_out: int, d_in: int, r: int = 0) -> None:
        super().__init__(d_out, d_in)
        r = kronecker_factor(d_out, d_in, r)
        self.A = nn.Parameter(torch.empty(r, d_in // r))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.B = nn.Parameter(torch.zeros(d_out // r, r))

    def forward(self, x: Tensor) -> Tensor:
        return kron_matvec(self.B, self.A, x)

    def dense(self) -> Tensor:
        return kron_dense(self.B, self.A)

    @staticmethod
    def count(d_out: int, d_in: int, **_: Any) -> int:
        return d_in + d_out


class LDROp(StructuredOp):
    """``(Σᵢ C(gᵢ) S(hᵢ))[:d_out, :d_in]``, displacement rank ≤ r w.r.t. (Z₁, Z₋₁); ``g = 0`` at init."""

    def __init__(self, d_out: int, d_in: int, r: int = 1, init_std: float = 0.02) -> None:
        super().__init__(d_out, d_in)
        n = max(d_out, d_in)
        self.g = nn.Parameter(torch.zeros(r, n))
        self.h = nn.Parameter(torch.randn(r, n) * init_std)

    def forward(self, x: Tensor) -> Tensor:
        return ldr_matvec(self.g, self.h, x, self.d_out)

    def dense(self) -> Tensor:
        return ldr_dense(self.g, self.h, self.d_out, self.d_in)

    @staticmethod
    def count(d_out: int, d_in: int, r: int = 1, **_: Any) -> int:
        return 2 * r * max(d_out, d_in)


STRUCTURES: dict[str, type[StructuredOp]] = {
    "circulant": CirculantOp,
    "toeplitz": ToeplitzOp,
    "kronecker": KroneckerOp,
    "ldr": LDROp,
}


def _check_common(name: str, cfg: Any) -> None:
    if not 0.0 <= getattr(cfg, "dropout", 0.0) < 1.0:
        raise MethodError(f"{name}: dropout must be in [0, 1), got {cfg.dropout}")
    if getattr(cfg, "init_std", 0.0) < 0:
        raise MethodError(f"{name}: init_std must be ≥ 0, got {cfg.init_std}")
    if not math.isfinite(getattr(cfg, "alpha", 1.0)):
        raise MethodError(f"{name}: alpha must be finite, got {cfg.alpha}")


# --- LoRA form: ΔW is the structured matrix ------------------------------------------------------------


class _SURMDelta(LayerAdapter):
    """``y = W0 x + α · M x`` with ``M`` one :class:`StructuredOp`; mergeable."""

    family = "structured-full-rank"
    op_class: ClassVar[type[StructuredOp]] = StructuredOp

    @classmethod
    def op_kwargs(cls, cfg: Any) -> dict[str, Any]:
        return {}

    @classmethod
    def validate_config(cls, cfg: Any) -> None:
        _check_common(cls.name, cfg)

    def __init__(self, base: nn.Module, cfg: Any, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        d_out, d_in = self.dims(base)
        self.surm = self.op_class(d_out, d_in, **self.op_kwargs(cfg))
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def delta_output(self, x: Tensor) -> Tensor:
        return self.surm(self.dropout(x.to(torch.float32))) * self.cfg.alpha

    def delta_weight(self, weight: Tensor) -> Tensor:
        return (self.surm.dense() * self.cfg.alpha).to(weight.dtype)

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Any) -> int:
        d_out, d_in = cls.dims(base)
        return cls.op_class.count(d_out, d_in, **cls.op_kwargs(cfg))


@register("surm_circulant")
class SURMCirculant(_SURMDelta):
    summary = "ΔW = α·C(c_A ⊙ c_B), a (cropped) circulant applied by real FFTs; c_B = 0 at init."
    formula = "2·max(d_in, d_out)  (hadamard=False: max(d_in, d_out))"
    op_class = CirculantOp
    test_config: ClassVar[dict[str, Any]] = {}

    @dataclasses.dataclass
    class Config:
        alpha: float = 1.0
        hadamard: bool = True  # c = c_A ⊙ c_B (repo default) instead of a free c
        init_std: float = 1.0  # std of c_A (the repo's nn.init.normal_ default)
        dropout: float = 0.0

    @classmethod
    def op_kwargs(cls, cfg: Config) -> dict[str, Any]:
        return {"hadamard": cfg.hadamard, "init_std": cfg.init_std}


@register("surm_toeplitz")
class SURMToeplitz(_SURMDelta):
    summary = "ΔW = α·T(t), a general rectangular Toeplitz matrix applied by FFT embedding; t = 0 at init."
    formula = "d_in + d_out − 1"
    op_class = ToeplitzOp
    test_config: ClassVar[dict[str, Any]] = {}

    @dataclasses.dataclass
    class Config:
        alpha: float = 1.0
        dropout: float = 0.0


@register("surm_kronecker")
class SURMKronecker(_SURMDelta):
    summary = "ΔW = α·(B ⊗ A), applied as vec(B X Aᵀ) without forming B ⊗ A; B = 0 at init."
    formula = "d_in + d_out"
    op_class = KroneckerOp
    test_config: ClassVar[dict[str, Any]] = {}

    @dataclasses.dataclass
    class Config:
        # A is r × d_in/r, B is d_out/r × r; 0 = the divisor allowing the highest rank
        r: int = dataclasses.field(default=0, metadata={"range": at_least(0)})
        alpha: float = 1.0
        dropout: float = 0.0

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        super().validate_config(cfg)
        if cfg.r < 0:
            raise MethodError(f"surm_kronecker: r must be ≥ 0 (0 = automatic), got {cfg.r}")

    @classmethod
    def op_kwargs(cls, cfg: Config) -> dict[str, Any]:
        return {"r": cfg.r}


@register("surm_ldr")
class SURMLDR(_SURMDelta):
    summary = "ΔW = α·Σᵢ C(gᵢ)S(hᵢ): low displacement rank r, circulant × skew-circulant by FFT; g = 0 at init."
    formula = "2·r·max(d_in, d_out)"
    size_knob: ClassVar[str | None] = "r"
    op_class = LDROp
    test_config: ClassVar[dict[str, Any]] = {"r": 2}

    @dataclasses.dataclass
    class Config:
        r: int = 1  # number of circulant × skew-circulant terms (displacement rank ≤ r)
        alpha: float = 1.0
        init_std: float = 0.02  # std of h (repo)
        dropout: float = 0.0

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        super().validate_config(cfg)
        if cfg.r < 1:
            raise MethodError(f"surm_ldr: r (number of terms) must be ≥ 1, got {cfg.r}")

    @classmethod
    def op_kwargs(cls, cfg: Config) -> dict[str, Any]:
        return {"r": cfg.r, "init_std": cfg.init_std}


# --- adapter form: y' = y + act(S y) + bias on a layer's output ---------------------------------------------

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
    "tanh": torch.tanh,
    "identity": lambda z: z,
}

HOULSBY_TARGETS = r"(.*\.)?(output\.dense|o_proj|down_proj|out_proj|fc2)"


@register("surm_adapter")
class SURMAdapter(LayerAdapter):
    family = "structured-full-rank"
    summary = "Adapter y + act(S y) + bias with one structured d×d layer S (no bottleneck) after a linear layer."
    formula = "circulant 3·d_out (hadamard) | toeplitz 3·d_out − 1 | kronecker 3·d_out | ldr (2r+1)·d_out"
    mergeable: ClassVar[bool] = False
    default_targets: ClassVar[Any] = HOULSBY_TARGETS
    test_config: ClassVar[dict[str, Any]] = {}

    @dataclasses.dataclass
    class Config:
        structure: str = "circulant"  # circulant | toeplitz | kronecker | ldr
        activation: str = "gelu"
        hadamard: bool = True  # circulant: c = c_A ⊙ c_B
        init_std: float = 0.02  # circulant c_A / ldr h
        kron_r: int = 0  # kronecker factor size (0 = automatic)
        ldr_r: int = 1  # ldr: number of terms
        dropout: float = 0.0

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        _check_common("surm_adapter", cfg)
        if cfg.structure not in STRUCTURES:
            raise MethodError(f"surm_adapter: unknown structure {cfg.structure!r}; choose from {', '.join(STRUCTURES)}")
        if cfg.activation not in ACTIVATIONS:
            raise MethodError(f"surm_adapter: unknown activation {cfg.activation!r}; "
                              f"choose from {', '.join(ACTIVATIONS)}")
        if cfg.kron_r < 0 or cfg.ldr_r < 1:
            raise MethodError(f"surm_adapter: need kron_r ≥ 0 and ldr_r ≥ 1, got {cfg.kron_r}, {cfg.ldr_r}")

    @staticmethod
    def op_kwargs(cfg: Config) -> dict[str, Any]:
        return {
            "circulant": {"hadamard": cfg.hadamard, "init_std": cfg.init_std},
            "toeplitz": {},
            "kronecker": {"r": cfg.kron_r},
            "ldr": {"r": cfg.ldr_r, "init_std": cfg.init_std},
        }[cfg.structure]

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        d_out, _ = self.dims(base)
        self.surm = STRUCTURES[cfg.structure](d_out, d_out, **self.op_kwargs(cfg))
        self.bias = nn.Parameter(torch.zeros(d_out))
        self.act = ACTIVATIONS[cfg.activation]
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, x: Tensor, base_fn: BaseFn) -> Tensor:
        y = base_fn(x)
        z = self.act(self.surm(self.dropout(y.to(torch.float32)))) + self.bias
        return y + z.to(y.dtype)

    def reference_forward(self, x: Tensor, base: nn.Module) -> Tensor:
        params = {k: v.detach().float() for k, v in base.named_parameters(recurse=False)}
        y = torch.func.functional_call(base, params, (x.float(),), strict=False)
        return y + self.act(y @ self.surm.dense().t()) + self.bias

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Config) -> int:
        d_out, _ = cls.dims(base)
        return STRUCTURES[cfg.structure].count(d_out, d_out, **cls.op_kwargs(cfg)) + d_out
