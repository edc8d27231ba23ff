"""Converters of structured and gain methods: LoHa, LoKr, FourierFT, C3A, (IA)³.

Conventions that differ (checked numerically by the interop tests):

* C3A: PEFT's block is a circular *correlation* ``y[m] = Σ_q w[q] x[m+q]``, ours a circular
  convolution ``y[p] = Σ_q v[p−q] x[q]``; the kernels are each other's index reversal
  ``w[k] = v[−k mod b]`` (an involution, so the same map converts both ways).
* LoHa / LoKr on a convolution (PEFT: Linear, Conv1d, Conv2d; no GPT-2 ``Conv1D``, no embedding):
  PEFT's default (``use_effective_conv2d=False``) flattens the kernel ``(out, in, *k)`` to the
  matrix ``(out, in·Πk)`` exactly as :class:`~peftatlas.core.layer_types.MatrixView` does, so LoHa's
  factors are the same tensors on every layer type.
* LoKr: PEFT factorises ``out = a·b`` and the input *channels* ``in = c·d`` and keeps the kernel in
  the low-rank block: ``ΔW = s · w1 ⊗ w2`` with ``w1`` (a × c) and ``w2`` (b × d·Πk) in matrix
  layout — our ``C ⊗ BA`` with ``C = w1``, ``BA = w2``, when our factorisation of ``d_in = in·Πk``
  gives the same ``u_q = c`` (checked on export; the factor is chosen from the shapes on import).
  PEFT stores ``w2`` factored (``lokr_w2_a`` (b × r), ``lokr_w2_b`` (r × d·Πk)) or, when
  ``r ≥ max(b, d)/2``, dense (``lokr_w2``, shape ``(b, d, *k)`` on a conv); a dense block
  imports exactly when a rank ``r' ≥ min(b, d·Πk)`` holds it (the import raises the rank to
  ``r'`` and ``alpha`` to ``alpha·r'/r``, padding with zeros: the same ``s`` and the same ``ΔW``).
  A dense block on a *Conv1d* is refused both ways: PEFT 0.21 applies it as ``kron`` of a 2-D and a
  3-D tensor, which is no Kronecker structure (see :func:`_refuse_dense_conv1d`).
* (IA)³: PEFT's gain has shape ``(d_out, 1)`` on the output side and ``(1, d_in)`` on the input side
  (``feedforward_modules``); ours is a vector, its side fixed per layer.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..core.layer_types import CONV1D, CONV2D, LINEAR, layer_type
from ..methods._factors import near_square_factors
from .registry import Converter, InteropError, register_converter

_LYCORIS_OFF: dict[str, Any] = {"rank_pattern": {}, "alpha_pattern": {}, "rank_dropout": 0.0, "module_dropout": 0.0,
                                "use_effective_conv2d": False}
_LYCORIS_LAYER_TYPES: tuple[str, ...] = (LINEAR, CONV1D, CONV2D)  # PEFT's LoHa / LoKr layers_mapping


@register_converter
class LoHaConverter(Converter):
    """LoHa ↔ PEFT ``LOHA``: ``hada_w1_a`` = B1, ``hada_w1_b`` = A1, ``hada_w2_a`` = B2, ``hada_w2_b`` = A2."""

    method = "loha"
    peft_type = "LOHA"
    layer_keys: ClassVar[dict[str, str]] = {"hada_w1_a": "hada_B1", "hada_w1_b": "hada_A1",
                                            "hada_w2_a": "hada_B2", "hada_w2_b": "hada_A2"}
    fields: ClassVar[dict[str, str]] = {"r": "r", "alpha": "alpha"}
    fixed: ClassVar[dict[str, Any]] = dict(_LYCORIS_OFF)
    export_only: ClassVar[dict[str, Any]] = {"init_weights": True}
    peft_layer_types: ClassVar[tuple[str, ...]] = _LYCORIS_LAYER_TYPES


def _peft_split(d: int, factor: int) -> tuple[int, int]:
    """PEFT's LoKr split ``d = m·n``: ``(factor, d/factor)`` when ``factor`` divides ``d`` (in that order),
    else the most square ``m ≤ n`` with ``m ≤ factor`` — there the same as :func:`near_square_factors`."""
    if factor > 0 and d % factor == 0:
        return factor, d // factor
    return near_square_factors(d, factor)


def _peft_lokr_dims(base: nn.Module) -> tuple[int, int, tuple[int, ...]]:
    """``(out, in, kernel)`` as PEFT's LoKr splits a layer: a conv's channels, a Linear's features."""
    if layer_type(base) in (CONV1D, CONV2D):
        return base.out_channels, base.in_channels, tuple(base.kernel_size)
    return base.out_features, base.in_features, ()


