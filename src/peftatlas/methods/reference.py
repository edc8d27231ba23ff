"""Reference methods: full fine-tuning, head-only (linear probe), BitFit.

These anchor every comparison: full FT is the ceiling a PEFT method tries to recover, head-only
the floor, and BitFit the smallest update that touches every layer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from torch import nn

from ..core.method import LayerAdapter, register
from ..core.param_delta import ParameterDelta


@register("full")
class FullFineTuning(ParameterDelta):
    """W' = W0 + ΔW for every parameter of every module (the head trains as usual).

    Pseudocode::

        for every parameter p of the body:  δ_p ← 0;  train δ_p   (p_eff = p + δ_p)
    """

    family = "reference"
    summary = "Every weight trains; the ceiling every PEFT method is measured against."
    formula = "Σ numel(p) over all body parameters"
    test_config: ClassVar[dict[str, Any]] = {}
    test_skip: ClassVar[dict[str, str]] = {
        "gpt2": "GPT-2's wte is tied to lm_head: merging its delta is refused (it would change both; "
                "tested on tied lm_head in test_interop)",
    }

    @dataclasses.dataclass
    class Config:
        pass


@register("bitfit")
class BitFit(ParameterDelta):
    """Train only bias terms: b' = b0 + δ_b in every module that has a bias.

    Pseudocode::

        for every module with a bias b:  δ_b ← 0;  train δ_b
    """

    family = "reference"
    summary = "Bias-only tuning (Ben Zaken et al., 2022)."
    formula = "Σ d_out over modules with a bias"
    test_skip: ClassVar[dict[str, str]] = {"llama": "Llama-style layers have no bias terms"}
    default_targets: ClassVar[Any] = "all"

    @dataclasses.dataclass
    class Config:
        pass

    @classmethod
    def selects(cls, param_name: str, module: nn.Module) -> bool:
        return param_name == "bias"


@register("head_only")
class HeadOnly(LayerAdapter):
    """Linear probe: the body is frozen, only the task head trains. Adds no layer adapters."""

    family = "reference"
    summary = "Frozen body, trained head: the floor of every comparison."
    formula = "0 (head only)"
    test_skip: ClassVar[dict[str, str]] = {"llama": "a causal LM has no task head to train",
                                           "gpt2": "a causal LM has no task head to train"}
    default_targets: ClassVar[Any] = None

    @dataclasses.dataclass
    class Config:
        pass

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Any) -> int:
        return 0
