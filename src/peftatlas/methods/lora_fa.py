"""LoRA-FA: LoRA with a frozen random down-projection (L. Zhang, L. Zhang, S. Shi, X. Chu, B. Li,
"LoRA-FA: Memory-efficient Low-rank Adaptation for Large Language Models Fine-tuning", arXiv:2308.03303).

Hypothesis: the input side of the update can be a fixed random r-dimensional projection — task
information survives a random projection (Johnson–Lindenstrauss), so learning A adds nothing at a
given r; only B (and the r-dim activations A x for its gradient) needs training memory.

Pseudocode::

    A0 ~ KaimingUniform(r × d_in), frozen;   B ← 0 (d_out × r), trained;   s = α / r  (rsLoRA: α / √r)
    y = W0 x + s · B (A0 dropout(x))
    merge: W ← W0 + s · B A0

A0 is stored with the adapter (a buffer), so a saved adapter reloads exactly; it is not counted as
a trainable parameter (d_out·r per layer are).
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from ..core.method import register
from .lora import LoRA


@register("lora_fa")
class LoRAFA(LoRA):
    family = "low-rank"
    summary = "LoRA with A frozen at its random init; only B (d_out × r) trains."
    formula = "r·d_out (+ d_out per biased layer with bias=True)"
    size_knob: ClassVar[str | None] = "r"
    test_config: ClassVar[dict[str, Any]] = {"r": 4, "alpha": 8}

    def __init__(self, base: nn.Module, cfg: LoRA.Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        frozen = self.lora_A.detach().clone()
        del self.lora_A
        self.register_buffer("lora_A", frozen)

    @classmethod
    def param_count(cls, base: nn.Module, cfg: LoRA.Config) -> int:
        """``r·d_out`` (B only), plus ``d_out`` where a bias is trained."""
        return cfg.r * cls.dims(base)[0] + (cls.dims(base)[0] if cls.trains_bias(base, cfg) else 0)
