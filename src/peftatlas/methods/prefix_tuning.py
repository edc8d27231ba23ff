"""Prefix tuning: trainable per-layer key/value prefixes (Li & Liang, ACL-IJCNLP 2021, arXiv:2101.00190).

Hypothesis: task adaptation is an input-dependent bias of each attention output toward a learned
p-dimensional value subspace, without changing the attention among the content tokens
(a head's output becomes (1 − λ(x))·Attn(x, content) + λ(x)·Attn(x, prefix); He et al., arXiv:2110.04366).

Insertion point: attention cache — the prefixes enter every self-attention layer through the
model's own key/value cache (``past_key_values``; ``cache`` from transformers 5.24), so any
transformers model whose attention reads a cache works, encoder (BERT) or decoder (Llama, GPT-2's
fused ``c_attn``), in ``forward`` and in ``generate()``. In encoder-decoder models (T5) the encoder
stack carries no cache, so there each attention layer puts its own prefix in front of its keys and
values when it is called (a one-call cache in the encoder; the decoder's cache on its first step),
widening the layer's mask by ``p`` always-visible positions. Each stack (encoder, decoder) with a
prefix needs one on every layer.

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
from collections.abc import Callable
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

SELF_ATTENTION = r"(.*\.)?(self_attn|attention\.self|self_attention|SelfAttention|attn)"
INITS = ("projected", "normal")


KVProjection = tuple[int, int, Callable[[Tensor], tuple[Tensor, Tensor]]]


def kv_projection(module: nn.Module) -> KVProjection | None:
    """(key width, input width, ``h ↦ (W_k h, W_v h)``) of an attention module's key/value projections:
    separate ``k_proj``/``v_proj`` (Llama), ``key``/``value`` (BERT), ``k``/``v`` (T5), or GPT-2's fused
    ``c_attn`` (a ``Conv1D`` computing ``[q | k | v]``)."""
    for k, v in (("k_proj", "v_proj"), ("key", "value"), ("k", "v")):
        kp, vp = getattr(module, k, None), getattr(module, v, None)
        if isinstance(kp, nn.Linear) and isinstance(vp, nn.Linear):
            return kp.out_features, kp.in_features, lambda h, kp=kp, vp=vp: (kp(h), vp(h))
    fused, width = getattr(module, "c_attn", None), getattr(module, "split_size", None)
    weight = getattr(fused, "weight", None)
    if isinstance(width, int) and isinstance(weight, Tensor) and weight.dim() == 2 and weight.shape[1] == 3 * width:
        return width, int(weight.shape[0]), lambda h, f=fused, w=width: tuple(f(h).split(w, dim=-1)[1:])
    return None


def _head_dim(module: nn.Module) -> int | None:
    for attr in ("head_dim", "attention_head_size", "key_value_proj_dim"):
        value = getattr(module, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _is_cross_attention(module: nn.Module) -> bool:
    return "Cross" in type(module).__name__ or bool(getattr(module, "is_cross_attention", False))


def why_not_prefixable(module: nn.Module) -> str | None:
    """Why ``module`` cannot take a prefix (None: it can): it must be a self-attention module with a
    ``layer_idx``, key/value projections, a head size, and a forward that takes a key/value cache."""
    kind = type(module).__name__
    if not isinstance(getattr(module, "layer_idx", None), int):
        return f"{kind} has no integer layer_idx (the cache is indexed by layer)"
    if _is_cross_attention(module):
        return f"{kind} is cross-attention"
    if kv_projection(module) is None:
        return f"{kind} has no key/value projections prefix tuning can read (k_proj/v_proj, key/value, k/v or c_attn)"
    if _head_dim(module) is None:
        return f"{kind} states no head size (head_dim)"
    params = inspect.signature(module.forward).parameters
    if not any(name in params for name in CACHE_ARGUMENTS):
        return f"{kind}.forward takes no key/value cache argument ({' / '.join(CACHE_ARGUMENTS)})"
    return None


def reads_kv_cache(module: nn.Module) -> bool:
    """A self-attention module that appends to a key/value cache (see :func:`why_not_prefixable`)."""
    return why_not_prefixable(module) is None


def _looks_like_attention(name: str, module: nn.Module) -> bool:
    """By name only, for error messages: ``*Attention*`` types and ``*attn*`` / ``*attention*`` paths."""
    last = name.rsplit(".", 1)[-1].lower()
    return "attention" in type(module).__name__.lower() or "attn" in last or "attention" in last


def _per_layer(module: nn.Module) -> bool:
    """Encoder-decoder models (T5): the encoder stack passes no cache, so each layer adds its own prefix."""
    return bool(getattr(getattr(module, "config", None), "is_encoder_decoder", False))


def _stack(module: nn.Module) -> str:
    return "decoder" if getattr(module, "is_decoder", False) else "encoder"


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

    class Testing:
        config: ClassVar[dict[str, Any]] = {"num_virtual_tokens": 3}
        skip: ClassVar[dict[str, str]] = {
            "mlp": "the MLP has no attention and no key/value cache",
            "vit": "ViT's attention does not read a key/value cache (raises MethodError; tested)",
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
        modules = list(model.named_modules())
        if not any(reads_kv_cache(m) for _, m in modules):
            attention = sorted(((n, m) for n, m in modules if n and _looks_like_attention(n, m)),
                               key=lambda nm: not isinstance(getattr(nm[1], "layer_idx", None), int))
            reason = (f"its attention module {attention[0][0]} cannot take one: {why_not_prefixable(attention[0][1])}"
                      if attention else "it has no attention modules")
            raise MethodError(f"prefix_tuning needs self-attention layers that read a key/value cache; "
                              f"{type(model).__name__}: {reason}")
        if not any(_per_layer(m) for _, m in modules) and not forward_accepts(model, cache_keyword()):
            raise MethodError(f"prefix_tuning: {type(model).__name__}.forward does not accept {cache_keyword()}")

    @classmethod
    def build_shared(cls, targets: dict[str, nn.Module], cfg: Config) -> None:
        """Every layer of a stack (encoder, decoder) needs a prefix: the key length is shared by its layers."""
        stacks: dict[str, list[nn.Module]] = {}
        for m in targets.values():
            stacks.setdefault(_stack(m), []).append(m)
        for stack, members in stacks.items():
            indices = sorted(m.layer_idx for m in members)
            total = max([getattr(getattr(m, "config", None), "num_hidden_layers", 0) or 0 for m in members]
                        + [len(indices)])
            if indices != list(range(total)):
                where = f" of the {stack}" if len(stacks) > 1 or _per_layer(members[0]) else ""
                raise MethodError(
                    f"prefix_tuning: every attention layer{where} needs a prefix (its layers share one key length); "
                    f"got layer indices {indices} of {total}")
        return None

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        reason = why_not_prefixable(base)
        if reason is not None:
            raise MethodError(f"prefix_tuning: {reason}")
        kv_dim, d_in, project = kv_projection(base)  # type: ignore[misc]
        self.layer_idx: int = base.layer_idx
        self.head_dim: int = _head_dim(base)  # type: ignore[assignment]
        self.per_layer = _per_layer(base)
        self.causal = bool(getattr(base, "is_decoder", False))
        if kv_dim % self.head_dim:
            raise MethodError(f"prefix_tuning: key width {kv_dim} is not a multiple of the head size {self.head_dim}")
        p = cfg.num_virtual_tokens
        if cfg.init == "projected":
            ref = next(base.parameters())
            with torch.no_grad():
                keys, values = (t.float() for t in project(torch.randn(p, d_in).to(ref)))
        else:
            keys, values = torch.randn(p, kv_dim), torch.randn(p, kv_dim)
        self.prefix_key = nn.Parameter(keys.detach().clone())
        self.prefix_value = nn.Parameter(values.detach().clone())

    # --- layer level: the attention module runs unchanged (it reads the prefix from the cache) --------
    def forward(self, x: Tensor, base_fn: BaseFn) -> Tensor:
        return self.functional_forward(base_fn, (x,), {}) if self.per_layer else base_fn(x)

    def functional_forward(self, base: nn.Module, args: tuple, kwargs: dict) -> Any:
        """Per-layer mode (encoder-decoder models): put this layer's prefix in front of its keys and values.

        The decoder's cache gets the prefix on its first step and keeps it; an encoder call (no cache)
        gets a one-call cache. The mask the stack built for the ``n`` content keys is widened by ``p``
        visible columns (a decoder's implicit causal mask is made explicit, shifted by ``p``).
        """
        if not self.per_layer:
            return base(*args, **kwargs)
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        hidden = args[0] if args else kwargs["hidden_states"]
        params = inspect.signature(base.forward).parameters
        key = next((k for k in CACHE_ARGUMENTS if kwargs.get(k) is not None), None) or next(
            k for k in CACHE_ARGUMENTS if k in params)
        cache = kwargs.get(key)
        own = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
        if own is not None and own.get_seq_length(self.layer_idx) > 0:
            return base(*args, **kwargs)  # a continuation: the cache already holds the prefix
        batch, n = int(hidden.shape[0]), int(hidden.shape[1])
        keys, values = self.cache_entries(batch, hidden.dtype)
        if own is None:
            own = cache = DynamicCache()
        own.update(keys.to(hidden.device), values.to(hidden.device), self.layer_idx)
        mask_key = "mask" if "mask" in params else "attention_mask"
        kwargs = {**kwargs, key: cache, mask_key: self._widened_mask(kwargs.get(mask_key), n, hidden.device)}
        return base(*args, **kwargs)

    def _widened_mask(self, mask: Tensor | None, n: int, device: torch.device) -> Tensor | None:
        """The mask over ``p`` prefix + ``n`` content keys, from the stack's mask over the content keys."""
        p = self.cfg.num_virtual_tokens
        if mask is not None:
            if mask.shape[-1] != n:
                return mask
            lead = torch.ones if mask.dtype == torch.bool else torch.zeros
            return torch.cat([lead(*mask.shape[:-1], p, dtype=mask.dtype, device=mask.device), mask], dim=-1)
        if not self.causal or n == 1:
            return None
        rows, cols = torch.arange(n, device=device)[:, None], torch.arange(p + n, device=device)[None, :]
        return (cols < p + rows + 1).view(1, 1, n, p + n)

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
        projection = kv_projection(base)
        if projection is None:
            raise MethodError(f"prefix_tuning: {why_not_prefixable(base)}")
        return 2 * cfg.num_virtual_tokens * projection[0]

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
        if layers[0].per_layer:
            return kwargs  # encoder-decoder models: each layer adds its own prefix (functional_forward)
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
        if any(a.per_layer for a in adapters_of(model, name, cls).values()):
            return kwargs
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
