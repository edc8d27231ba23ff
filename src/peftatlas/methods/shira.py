"""SHiRA: Sparse High Rank Adapters (Bhardwaj et al., NeurIPS 2024, arXiv:2406.13175).

Hypothesis: the update does not need to be low rank — training a small, fixed set of the weight's
own entries (≈1–2 % of them, chosen by importance) is as good as LoRA at the same count, while the
update stays high-rank and sparse (cheap to switch, little interference between adapters).

Pseudocode::

    k = r·(d_in + d_out)                       # LoRA-r's budget
    S = the k entries of W0 chosen by importance:
        mask="magnitude": top-k |W0|           (SHiRA-WM)
        mask="random":    k uniform entries    (SHiRA-Rand; from the adapter's init seed)
        or any score, e.g. SNIP |W0 ⊙ ∇W|:     adapter.select_by_importance_(scores)
    v ← 0 ∈ R^k;   ΔW = scatter(S, v)          (d_out×d_in, k non-zeros)
    y = (W0 + ΔW) x + b                       # on-the-fly merge: one matmul per call

The chosen entries are stored with the adapter (an index buffer), so loading is exact even if the
base weights used for the magnitude mask are later modified.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.method import BaseFn, LayerAdapter, register
from ._factors import dense_linear, require


@register("shira")
class SHiRA(LayerAdapter):
    family = "structured-full-rank"
    summary = "Train a fixed sparse set of r·(d_in+d_out) weight entries (chosen by importance): sparse, high rank."
    formula = "r·(d_in + d_out)"
    size_knob: ClassVar[str | None] = "r"
    # The generic suite compares a bf16 copy of the model with the fp32 one; a magnitude mask legitimately
    # picks other entries there (bf16 rounding creates ties in |W0|), so it runs the random mask and
    # tests/test_wave2_methods.py checks the magnitude mask separately.
    test_config: ClassVar[dict[str, Any]] = {"r": 2, "mask": "random"}

    @dataclasses.dataclass
    class Config:
        r: int = 32
        mask: str = "magnitude"  # "magnitude" (top-|W0|) or "random"

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        require(cfg.r >= 1, "shira", f"r must be ≥ 1, got {cfg.r}")
        require(cfg.mask in ("magnitude", "random"), "shira", f"mask must be 'magnitude' or 'random', got {cfg.mask!r}")

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        d_out, d_in = self.dims(base)
        k = self.param_count(base, cfg)
        object.__setattr__(self, "_base", base)
        self.shape = (d_out, d_in)
        if cfg.mask == "magnitude":
            scores = base.weight.detach().float().abs().flatten()
        else:
            scores = torch.rand(d_out * d_in, device=base.weight.device)
        self.register_buffer("entries", self._top(scores, k))
        self.shira_values = nn.Parameter(torch.zeros(k))

    @staticmethod
    def _top(scores: Tensor, k: int) -> Tensor:
        """Flat indices of the k largest scores, in increasing index order (ties broken by index)."""
        order = torch.sort(scores, descending=True, stable=True).indices[:k]
        return torch.sort(order).values

    @torch.no_grad()
    def select_by_importance_(self, scores: Tensor) -> None:
        """Re-choose the trained entries as the top-k of ``scores`` (shape d_out×d_in) and zero the values."""
        require(tuple(scores.shape) == self.shape, "shira",
                f"importance scores must have shape {self.shape}, got {tuple(scores.shape)}")
        self.entries.copy_(self._top(scores.detach().float().flatten().to(self.entries.device), self.entries.numel()))
        self.shira_values.zero_()

    def _delta(self) -> Tensor:
        flat = self.shira_values.new_zeros(self.shape[0] * self.shape[1])
        return flat.scatter(0, self.entries, self.shira_values).view(self.shape)

    def forward(self, x: Tensor, base_fn: BaseFn) -> Tensor:
        xs = x.to(self.shira_values.dtype)
        if base_fn is self._base and isinstance(self._base, nn.Linear):  # on-the-fly merge: one matmul
            w = self._base.weight.to(xs.dtype) + self._delta()
            bias = self._base.bias.to(xs.dtype) if self._base.bias is not None else None
            return F.linear(xs, w, bias).to(x.dtype)
        y = base_fn(x)
        return y + F.linear(xs, self._delta()).to(y.dtype)

    def delta_weight(self, weight: Tensor) -> Tensor:
        return self._delta().to(weight.dtype)

    def reference_forward(self, x: Tensor, base: nn.Module) -> Tensor:
        """ΔW written entry by entry: ΔW[e // d_in, e % d_in] = v_k for the k-th chosen flat index e."""
        delta = torch.zeros(self.shape, dtype=torch.float64)
        d_in = self.shape[1]
        for e, v in zip(self.entries.tolist(), self.shira_values.detach().double().tolist()):
            delta[e // d_in, e % d_in] = v
        return dense_linear(x, base, delta)

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Config) -> int:
        d_out, d_in = cls.dims(base)
        k = cfg.r * (d_in + d_out)
        require(k <= d_out * d_in, "shira",
                f"r={cfg.r} asks for {k} entries but this {d_out}×{d_in} layer has only {d_out * d_in}")
        return k
