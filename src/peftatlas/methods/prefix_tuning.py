"""Prefix tuning: trainable per-layer key/value prefixes (Li & Liang, ACL-IJCNLP 2021, arXiv:2101.00190).

Hypothesis: task adaptation is an input-dependent bias of each attention output toward a learned
p-dimensional value subspace, without changing the attention among the content tokens
(a head's output becomes (1 − λ(x))·Attn(x, content) + λ(x)·Attn(x, prefix); He et al., arXiv:2110.04366).

Insertion point: attention cache — the prefixes enter every self-attention layer through the
model's own key/value cache (``past_key_values``; ``cache`` from transformers 5.24), so any
transformers model whose attention reads a cache works, encoder (BERT) or decoder (Llama), in
``forward`` and in ``generate()``.

Pseudocode::

    for each self-attention layer l:  Pk[l], Pv[l] ∈ R^{p × kv_dim}       # trainable
        (init="projected": Pk = W_k G + b_k, Pv = W_v G + b_v with G ~ N(0, I) — the scale of real keys/values)
    cache ← {l: (Pk[l], Pv[l])}                   # p positions already "seen" by every layer
    mask  ← [1]*p + mask                          # every query may attend to the prefix
    K = concat(Pk[l], W_k H);  V = concat(Pv[l], W_v H);  H = block_l(H, K, V)
    parameters: 2·p·kv_dim per layer

Content tokens keep the positions they have without a prefix (the prefix is positionless). Li &
Liang's MLP reparametrisation is a training aid discarded afterwards; it is not implemented.
Not mergeable; every layer with attention must carry a prefix (the cache length is shared).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..core.method import BaseFn, LayerAdapter, MethodError, register
from ._model_level import (
    CACHE_ARGUMENTS,
    adapters_of,
    batch_and_length,
    cache_argument,
    cache_keyword,
    forward_accepts,
    prepend_ones,
    with_cache,
)

SELF_ATTENTION = r"(.*\.)?(self_attn|attention\.self|self_attention|attn)"
INITS = ("projected", "normal")


def _key_value_projections(module: nn.Module) -> tuple[nn.Linear, nn.Linear] | None:
    for k, v in (("k_proj", "v_proj"), ("key", "value"), ("k", "v")):
        kp, vp = getattr(module, k, None), getattr(module, v, None)
        if isinstance(kp, nn.Linear) and isinstance(vp, nn.Linear):
            return kp, vp
    return None


def _head_dim(module: nn.Module) -> int | None:
    for attr in ("head_dim", "attention_head_size", "key_value_proj_dim"):
        value = getattr(module, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def reads_kv_cache(module: nn.Module) -> bool:
    """A self-attention module that appends to a key/value cache: it has ``layer_idx``, k/v projections,
    a head size, and its forward takes ``past_key_values``."""
    if not isinstance(getattr(module, "layer_idx", None), int) or "Cross" in type(module).__name__:
        return False
    if getattr(module, "is_cross_attention", False) or _key_value_projections(module) is None:
        return False
    if _head_dim(module) is None:
        return False
    params = inspect.signature(module.forward).parameters
    return any(name in params for name in CACHE_ARGUMENTS)


@register("prefix_tuning")
class PrefixTuning(LayerAdapter):
    family = "input-space"
    insertion = "attention cache"
    summary = "p trainable key/value vectors prepended to every self-attention layer through the KV cache."
    formula = "2·p·kv_dim per attention layer"
    mergeable = False
    noop_at_init = False
    supports_mixed_batch = False
    stackable = False
    size_knob: ClassVar[str | None] = "num_virtual_tokens"
    target_types: ClassVar[tuple[type[nn.Module], ...]] = (nn.Module,)
    default_targets: ClassVar[Any] = SELF_ATTENTION
    test_config: ClassVar[dict[str, Any]] = {"num_virtual_tokens": 3}
    test_skip: ClassVar[dict[str, str]] = {
        "mlp": "the MLP has no attention and no key/value cache",
        "vit": "ViT's attention does not read a key/value cache (raises MethodError; tested)",
        "gpt2": "GPT-2's fused c_attn is not supported yet (issue 17 point 8)",
    }

    @dataclasses.dataclass
    class Config:
        num_virtual_tokens: int = 20
        init: str = "projected"  # "projected": the layer's own k/v projections of N(0, I) inputs; "normal": N(0, 1)

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        if cfg.num_virtual_tokens < 1:
            raise MethodError(f"prefix_tuning: num_virtual_tokens must be ≥ 1, got {cfg.num_virtual_tokens}")
        if cfg.init not in INITS:
            raise MethodError(f"prefix_tuning: init must be one of {', '.join(INITS)}, got {cfg.init!r}")

    @classmethod
    def can_adapt(cls, module: nn.Module) -> bool:
        return reads_kv_cache(module)

    @classmethod
    def check_model(cls, model: nn.Module, cfg: Config) -> None:
        if not any(reads_kv_cache(m) for m in model.modules()):
            raise MethodError(
                f"prefix_tuning needs self-attention layers that read a key/value cache (past_key_values); "
                f"{type(model).__name__} has none")
        if not forward_accepts(model, cache_keyword()):
            raise MethodError(f"prefix_tuning: {type(model).__name__}.forward does not accept {cache_keyword()}")

    @classmethod
    def build_shared(cls, targets: dict[str, nn.Module], cfg: Config) -> None:
        indices = sorted(m.layer_idx for m in targets.values())
        configs = [getattr(m, "config", None) for m in targets.values()]
        total = max([getattr(c, "num_hidden_layers", 0) or 0 for c in configs] + [len(indices)])
        if indices != list(range(total)):
            raise MethodError(
                f"prefix_tuning: every attention layer needs a prefix (the cache length is shared by all layers); "
                f"got layer indices {indices}")
        return None

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        if not reads_kv_cache(base):
            raise MethodError(f"prefix_tuning: {type(base).__name__} does not read a key/value cache")
        k_proj, v_proj = _key_value_projections(base)  # type: ignore[misc]
        self.layer_idx: int = base.layer_idx
        self.head_dim: int = _head_dim(base)  # type: ignore[assignment]
        kv_dim = k_proj.out_features
        if kv_dim % self.head_dim:
            raise MethodError(f"prefix_tuning: key width {kv_dim} is not a multiple of the head size {self.head_dim}")
        p = cfg.num_virtual_tokens
        if cfg.init == "projected":
            with torch.no_grad():
                g = torch.randn(p, k_proj.in_features).to(k_proj.weight)
                keys, values = k_proj(g).float(), v_proj(g).float()
        else:
            keys, values = torch.randn(p, kv_dim), torch.randn(p, kv_dim)
        self.prefix_key = nn.Parameter(keys.detach().clone())
        self.prefix_value = nn.Parameter(values.detach().clone())

    # --- layer level: the attention module runs unchanged (it reads the prefix from the cache) --------
    def forward(self, x: Tensor, base_fn: BaseFn) -> Tensor:
        return base_fn(x)

    def functional_forward(self, base: nn.Module, args: tuple, kwargs: dict) -> Any:
        return base(*args, **kwargs)

    def reference_forward(self, x: Tensor, base: nn.Module) -> Tensor:
        return base(x)

    def cache_entries(self, batch: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(keys, values), each (batch, kv_heads, p, head_dim), as the cache stores them."""
        p = self.cfg.num_virtual_tokens

        def heads(t: Tensor) -> Tensor:
            return t.view(p, -1, self.head_dim).transpose(0, 1).unsqueeze(0).expand(batch, -1, -1, -1).to(dtype)

        return heads(self.prefix_key), heads(self.prefix_value)

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Config) -> int:
        projections = _key_value_projections(base)
        if projections is None:
            raise MethodError(f"prefix_tuning: {type(base).__name__} has no key/value projections")
        return 2 * cfg.num_virtual_tokens * projections[0].out_features

    # --- model level -------------------------------------------------------------------------------------
    @classmethod
    def _with_prefix(cls, model: nn.Module, name: str, kwargs: dict[str, Any], batch_factor: int,
                     positions_from_mask: bool) -> dict[str, Any]:
        from transformers.cache_utils import DynamicCache

        past = cache_argument(kwargs)
        if past is not None and past.get_seq_length() > 0:
            return kwargs  # a continuation: the cache already holds the prefix
        layers = sorted(adapters_of(model, name, cls).values(), key=lambda a: a.layer_idx)
        if not layers:
            raise MethodError(f"prefix_tuning: adapter {name!r} has no attention layers in this model")
        batch, n, device = batch_and_length(kwargs)
        dtype = _model_dtype(model)
        cache = past if past is not None else DynamicCache()
        for adapter in layers:
            keys, values = adapter.cache_entries(batch * batch_factor, dtype)
            cache.update(keys.to(device), values.to(device), adapter.layer_idx)
        kwargs = with_cache(kwargs, cache)
        user_mask = kwargs.get("attention_mask")
        kwargs["attention_mask"] = prepend_ones(user_mask, batch, n, layers[0].cfg.num_virtual_tokens, device)
        if kwargs.get("position_ids") is None and forward_accepts(model.model, "position_ids"):
            kwargs["position_ids"] = _content_positions(user_mask, batch, n, device, positions_from_mask)
        return kwargs

    @classmethod
    def transform_model_inputs(cls, model: nn.Module, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        return cls._with_prefix(model, name, kwargs, 1, positions_from_mask=False)

    @classmethod
    def transform_generate_inputs(cls, model: nn.Module, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        if "input_ids" not in kwargs:
            raise MethodError("prefix_tuning: generate() needs input_ids")
        config = kwargs.get("generation_config") or getattr(model.model, "generation_config", None)
        beams = kwargs.get("num_beams", getattr(config, "num_beams", 1)) or 1
        returns = kwargs.get("num_return_sequences", getattr(config, "num_return_sequences", 1)) or 1
        # generate() repeats every row max(beams, returns) times but leaves a given cache alone
        return cls._with_prefix(model, name, kwargs, max(int(beams), int(returns)), positions_from_mask=True)


def _model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _content_positions(mask: Tensor | None, batch: int, n: int, device: torch.device, from_mask: bool) -> Tensor:
    """The positions the model would give the tokens without a prefix: 0..n−1 (forward's default), or, as
    ``generate()`` does, counted over the real tokens of a (left-)padded mask."""
    if from_mask and isinstance(mask, Tensor):
        pos = mask.long().cumsum(-1) - 1
        return pos.masked_fill(mask == 0, 0)
    return torch.arange(n, device=device).unsqueeze(0).expand(batch, n)
