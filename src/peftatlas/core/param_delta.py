"""Methods that train (a subset of) the base module's own parameters, as additive deltas.

For each selected parameter ``p`` of the base module the adapter holds ``δ_p`` (zeros at init) and
the module runs with ``p + δ_p``. Keeping the delta apart from ``p`` gives these reference methods
(full fine-tuning, BitFit, LayerNorm tuning) the same semantics as every other adapter: exact
disable, exact unmerge, several adapters, and an adapter file that holds only what was trained.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .method import BaseFn, LayerAdapter, MethodError


class ParameterDelta(LayerAdapter):
    """``p' = p + δ_p`` for the base parameters chosen by :meth:`selects`."""

    target_types: ClassVar[tuple[type[nn.Module], ...]] = (nn.Module,)
    default_targets: ClassVar[Any] = "all"
    stackable: ClassVar[bool] = False

    @classmethod
    def selects(cls, param_name: str, module: nn.Module) -> bool:
        """Which of the module's own parameters get a delta (default: all of them)."""
        return True

    @classmethod
    def can_adapt(cls, module: nn.Module) -> bool:
        return any(cls.selects(n, module) for n, _ in module.named_parameters(recurse=False))

    def __init__(self, base: nn.Module, cfg: Any, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        object.__setattr__(self, "_base", base)
        self.deltas = nn.ParameterDict({
            name: nn.Parameter(torch.zeros(p.shape, dtype=torch.float32, device=p.device))
            for name, p in base.named_parameters(recurse=False) if self.selects(name, base)
        })
        if not self.deltas:
            raise MethodError(f"{self.name}: {type(base).__name__} has no parameter this method trains")

    def _effective(self, base: nn.Module) -> dict[str, Tensor]:
        params = dict(base.named_parameters(recurse=False))
        return {k: (params[k].float() + d).to(params[k].dtype) for k, d in self.deltas.items()}

    def functional_forward(self, base: nn.Module, args: tuple, kwargs: dict) -> Any:
        return torch.func.functional_call(base, self._effective(base), args, kwargs, strict=False)

    def forward(self, x: Tensor, base_fn: BaseFn) -> Tensor:
        if base_fn is not self._base:
            raise MethodError(f"{self.name} adapters cannot be stacked after another adapter on one layer")
        return self.functional_forward(self._base, (x,), {})

    def merged_params(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        out = dict(params)
        for k, d in self.deltas.items():
            out[k] = (params[k].float() + d.detach().float()).to(params[k].dtype)
        return out

    def reference_forward(self, x: Tensor, base: nn.Module) -> Tensor:
        params = {k: v.detach().float() for k, v in base.named_parameters(recurse=False)}
        return torch.func.functional_call(
            base, self.merged_params(params), (x.float() if x.is_floating_point() else x,), strict=False
        )

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Any) -> int:
        return sum(p.numel() for n, p in base.named_parameters(recurse=False) if cls.selects(n, base))
