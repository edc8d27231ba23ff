"""LN tuning: train only the LayerNorm / RMSNorm gains and biases.

Papers: Qi, Ruan, Zuo, Li, "Parameter-Efficient Tuning on Layer Normalization for Pre-trained
Language Models" (arXiv:2211.08682); Zhao, Tu, Wei, Mei, Xie, "Tuning LayerNorm in Attention:
Towards Efficient Multi-Modal LLM Finetuning" (ICLR 2024, arXiv:2312.11420).

Hypothesis: adaptation is mostly a re-weighting of residual-stream channels, shared by every
consumer of a normalised stream (a LayerNorm gain γ' scales the columns of W_q, W_k and W_v alike).

Insertion point: activations — the normalised residual stream (the norm's own parameters).

Pseudocode::

    for every LayerNorm / RMSNorm:  δγ ← 0, δβ ← 0
    LN(x) = (γ + δγ) ⊙ (x − μ)/σ + (β + δβ)          # RMSNorm: (γ + δγ) ⊙ x / rms(x)
    merge: γ ← γ + δγ,  β ← β + δβ
    parameters: 2d per LayerNorm, d per RMSNorm
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from torch import nn

from ..core.method import register
from ..core.param_delta import ParameterDelta


def is_norm(module: nn.Module) -> bool:
    """LayerNorm-like: ``nn.LayerNorm``/``nn.RMSNorm`` or a model's own ``*LayerNorm``/``*RMSNorm`` class."""
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        return True
    name = type(module).__name__
    weight = getattr(module, "weight", None)
    return ("LayerNorm" in name or "RMSNorm" in name) and isinstance(weight, nn.Parameter) and weight.dim() == 1


@register("ln_tuning")
class LNTuning(ParameterDelta):
    family = "activation"
    insertion = "activation"
    summary = "Only the norm layers' gains γ and biases β train (as deltas from their pretrained values)."
    formula = "2d per LayerNorm (d per RMSNorm)"
    default_targets: ClassVar[Any] = "all"
    test_config: ClassVar[dict[str, Any]] = {}

    @dataclasses.dataclass
    class Config:
        pass

    @classmethod
    def can_adapt(cls, module: nn.Module) -> bool:
        return is_norm(module) and super().can_adapt(module)