def _file_blocks(tensors: dict[str, Tensor]) -> tuple[int, int, int, int]:
    """``(u_p, u_q, v_p, v_q)`` of one PEFT LoKr layer: ``w1`` is u_p × u_q, ``w2`` is v_p × v_q as a matrix."""
    if "lokr_w1" in tensors:
        u_p, u_q = tensors["lokr_w1"].shape
    else:
        u_p, u_q = tensors["lokr_w1_a"].shape[0], tensors["lokr_w1_b"].shape[1]
    if "lokr_w2" in tensors:
        w2 = tensors["lokr_w2"]
        return u_p, u_q, w2.shape[0], w2[0].numel()
    return u_p, u_q, tensors["lokr_w2_a"].shape[0], tensors["lokr_w2_b"].shape[1]


def _our_factor(layers: dict[str, dict[str, Tensor]], factor: int) -> int:
    """A ``factor`` under which our LoKr splits every layer as the file does (``u_p``, ``u_q`` of each).

    Ours factorises ``d_out = u_p·v_p`` and ``d_in = u_q·v_q`` with one factor; PEFT splits a conv's
    channels, not ``in·Πk``, so its own ``decompose_factor`` may not reproduce the blocks, another may.
    """
    blocks = {name: _file_blocks(t) for name, t in layers.items()}

    def fits(f: int, u_p: int, u_q: int, v_p: int, v_q: int) -> bool:
        return near_square_factors(u_p * v_p, f)[0] == u_p and near_square_factors(u_q * v_q, f)[0] == u_q

    for f in (factor, -1, *sorted({n for b in blocks.values() for n in b})):
        if all(fits(f, *b) for b in blocks.values()):
            return f
    name, (u_p, u_q, v_p, v_q) = next((n, b) for n, b in blocks.items() if not fits(factor, *b))
    raise InteropError(f"lokr: no single factor splits every layer as the file does (e.g. {name}: a {u_p}×{u_q} "
                       f"block pattern of a {u_p * v_p}×{u_q * v_q} matrix); peftatlas lokr splits d_out and d_in "
                       "(a conv's in·kernel) with one factor")


