"""(IA)³: Infused Adapter by Inhibiting and Amplifying Inner Activations (Liu et al., NeurIPS 2022, arXiv:2205.05638).

Hypothesis: adaptation is channel-wise gain control. Fine-tuning's change to the key and value
projections is mostly a row rescaling of W0, and its change to the FFN's second layer mostly a
column rescaling (a gain on the FFN's hidden activations).

Insertion point: activations — the output of the key/value projections and the input of the FFN's
down projection. Both are gains on a linear layer, so they fold into its weight (mergeable).

Pseudocode::

    l ← 1                                        # one gain per channel; init = no-op
    keys, values (output side):  y = l ⊙ (W0 x + b0)      merge: W ← diag(l) W0,  b ← l ⊙ b0
    FFN down projection (input):  y = W0 (l ⊙ x) + b0      merge: W ← W0 diag(l)
    parameters per layer: d_out (output side) or d_in (input side)

A layer is input-side when its name matches ``feedforward_modules`` (the FFN down projections of
BERT/ViT, Llama, OPT, T5), or when ``side`` forces it.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.method import BaseFn, LayerAdapter, MethodError, register

# FFN down projections: Llama/Mistral down_proj, OPT/CLIP fc2, T5 wo, GPT-NeoX dense_4h_to_h, Mixtral w2,
# and BERT/RoBERTa/ViT's "<layer i>.output.dense" (not "attention.output.dense").
FEEDFORWARD = r"(.*\.)?(down_proj|fc2|wo|dense_4h_to_h|w2)|.*layer\.\d+\.output\.dense"
KEYS_VALUES = r"(.*\.)?(key|value|k_proj|v_proj|k|v)"
SIDES = ("auto", "input", "output")


@register("ia3")
class IA3(LayerAdapter):
    family = "activation"
    insertion = "activation"
    summary = "Learned per-channel gains on keys, values and FFN hidden activations; init 1."
    formula = "d_out (keys, values) or d_in (FFN down projection) per layer"
    default_targets: ClassVar[Any] = f"{KEYS_VALUES}|{FEEDFORWARD}"
    test_config: ClassVar[dict[str, Any]] = {}
    test_skip: ClassVar[dict[str, str]] = {}

    @dataclasses.dataclass
    class Config:
        feedforward_modules: str = FEEDFORWARD  # regex (full match) of layers whose input is rescaled
        side: str = "auto"  # "auto" (by feedforward_modules), "input" or "output" for every layer

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        if cfg.side not in SIDES:
            raise MethodError(f"ia3: side must be one of {', '.join(SIDES)}, got {cfg.side!r}")
        try:
            re.compile(cfg.feedforward_modules)
        except re.error as e:
            raise MethodError(f"ia3: feedforward_modules is not a valid regular expression: {e}") from None

    @classmethod
    def layer_configs(cls, bases: dict[str, nn.Module], cfg: Config) -> dict[str, Config]:
        """Resolve ``side="auto"`` per layer from its name."""
        if cfg.side != "auto":
            return {n: cfg for n in bases}
        ff = re.compile(cfg.feedforward_modules)
        return {n: dataclasses.replace(cfg, side="input" if ff.fullmatch(n) else "output") for n in bases}

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        if cfg.side == "auto":
            raise MethodError("ia3: the side of each layer is resolved by layer_configs(); use attach()/add_adapter()")
        d_out, d_in = self.dims(base)
        self.input_side = cfg.side == "input"
        self.ia3_l = nn.Parameter(torch.ones(d_in if self.input_side else d_out))

    def forward(self, x: Tensor, base_fn: BaseFn) -> Tensor:
        if self.input_side:
            return base_fn((x.to(self.ia3_l.dtype) * self.ia3_l).to(x.dtype))
        y = base_fn(x)
        return (y.to(self.ia3_l.dtype) * self.ia3_l).to(y.dtype)

    def merged_params(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        w = params["weight"]
        out = dict(params)
        gain = self.ia3_l.detach().float()
        if self.input_side:
            out["weight"] = (w.float() * gain[None, :]).to(w.dtype)
            return out
        out["weight"] = (w.float() * gain[:, None]).to(w.dtype)
        if params.get("bias") is not None:
            out["bias"] = (params["bias"].float() * gain).to(params["bias"].dtype)
        return out

    def reference_forward(self, x: Tensor, base: nn.Module) -> Tensor:
        """Dense oracle: the explicit diagonal matrix diag(l) multiplied into W (and b)."""
        D = torch.diag(self.ia3_l.detach().float())
        W = base.weight.detach().float()
        b = None if base.bias is None else base.bias.detach().float()
        if self.input_side:
            return F.linear(x.float(), W @ D, b)
        return F.linear(x.float(), D @ W, None if b is None else D @ b)

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Config) -> int:
        if cfg.side == "auto":
            raise MethodError("ia3: the count depends on each layer's side; pass a per-layer config "
                              "(side='input' or 'output'), e.g. adapter.cfg")
        d_out, d_in = cls.dims(base)
        return d_in if cfg.side == "input" else d_out
