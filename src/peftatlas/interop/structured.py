"""Converters of structured and gain methods: LoHa, LoKr, FourierFT, C3A, (IA)³.

Conventions that differ (checked numerically by the interop tests):

* C3A: PEFT's block is a circular *correlation* ``y[m] = Σ_q w[q] x[m+q]``, ours a circular
  convolution ``y[p] = Σ_q v[p−q] x[q]``; the kernels are each other's index reversal
  ``w[k] = v[−k mod b]`` (an involution, so the same map converts both ways).
* LoKr: PEFT stores the low-rank block ``BA`` either factored (``lokr_w2_a``, ``lokr_w2_b``) or, when
  ``r ≥ max(v_p, v_q)/2``, as one dense ``lokr_w2``; a dense block imports exactly only when our
  rank can hold it (``r ≥ min(v_p, v_q)``).
* (IA)³: PEFT's gain has shape ``(d_out, 1)`` on the output side and ``(1, d_in)`` on the input side
  (``feedforward_modules``); ours is a vector, its side fixed per layer.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import torch
from torch import Tensor

from .registry import Converter, InteropError, register_converter

_LYCORIS_OFF: dict[str, Any] = {"rank_pattern": {}, "alpha_pattern": {}, "rank_dropout": 0.0, "module_dropout": 0.0,
                                "use_effective_conv2d": False}


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


@register_converter
class LoKrConverter(Converter):
    """LoKr ↔ PEFT ``LOKR``: ``lokr_w1`` = C and the low-rank block ``BA`` (factored or dense)."""

    method = "lokr"
    peft_type = "LOKR"
    fields: ClassVar[dict[str, str]] = {"r": "r", "alpha": "alpha", "decompose_factor": "factor"}
    fixed: ClassVar[dict[str, Any]] = {**_LYCORIS_OFF, "decompose_both": False, "rank_dropout_scale": False}
    export_only: ClassVar[dict[str, Any]] = {"init_weights": True}

    @classmethod
    def peft_layer_suffixes(cls) -> tuple[str, ...]:
        return ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")

    @classmethod
    def check_fixed(cls, peft_cfg: dict[str, Any]) -> None:
        super().check_fixed({k: v for k, v in peft_cfg.items() if k != "decompose_both"})  # w1_a·w1_b imports

    @classmethod
    def layer_to_peft(cls, adapter: Any) -> dict[str, Tensor]:
        C, B, A = (t.detach() for t in (adapter.lokr_C, adapter.lokr_B, adapter.lokr_A))
        factor = adapter.cfg.factor
        for d, u in ((B.shape[0] * C.shape[0], C.shape[0]), (A.shape[1] * C.shape[1], C.shape[1])):
            if factor > 0 and d % factor == 0 and u != factor:
                raise InteropError(f"lokr: factor={factor} gives PEFT's block side {factor} for a dimension of {d} "
                                   f"but ours {u}; use factor ≤ √{d} or -1")
        if adapter.cfg.r >= max(B.shape[0], A.shape[1]) / 2:  # PEFT keeps this block dense
            return {"lokr_w1": C, "lokr_w2": B @ A}
        return {"lokr_w1": C, "lokr_w2_a": B, "lokr_w2_b": A}

    @classmethod
    def layer_from_peft(cls, tensors: dict[str, Tensor], adapter: Any) -> dict[str, Tensor]:
        C = tensors["lokr_w1"] if "lokr_w1" in tensors else tensors["lokr_w1_a"] @ tensors["lokr_w1_b"]
        if "lokr_w2" not in tensors:
            return {"lokr_C": C, "lokr_B": tensors["lokr_w2_a"], "lokr_A": tensors["lokr_w2_b"]}
        w2, r = tensors["lokr_w2"], adapter.cfg.r
        v_p, v_q = w2.shape
        B, A = w2.new_zeros(v_p, r), w2.new_zeros(r, v_q)
        if r >= v_q:  # B = [w2 | 0], A = [I; 0]
            B[:, :v_q], A[:v_q] = w2, torch.eye(v_q, dtype=w2.dtype)
        elif r >= v_p:  # B = [I | 0], A = [w2; 0]
            B[:, :v_p], A[:v_p] = torch.eye(v_p, dtype=w2.dtype), w2
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