def _pad_rank(B: Tensor, A: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """``B`` (v_p × r₀), ``A`` (r₀ × v_q) padded with zeros to rank ``r ≥ r₀``: the same product ``BA``."""
    extra = r - B.shape[1]
    return torch.cat([B, B.new_zeros(B.shape[0], extra)], 1), torch.cat([A, A.new_zeros(extra, A.shape[1])])


def _refuse_dense_conv1d(base: nn.Module, why: str) -> None:
    """PEFT 0.21 applies a dense ``lokr_w2`` (b, d, k) of a Conv1d as ``torch.kron(w1, w2)`` with a 2-D ``w1``.

    That kron treats ``w1`` as ``(1, a, c)``: its rows scale the input-channel axis and its columns the
    kernel axis (a ``(b, a·d, c·k)`` result reshaped to ``(out, in, k)``), so PEFT's ΔW is a reshuffle
    of ``w1 ⊗ w2``, not a Kronecker structure we (or LyCORIS) can hold.
    """
    if layer_type(base) == CONV1D:
        raise InteropError(f"lokr: {why} on a Conv1d {tuple(base.weight.shape)}: PEFT applies such a block as "
                           "kron(w1, w2) of a 2-D and a 3-D tensor (not w1 ⊗ w2 per kernel tap), which peftatlas "
                           "cannot reproduce")


@register_converter
class LoKrConverter(Converter):
    """LoKr ↔ PEFT ``LOKR``: ``lokr_w1`` = C and the low-rank block ``BA`` (factored or dense)."""

    method = "lokr"
    peft_type = "LOKR"
    fields: ClassVar[dict[str, str]] = {"r": "r", "alpha": "alpha", "decompose_factor": "factor"}
    fixed: ClassVar[dict[str, Any]] = {**_LYCORIS_OFF, "decompose_both": False, "rank_dropout_scale": False}
    export_only: ClassVar[dict[str, Any]] = {"init_weights": True}
    peft_layer_types: ClassVar[tuple[str, ...]] = _LYCORIS_LAYER_TYPES

    @classmethod
    def peft_layer_suffixes(cls) -> tuple[str, ...]:
        return ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")

    @classmethod
    def check_fixed(cls, peft_cfg: dict[str, Any]) -> None:
        super().check_fixed({k: v for k, v in peft_cfg.items() if k != "decompose_both"})  # w1_a·w1_b imports

    @classmethod
    def model_config_to_peft(cls, model: Any, name: str, **options: Any) -> dict[str, Any]:
        """Refuses a layer PEFT would split otherwise: PEFT's ``w1`` is ``split(out)₀ × split(in channels)₀``."""
        factor = model.specs[name].config.factor
        for layer_name, layer in model.adapted_layers().items():
            if name not in layer.adapters:
                continue
            cls.check_layer_type(layer_name, layer.base)
            out, channels, _ = _peft_lokr_dims(layer.base)
            theirs = (_peft_split(out, factor)[0], _peft_split(channels, factor)[0])
            ours = tuple(layer.adapters[name].lokr_C.shape)
            if theirs != ours:
                raise InteropError(f"lokr: {layer_name}: PEFT's decompose_factor={factor} splits it into a "
                                   f"{theirs[0]}×{theirs[1]} block pattern, ours is {ours[0]}×{ours[1]} (PEFT splits "
                                   f"the {channels} input channels, ours d_in); choose a factor on which both agree")
        return cls.config_to_peft(model.specs[name].config, **options)

    @classmethod
    def config_from_peft(cls, peft_cfg: dict[str, Any], layers: dict[str, dict[str, Tensor]]) -> dict[str, Any]:
        """The file's ``r``/``alpha``, a factor that reproduces its blocks, and a rank that holds a dense ``w2``."""
        hyper = super().config_from_peft(peft_cfg, layers)
        hyper["factor"] = _our_factor(layers, int(hyper.get("factor", -1)))
        r = int(hyper.get("r", 8))
        need = max((min(_file_blocks(t)[2:]) for t in layers.values() if "lokr_w2" in t), default=r)
        if need > r:
            hyper["r"], hyper["alpha"] = need, float(hyper.get("alpha", 8.0)) * need / r
        return hyper

    @classmethod
    def layer_to_peft(cls, adapter: Any) -> dict[str, Tensor]:
        return {"lokr_w1": adapter.lokr_C.detach(), "lokr_w2_a": adapter.lokr_B.detach(),
                "lokr_w2_b": adapter.lokr_A.detach()}

    @classmethod
    def to_layer_layout(cls, tensors: dict[str, Tensor], base: nn.Module) -> dict[str, Tensor]:
        """PEFT keeps ``w2`` dense when ``r ≥ max(b, d)/2`` (``d`` = input channels / c), shaped ``(b, d, *k)``."""
        C, B, A = tensors["lokr_w1"], tensors["lokr_w2_a"], tensors["lokr_w2_b"]
        _, channels, kernel = _peft_lokr_dims(base)
        d = channels // C.shape[1]
        if A.shape[0] < max(B.shape[0], d) / 2:
            return tensors
        _refuse_dense_conv1d(base, f"PEFT would store a dense block (r={A.shape[0]} ≥ max({B.shape[0]}, {d})/2; "
                                   f"r < {max(B.shape[0], d) / 2:g} keeps it factored)")
        return {"lokr_w1": C, "lokr_w2": (B @ A).reshape(B.shape[0], d, *kernel)}

    @classmethod
    def from_layer_layout(cls, tensors: dict[str, Tensor], base: nn.Module) -> dict[str, Tensor]:
        if "lokr_w2" not in tensors:
            return tensors
        _refuse_dense_conv1d(base, "the file holds this block dense")
        w2 = tensors["lokr_w2"]
        return {**tensors, "lokr_w2": w2.reshape(w2.shape[0], -1)}

    @classmethod
    def layer_from_peft(cls, tensors: dict[str, Tensor], adapter: Any) -> dict[str, Tensor]:
        C = tensors["lokr_w1"] if "lokr_w1" in tensors else tensors["lokr_w1_a"] @ tensors["lokr_w1_b"]
        r = adapter.cfg.r
        if "lokr_w2" not in tensors:
            B, A = _pad_rank(tensors["lokr_w2_a"], tensors["lokr_w2_b"], r)
            return {"lokr_C": C, "lokr_B": B, "lokr_A": A}
        w2 = tensors["lokr_w2"]
        v_p, v_q = w2.shape
        if r >= v_q:  # B = [w2 | 0], A = [I; 0]
            B, A = _pad_rank(w2, torch.eye(v_q, dtype=w2.dtype), r)
        elif r >= v_p:  # B = [I | 0], A = [w2; 0]
            B, A = _pad_rank(torch.eye(v_p, dtype=w2.dtype), w2, r)
        else:
            raise InteropError(f"lokr: a dense {v_p}×{v_q} lokr_w2 needs rank ≥ {min(v_p, v_q)}, the adapter has r={r}")
        return {"lokr_C": C, "lokr_B": B, "lokr_A": A}


@register_converter
class FourierFTConverter(Converter):
    """FourierFT ↔ PEFT ``FOURIERFT``: ``fourierft_spectrum`` = c; both draw the entries from the seed alike."""

    method = "fourierft"
    peft_type = "FOURIERFT"
    layer_keys: ClassVar[dict[str, str]] = {"fourierft_spectrum": "spectrum"}
    fields: ClassVar[dict[str, str]] = {"n_frequency": "n_frequency", "scaling": "scaling",
                                        "random_loc_seed": "random_loc_seed"}
    fixed: ClassVar[dict[str, Any]] = {"fan_in_fan_out": False, "bias": "none", "n_frequency_pattern": {}}
    export_only: ClassVar[dict[str, Any]] = {"init_weights": True}


@register_converter
class C3AConverter(Converter):
    """C3A ↔ PEFT ``C3A``: ``c3a_kernel`` (m × n × b) with each length-b kernel index-reversed."""

    method = "c3a"
    peft_type = "C3A"
    layer_keys: ClassVar[dict[str, str]] = {"c3a_kernel": "c3a_kernel"}
    fields: ClassVar[dict[str, str]] = {"block_size": "block_size"}
    fixed: ClassVar[dict[str, Any]] = {"bias": "none", "block_size_pattern": {}}
    export_only: ClassVar[dict[str, Any]] = {"init_weights": True}

    @staticmethod
    def _reverse(kernel: Tensor) -> Tensor:
        b = kernel.shape[-1]
        return kernel[..., (-torch.arange(b)) % b]

    @classmethod
    def layer_to_peft(cls, adapter: Any) -> dict[str, Tensor]:
        return {"c3a_kernel": cls._reverse(adapter.c3a_kernel.detach())}

    @classmethod
    def layer_from_peft(cls, tensors: dict[str, Tensor], adapter: Any) -> dict[str, Tensor]:
        return {"c3a_kernel": cls._reverse(tensors["c3a_kernel"])}


@register_converter
class IA3Converter(Converter):
    """(IA)³ ↔ PEFT ``IA3``: ``ia3_l`` of shape (d_out, 1) (output side) or (1, d_in) (input side)."""

    method = "ia3"
    peft_type = "IA3"
    layer_keys: ClassVar[dict[str, str]] = {"ia3_l": "ia3_l"}
    fixed: ClassVar[dict[str, Any]] = {"fan_in_fan_out": False}
    export_only: ClassVar[dict[str, Any]] = {"init_ia3_weights": True}

    @classmethod
    def model_config_to_peft(cls, model: Any, name: str, **options: Any) -> dict[str, Any]:
        if options:
            raise InteropError(f"ia3: unknown export option(s) {sorted(options)}")
        inputs = [ln for ln, layer in model.adapted_layers().items()
                  if name in layer.adapters and layer.adapters[name].input_side]
        return {**cls.fixed, **cls.export_only, "feedforward_modules": inputs}

    @classmethod
    def config_from_peft(cls, peft_cfg: dict[str, Any], layers: dict[str, dict[str, Tensor]]) -> dict[str, Any]:
        cls.check_fixed(peft_cfg)
        inputs = sorted(n for n, t in layers.items() if t["ia3_l"].dim() == 2 and t["ia3_l"].shape[0] == 1
                        and t["ia3_l"].shape[1] != 1)
        ambiguous = [n for n, t in layers.items() if tuple(t["ia3_l"].shape) == (1, 1)]
        if ambiguous:
            raise InteropError(f"ia3: cannot tell the side of width-1 layer(s) {ambiguous}")
        pattern = "|".join(re.escape(n) for n in inputs) or r"(?!)"
        return {"side": "auto", "feedforward_modules": pattern}

    @classmethod
    def layer_to_peft(cls, adapter: Any) -> dict[str, Tensor]:
        gain = adapter.ia3_l.detach()
        return {"ia3_l": gain[None, :] if adapter.input_side else gain[:, None]}

    @classmethod
    def layer_from_peft(cls, tensors: dict[str, Tensor], adapter: Any) -> dict[str, Tensor]:
        return {"ia3_l": tensors["ia3_l"].reshape(-1)}
