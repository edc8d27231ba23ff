"""LoReFT: low-rank linear subspace representation fine-tuning (Wu et al., NeurIPS 2024, arXiv:2404.03592).

Hypothesis: task behaviour can be installed by editing hidden states inside a low-dimensional
(r ≈ 4–32) linear subspace at a few positions; the weights stay untouched.

Insertion point: block output — the residual stream leaving chosen transformer blocks, at the first
``first_n`` and last ``last_n`` real (non-padding) tokens of each sequence.

Pseudocode::

    R ∈ R^{r×d} with orthonormal rows (R = orth(Θ), Θ trainable);  W ∈ R^{r×d};  b ∈ R^r
    init: Θ random orthonormal; W = R, b = 0  (an exact no-op; pyreft draws W as a fresh nn.Linear)
    for each adapted block l and each selected position t:
        h = block_l(...)[t]
        h ← h + Rᵀ (W h + b − R h)          # replace h's coordinates in span(Rᵀ) by W h + b
    parameters per block: 2·r·d + r

The intervention is tied across the prefix and suffix positions (pyreft's ``share_weights``). With a
key/value cache, only the prefill call is edited (cached one-token steps are not), as in pyreft's
generation. Not mergeable: it acts on chosen positions of the residual stream, not on a weight.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..core.method import BaseFn, LayerAdapter, MethodError, register
from ._model_level import adapters_of, cache_argument, positional_mask, shared_state

BLOCKS = r"(.*\.)?(layer|layers|h|blocks|block)\.\d+"


def block_hidden_size(block: nn.Module) -> int:
    """Width of the residual stream a block reads and writes (its first norm, else its first linear input)."""
    for m in block.modules():
        w = getattr(m, "weight", None)
        if ("Norm" in type(m).__name__ or isinstance(m, nn.LayerNorm)) and isinstance(w, Tensor) and w.dim() == 1:
            return int(w.numel())
    for m in block.modules():
        if isinstance(m, nn.Linear):
            return int(m.in_features)
    raise MethodError(f"loreft: cannot tell the hidden size of {type(block).__name__} (no norm or linear inside)")


def orthonormal_rows(theta: Tensor) -> Tensor:
    """Rows spanning the row space of ``theta``, orthonormalised by QR with a sign fix (continuous in θ)."""
    q, r = torch.linalg.qr(theta.t())
    return (q * torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(q.dtype)).t()


def _layer_index(block: nn.Module) -> int | None:
    for m in block.modules():
        idx = getattr(m, "layer_idx", None)
        if isinstance(idx, int):
            return idx
    return None


class ReFTState(nn.Module):
    """Per-call state shared by one adapter's blocks: the 2-D attention mask of the current batch."""

    def __init__(self) -> None:
        super().__init__()
        self.attention_mask: Tensor | None = None


