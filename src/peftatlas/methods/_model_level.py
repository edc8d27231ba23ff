"""Helpers shared by the model-level methods (soft prompts, prefixes, interventions, routers).

These methods keep their parameters in layer adapters like every other method, and use the
model-level hooks of :class:`peftatlas.core.method.LayerAdapter` to act on the whole forward call
(the token embeddings, the key/value cache, the padding mask, task ids).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from ..core.method import LayerAdapter, MethodError

A = TypeVar("A", bound=LayerAdapter)

# Input token-embedding modules: BERT/RoBERTa, Llama/Mistral/Qwen/T5 encoders, GPT-2, GPT-NeoX.
INPUT_EMBEDDINGS = r"(.*\.)?(word_embeddings|embed_tokens|wte|embed_in)"


def adapters_of(model: nn.Module, name: str, cls: type[A]) -> dict[str, A]:
    """Adapter ``name``'s layers of method ``cls`` in model order, by layer name."""
    out: dict[str, A] = {}
    for layer_name, layer in model.adapted_layers().items():
        if name in layer.adapters and isinstance(layer.adapters[name], cls):
            out[layer_name] = layer.adapters[name]
    return out


def shared_state(model: nn.Module, name: str) -> nn.Module | None:
    """Adapter ``name``'s model-wide state (``model.shared[name]``), or None."""
    return model.shared[name] if name in model.shared else None  # noqa: SIM401 (ModuleDict has no .get)


def single_adapter(model: nn.Module, name: str, cls: type[A]) -> tuple[str, A]:
    """The one layer that holds adapter ``name`` of ``cls`` (soft prompts live on one embedding)."""
    found = adapters_of(model, name, cls)
    if len(found) != 1:
        raise MethodError(f"{cls.name}: adapter {name!r} must sit on exactly one module, found {sorted(found)}")
    return next(iter(found.items()))


def forward_accepts(model: nn.Module, *names: str) -> bool:
    """Whether ``model.forward`` takes all of ``names`` (or ``**kwargs``)."""
    params = inspect.signature(model.forward).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return True
    return all(n in params for n in names)


# The key/value cache argument: ``past_key_values`` up to transformers 5.23, ``cache`` from 5.24.
CACHE_ARGUMENTS = ("cache", "past_key_values", "past_key_value")


@functools.lru_cache(maxsize=1)
def cache_keyword() -> str:
    """The name under which the installed transformers passes a key/value cache to a model's forward."""
    from transformers.models.llama.modeling_llama import LlamaModel

    return "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


def cache_argument(kwargs: dict[str, Any]) -> Any:
    """The key/value cache passed in ``kwargs`` under any of its names, or None."""
    for key in CACHE_ARGUMENTS:
        if kwargs.get(key) is not None:
            return kwargs[key]
    return None


def with_cache(kwargs: dict[str, Any], cache: Any) -> dict[str, Any]:
    """``kwargs`` with ``cache`` under the installed transformers' name (any other spelling removed)."""
    kwargs = {k: v for k, v in kwargs.items() if k not in CACHE_ARGUMENTS}
    kwargs[cache_keyword()] = cache
    return kwargs


def positional_mask(mask: Tensor, first_n: int, last_n: int) -> Tensor:
    """Boolean (batch, n): the first ``first_n`` and last ``last_n`` real tokens of each row of ``mask``."""
    mask = mask.bool()
    from_start = torch.cumsum(mask.long(), dim=1) - 1
    from_end = torch.flip(torch.cumsum(torch.flip(mask.long(), [1]), dim=1), [1]) - 1
    return mask & ((from_start < first_n) | (from_end < last_n))


def prepend_ones(mask: Tensor | None, batch: int, n: int, p: int, device: torch.device) -> Tensor:
    """A 2-D attention mask for ``p`` virtual positions followed by the ``n`` real ones."""
    if mask is None:
        mask = torch.ones(batch, n, dtype=torch.long, device=device)
    if mask.dim() != 2:
        raise MethodError(f"soft prompts and prefixes need a 2-D attention mask (batch, length); got {mask.dim()}-D")
    return torch.cat([torch.ones(mask.shape[0], p, dtype=mask.dtype, device=mask.device), mask], dim=1)


def batch_and_length(kwargs: dict[str, Any]) -> tuple[int, int, torch.device]:
    """(batch, sequence length, device) of the call, from input_ids or inputs_embeds."""
    ids, embeds = kwargs.get("input_ids"), kwargs.get("inputs_embeds")
    ref = ids if ids is not None else embeds
    if not isinstance(ref, Tensor):
        raise MethodError("this method needs input_ids or inputs_embeds as keyword arguments")
    return int(ref.shape[0]), int(ref.shape[1]), ref.device