@register("loreft")
class LoReFT(LayerAdapter):
    family = "activation"
    insertion = "block output"
    summary = "Edit hidden states in an r-dim orthonormal subspace at the first/last positions of chosen blocks."
    formula = "2·r·d + r per block"
    mergeable = False
    stackable = False
    size_knob: ClassVar[str | None] = "r"
    target_types: ClassVar[tuple[type[nn.Module], ...]] = (nn.Module,)
    default_targets: ClassVar[Any] = BLOCKS
    test_config: ClassVar[dict[str, Any]] = {"r": 4, "first_n": 2, "last_n": 2}
    test_skip: ClassVar[dict[str, str]] = {"mlp": "the MLP has no transformer blocks or token positions"}
    test_atol: ClassVar[float] = 1e-5

    @dataclasses.dataclass
    class Config:
        r: int = 8
        first_n: int = 7  # edit the first first_n real tokens ...
        last_n: int = 7  # ... and the last last_n real tokens of every sequence
        identity_init: bool = True  # W = R, b = 0 (no-op); False: W, b drawn like a fresh nn.Linear
        dropout: float = 0.0

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        if cfg.r < 1:
            raise MethodError(f"loreft: rank r must be ≥ 1, got {cfg.r}")
        if cfg.first_n < 0 or cfg.last_n < 0 or cfg.first_n + cfg.last_n == 0:
            raise MethodError(f"loreft: first_n and last_n must be ≥ 0 and not both 0, got {cfg.first_n}, {cfg.last_n}")
        if not 0.0 <= cfg.dropout < 1.0:
            raise MethodError(f"loreft: dropout must be in [0, 1), got {cfg.dropout}")

    @classmethod
    def build_shared(cls, targets: dict[str, nn.Module], cfg: Config) -> nn.Module:
        return ReFTState()

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        d = block_hidden_size(base)
        if cfg.r > d:
            raise MethodError(f"loreft: rank r={cfg.r} exceeds the hidden size {d}")
        self.d = d
        self.layer_index = _layer_index(base)
        theta = torch.linalg.qr(torch.randn(d, cfg.r))[0].t().contiguous()
        self.rotation = nn.Parameter(theta)  # Θ; R = orthonormal_rows(Θ)
        if cfg.identity_init:
            weight, bias = theta.clone(), torch.zeros(cfg.r)
        else:
            lin = nn.Linear(d, cfg.r)
            weight, bias = lin.weight.detach().clone(), lin.bias.detach().clone()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    # --- the intervention ---------------------------------------------------------------------------
    def edit(self, h: Tensor) -> Tensor:
        """``Rᵀ (W h + b − R h)`` for every position of ``h`` (..., d), in fp32."""
        R = orthonormal_rows(self.rotation)
        x = self.dropout(h.to(self.weight.dtype))
        return (x @ self.weight.t() + self.bias - x @ R.t()) @ R

    def _selected(self, n: int, batch: int, device: torch.device) -> Tensor:
        state = self.shared
        mask = getattr(state, "attention_mask", None)
        if mask is None or mask.dim() != 2 or mask.shape[1] != n or mask.shape[0] != batch:
            mask = torch.ones(batch, n, dtype=torch.bool, device=device)
        return positional_mask(mask.to(device), self.cfg.first_n, self.cfg.last_n)

    def apply_edit(self, h: Tensor, selected: Tensor) -> Tensor:
        edited = (h.to(self.weight.dtype) + self.edit(h)).to(h.dtype)
        return torch.where(selected[..., None], edited, h)

    def forward(self, x: Tensor, base_fn: BaseFn) -> Tensor:
        h = base_fn(x)
        return self.apply_edit(h, self._selected(h.shape[1], h.shape[0], h.device))

    def functional_forward(self, base: nn.Module, args: tuple, kwargs: dict) -> Any:
        out = base(*args, **kwargs)
        h = out if isinstance(out, Tensor) else out[0]
        if _is_cached_step(self.layer_index, h.shape[1], kwargs):
            return out
        h = self.apply_edit(h, self._selected(h.shape[1], h.shape[0], h.device))
        return h if isinstance(out, Tensor) else (h, *out[1:])

    @staticmethod
    def mixed_batch_functional_forward(layer: nn.Module, args: tuple, kwargs: dict, rows: list[str],
                                       present: list[str]) -> Any:
        """Run the block once for the whole batch, then edit each row with its own adapter."""
        out = layer.base(*args, **kwargs)
        h = out if isinstance(out, Tensor) else out[0]
        first = layer.adapters[present[0]]
        if _is_cached_step(first.layer_index, h.shape[1], kwargs):
            return out
        result = h
        for name in present:
            adapter = layer.adapters[name]
            rows_of = torch.tensor([r == name for r in rows], device=h.device)
            selected = adapter._selected(h.shape[1], h.shape[0], h.device) & rows_of[:, None]
            result = adapter.apply_edit(result, selected)
        return result if isinstance(out, Tensor) else (result, *out[1:])

    def reference_forward(self, x: Tensor, base: nn.Module) -> Tensor:
        """Dense oracle: h' = h + h (RᵀW − RᵀR)ᵀ + Rᵀb with the d×d matrices formed explicitly."""
        with torch.no_grad():
            h = base(x)
            h = (h if isinstance(h, Tensor) else h[0]).float()
            R = orthonormal_rows(self.rotation.float())
            M = R.t() @ self.weight.float() - R.t() @ R  # d × d
            edited = h + h @ M.t() + R.t() @ self.bias.float()
            return torch.where(self._selected(h.shape[1], h.shape[0], h.device)[..., None], edited, h)

    # --- model-level: the padding mask locates each sequence's first and last real tokens -------------
    @classmethod
    def transform_model_inputs(cls, model: nn.Module, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        state = shared_state(model, name)
        if state is not None:
            mask = kwargs.get("attention_mask")
            state.attention_mask = mask.bool() if isinstance(mask, Tensor) and mask.dim() == 2 else None
        return kwargs

    @classmethod
    def transform_model_outputs(cls, model: nn.Module, name: str, kwargs: dict[str, Any], outputs: Any) -> Any:
        state = shared_state(model, name)
        if state is not None:
            state.attention_mask = None
        return outputs

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Config) -> int:
        return 2 * cfg.r * block_hidden_size(base) + cfg.r

    @classmethod
    def blocks(cls, model: nn.Module, name: str) -> dict[str, LoReFT]:
        """This adapter's interventions by block name (for probes: R's rows span the edited subspace)."""
        return adapters_of(model, name, cls)


def _is_cached_step(layer_index: int | None, n: int, kwargs: dict) -> bool:
    """A one-token call continuing a key/value cache (generation after the prefill)."""
    past = cache_argument(kwargs)
    if past is None or n > 1 or not hasattr(past, "get_seq_length"):
        return False
    return past.get_seq_length(layer_index or 0) > n
