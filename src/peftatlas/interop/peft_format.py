"""Reading and writing HF PEFT's on-disk adapter format (``adapter_config.json`` + safetensors).

The format, as PEFT 0.21 writes it::

    adapter_config.json          {"peft_type": "LORA", "target_modules": [...], "r": 8, ...}
    adapter_model.safetensors    base_model.model.<module path>.<per-layer key>   (e.g. lora_A.weight)
                                 base_model.<model-wide key>                      (e.g. vera_A)
                                 base_model.model.<head module>.<param>            (modules_to_save)

Export writes the exact module names as ``target_modules`` and the trained head as
``modules_to_save`` (and ``fan_in_fan_out=true`` when the targets are GPT-2 ``Conv1D`` layers, as
PEFT does);  import takes the adapted modules from the tensor keys (so PEFT's
``layers_to_transform`` / regex targets need no re-interpretation) and refuses, with a message
naming the field, any configuration our method cannot reproduce exactly. Only safetensors are
read; a pickled ``adapter_model.bin`` is refused. PEFT's default ``save_embedding_layers="auto"``
also writes the *base* weights of targeted ``embed_tokens`` / ``lm_head`` layers
(``<module>.base_layer.weight``); on import those must equal the model's own weights (then they
carry no information) or the import is refused.

PEFT's ``bias="lora_only"`` (``"vera_only"``, ...) trains the biases of the adapted layers and
saves them as ``<module>.base_layer.bias``; ``bias="all"`` trains and saves every bias of the model
(``<module>.bias``, for a ``modules_to_save`` head also ``<head>.original_module.bias`` and
``<head>.modules_to_save.bias``). A peftatlas adapter changes no base bias (``y = W₀x + b₀ + ΔW x``
with ``b₀`` frozen) unless its method trains a bias change (``Converter.bias_field``: LoRA's
``bias=True``, ``y = W₀x + b₀ + Δb + ΔW x``). For such a method a bias-training file imports with
``Δb = b_file − b₀`` on each adapted layer, and, under ``bias="all"``, every other module whose saved
bias differs from the model's becomes a trained copy beside the pretrained one (as a
``modules_to_save`` head: the disabled model stays the pretrained one); export writes
``bias="lora_only"`` and ``base_layer.bias = b₀ + Δb``. For every other method such a file imports
exactly when each saved bias equals this model's own (PEFT's function is then ours) and a trained
bias is refused with a one-line error; their export writes ``bias="none"``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from ..core.io import atomic_write_dir
from ..core.layer_types import GPT2_CONV1D, layer_type
from ..core.model import AdaptedModel
from .registry import Converter, InteropError, check_shape, converter_for_method, converter_for_peft

CONFIG = "adapter_config.json"
TENSORS = "adapter_model.safetensors"
LAYER_PREFIX = "base_model.model."
SHARED_PREFIX = "base_model."
BASE_COPY_SUFFIXES = ("base_layer.weight", "base_layer.bias")  # PEFT's save_embedding_layers copies
_BASE_COPY_ENDINGS = tuple("." + s for s in BASE_COPY_SUFFIXES)
# Path parts between a module and its own parameter in PEFT keys of base tensors (adapted layer, head's original)
_BASE_PARTS = (".base_layer.", ".original_module.")


def peft_config_dict(model: AdaptedModel, name: str | None = None, include_head: bool = True,
                     **options: Any) -> dict[str, Any]:
    """The ``adapter_config.json`` content for adapter ``name`` (default: the first active)."""
    name, conv = _resolve(model, name)
    spec = model.specs[name]
    heads = model.head_names if include_head and model.head_parameters() else []
    method_fields = conv.model_config_to_peft(model, name, **options)
    if "fan_in_fan_out" in method_fields:  # PEFT's own rule: True exactly on GPT-2 Conv1D layers
        layers = model.adapted_layers()
        method_fields["fan_in_fan_out"] = any(
            layer_type(layers[t].base) == GPT2_CONV1D for t in spec.targets if t in layers)
    return {
        "peft_type": conv.peft_type,
        "task_type": None,
        "target_modules": list(spec.targets),
        "modules_to_save": list(heads) or None,
        "base_model_name_or_path": getattr(getattr(model.model, "config", None), "_name_or_path", None) or None,
        "inference_mode": True,
        "revision": None,
        **method_fields,
    }


def export_peft(model: AdaptedModel, path: str | os.PathLike, name: str | None = None,
                include_head: bool = True, **options: Any) -> Path:
    """Write adapter ``name`` (and the trained head) in HF PEFT's format to folder ``path``.

    ``options`` go to the method's converter (VeRA: ``save_projection``). Raises
    :class:`InteropError` for a method PEFT does not have.
    """
    name, conv = _resolve(model, name)
    config = peft_config_dict(model, name, include_head, **options)
    tensors: dict[str, Tensor] = {}
    for layer_name, layer in model.adapted_layers().items():
        if name in layer.adapters:
            conv.check_layer_type(layer_name, layer.base)
            ours = conv.layer_to_peft(layer.adapters[name])
            for k, v in conv.to_layer_layout(ours, layer.base).items():
                tensors[f"{LAYER_PREFIX}{layer_name}.{k}"] = v
            delta = getattr(layer.adapters[name], "bias_delta", None)
            if delta is not None:  # PEFT's trained bias: b0 + Δb in the base layer's place
                b0 = layer.base.bias.detach().float()
                tensors[f"{LAYER_PREFIX}{layer_name}.base_layer.bias"] = b0 + delta.detach().float()
    for k, v in conv.shared_to_peft(model, name, **options).items():
        tensors[f"{SHARED_PREFIX}{k}"] = v
    if config["modules_to_save"]:
        for k, v in model.head_parameters().items():
            tensors[f"{LAYER_PREFIX}{k}"] = v
    tensors = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
               for k, v in tensors.items()}
    from safetensors.torch import save

    blob = save(tensors, metadata={"format": "pt"})
    atomic_write_dir(path, {TENSORS: blob, CONFIG: (json.dumps(config, indent=2) + "\n").encode()})
    return Path(path)


def read_peft_files(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Read a PEFT adapter folder; every problem becomes an :class:`InteropError`."""
    folder = Path(path)
    if not folder.is_dir():
        raise InteropError(f"PEFT adapter folder {folder} does not exist")
    cfg_path, tensor_path = folder / CONFIG, folder / TENSORS
    if not cfg_path.is_file():
        raise InteropError(f"{folder} has no {CONFIG}; is it a PEFT adapter folder?")
    if not tensor_path.is_file():
        if (folder / "adapter_model.bin").is_file():
            raise InteropError(f"{folder} holds a pickled adapter_model.bin; peftatlas reads only safetensors "
                               "(re-save it with save_pretrained(..., safe_serialization=True))")
        raise InteropError(f"{folder} has no {TENSORS}")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InteropError(f"corrupt {cfg_path}: {e}") from None
    if not isinstance(cfg, dict) or "peft_type" not in cfg:
        raise InteropError(f"{cfg_path} has no peft_type; not a PEFT adapter config")
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError, ValueError) as e:
        raise InteropError(f"corrupt {tensor_path}: {e}") from None
    return cfg, tensors


def import_peft(model: nn.Module | AdaptedModel, path: str | os.PathLike, name: str = "default",
                trainable: bool = False) -> AdaptedModel:
    """Load a PEFT adapter folder into ``model`` as our method (a plain model is wrapped first).

    The model is left as it was if anything does not fit; the error names the problem.
    """
    cfg, tensors = read_peft_files(path)
    conv = converter_for_peft(cfg)
    conv.check_fixed(cfg)  # a feature we lack is named before its tensors look unknown
    base_copies = _pop_base_tensors(conv, tensors, cfg)
    layers, shared, head = _split_keys(conv, tensors, cfg)
    if not layers:
        raise InteropError(f"{path}: no per-layer {conv.peft_type} tensors found "
                           f"(expected keys ending in {', '.join(conv.peft_layer_suffixes())})")
    hyper = conv.config_from_peft(cfg, layers)
    fresh = not isinstance(model, AdaptedModel)
    bias_deltas: dict[str, Tensor] = {}
    if conv.bias_field is not None and trains_biases(cfg):
        root = model if fresh else model.model
        bias_deltas = _layer_bias_deltas(root, base_copies, layers, path)
        module_biases = _trained_module_biases(root, base_copies, path)
        if module_biases and not fresh:
            raise InteropError(f"{path}: PEFT bias={cfg['bias']!r} trained the bias of "
                               f"{next(iter(module_biases)).rsplit('.', 1)[0]} (not an adapted layer); import it "
                               "into the plain model, where such modules get trained copies")
        head.update(module_biases)
        hyper[conv.bias_field] = True
    wrapped = AdaptedModel(model, head=_head_names(cfg, head)) if fresh else model
    try:
        wrapped.add_adapter(name, conv.method, targets=sorted(layers), **hyper)
    except ValueError as e:
        if fresh:
            wrapped.unload()
        raise InteropError(f"{path}: cannot build {conv.method} adapter: {e}") from None
    try:
        _check_base_tensors(wrapped, base_copies, cfg, path)
        _fill(wrapped, name, conv, layers, shared, head, cfg, path, bias_deltas)
    except InteropError:
        wrapped.delete_adapter(name)
        if fresh:
            wrapped.unload()
        raise
    wrapped.set_trainable(trainable, name)
    return wrapped


# --- helpers -----------------------------------------------------------------------------------------

def _resolve(model: AdaptedModel, name: str | None) -> tuple[str, type[Converter]]:
    if not isinstance(model, AdaptedModel):
        raise InteropError("export_peft needs an AdaptedModel (from peftatlas.attach / load_adapter)")
    name = name or (model.active_adapters[0] if model.active_adapters else None)
    if name not in model.specs:
        raise InteropError(f"unknown adapter {name!r}; known: {sorted(model.specs)}")
    return name, converter_for_method(model.specs[name].method)


def _split_keys(conv: type[Converter], tensors: dict[str, Tensor], cfg: dict[str, Any]
                ) -> tuple[dict[str, dict[str, Tensor]], dict[str, Tensor], dict[str, Tensor]]:
    """Split file keys into per-layer tensors, model-wide tensors and head (modules_to_save) tensors."""
    suffixes = sorted(conv.peft_layer_suffixes(), key=len, reverse=True)
    saved_modules = list(cfg.get("modules_to_save") or [])
    layers: dict[str, dict[str, Tensor]] = {}
    shared: dict[str, Tensor] = {}
    head: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in tensors.items():
        if not key.startswith(LAYER_PREFIX):
            if key.startswith(SHARED_PREFIX):
                shared[key[len(SHARED_PREFIX):]] = value
            else:
                unknown.append(key)
            continue
        rest = key[len(LAYER_PREFIX):]
        suffix = next((s for s in suffixes if rest.endswith("." + s)), None)
        if suffix is not None:
            layers.setdefault(rest[: -len(suffix) - 1], {})[suffix] = value
        elif any(_under_module(rest, m) for m in saved_modules):
            head[rest] = value
        else:
            unknown.append(key)
    if unknown:
        more = f" (+{len(unknown) - 3} more)" if len(unknown) > 3 else ""
        raise InteropError(f"tensor(s) peftatlas {conv.method} does not understand: {', '.join(unknown[:3])}{more}"
                           " (a bias, an embedding or a variant this converter lacks?)")
    return layers, shared, head


def trains_biases(cfg: dict[str, Any]) -> bool:
    """Whether PEFT config ``cfg`` trains (and saves) base biases: ``bias="all"`` or ``"<tuner>_only"``."""
    return cfg.get("bias") not in (None, "none")


def _pop_base_tensors(conv: type[Converter], tensors: dict[str, Tensor], cfg: dict[str, Any]) -> dict[str, Tensor]:
    """Remove and return the file's tensors of the *base* model (not the adapter's, not the head's).

    ``<m>.base_layer.<p>`` (save_embedding_layers copies, ``bias="<tuner>_only"`` biases) always; under
    a bias-training config also every other ``<m>.bias``, the head's ``original_module`` copy, and its
    ``modules_to_save`` copy (dropped when it equals the file's own head tensor, as PEFT writes it).
    """
    adapter_endings = tuple("." + s for s in conv.peft_layer_suffixes())
    heads = list(cfg.get("modules_to_save") or [])
    out: dict[str, Tensor] = {}
    for key in [k for k in tensors if k.startswith(LAYER_PREFIX)]:
        rest = key[len(LAYER_PREFIX):]
        if rest.endswith(_BASE_COPY_ENDINGS):
            out[key] = tensors.pop(key)
        elif not trains_biases(cfg) or not rest.endswith(".bias") or rest.endswith(adapter_endings):
            continue
        elif ".modules_to_save." in rest:
            trained = tensors.get(LAYER_PREFIX + rest.replace(".modules_to_save.", "."))
            if trained is not None and torch.equal(trained, tensors[key]):
                del tensors[key]
        elif not any(_under_module(rest, m) for m in heads):
            out[key] = tensors.pop(key)
    return out


def _own_tensor(root: nn.Module, key: str, path: Any) -> Tensor | None:
    """Module m's own ``p`` for file key ``<m>[.base_layer|.original_module].<p>`` (None: no such tensor)."""
    from ..core.tree import get_user_submodule

    rest = key[len(LAYER_PREFIX):]
    for part in _BASE_PARTS:
        rest = rest.replace(part, ".")
    module_path, _, param = rest.rpartition(".")
    try:
        module = get_user_submodule(root, module_path, unwrap=True)
    except (AttributeError, KeyError):
        raise InteropError(f"{path}: base tensor {key} names a module this model lacks") from None
    own = getattr(module, param, None)
    return own if isinstance(own, Tensor) else None


def _layer_bias_deltas(root: nn.Module, base: dict[str, Tensor], layers: dict[str, Any], path: Any
                       ) -> dict[str, Tensor]:
    """Remove each adapted layer's saved ``<m>.base_layer.bias`` from ``base``; ``Δb = b_file − b₀`` per layer."""
    deltas = {}
    for layer in layers:
        key = f"{LAYER_PREFIX}{layer}.base_layer.bias"
        if key in base:
            value, own = base.pop(key), _own_tensor(root, key, path)
            if own is None or tuple(own.shape) != tuple(value.shape):
                raise InteropError(f"{path}: {layer}.base_layer.bias {tuple(value.shape)} does not fit this model's "
                                   f"bias ({None if own is None else tuple(own.shape)})")
            deltas[layer] = value.float() - own.detach().to("cpu", torch.float32)
    return deltas


def _trained_module_biases(root: nn.Module, base: dict[str, Tensor], path: Any) -> dict[str, Tensor]:
    """Remove from ``base`` the saved ``<m>.bias`` of modules that are not adapted layers and whose value
    differs from the model's (``bias="all"``); those values by user key (``<m>.bias``)."""
    out = {}
    for key in [k for k in base if k.endswith(".bias") and not any(p in k for p in _BASE_PARTS)]:
        if not _equals_own_in(root, key, base[key], path):
            out[key[len(LAYER_PREFIX):]] = base.pop(key)
    return out


def _check_base_tensors(model: AdaptedModel, base: dict[str, Tensor], cfg: dict[str, Any], path: Any) -> None:
    """The file's base-model tensors must equal the model's own: then they carry no information."""
    differ = [key for key, value in base.items() if not _equals_own(model, key, value, path)]
    if not differ:
        return
    first = differ[0][len(LAYER_PREFIX):]
    more = f" (+{len(differ) - 1} more)" if len(differ) > 1 else ""
    if trains_biases(cfg) and first.endswith(".bias"):
        raise InteropError(f"{path}: PEFT trained base biases (bias={cfg['bias']!r}): the file's {first}{more} differs "
                           "from this model's; a peftatlas adapter keeps every base bias frozen, so it cannot "
                           "reproduce this adapter (train with bias='none', or load those biases into the base model "
                           "before importing)")
    raise InteropError(f"{path}: the file's {first}{more} differs from this model's (a resized or retrained base "
                       "layer, saved by PEFT's save_embedding_layers); peftatlas adapters do not carry base weights")


def _equals_own(model: AdaptedModel, key: str, value: Tensor, path: Any) -> bool:
    """Whether file tensor ``key`` (``<m>[.base_layer|.original_module].<p>``) equals module m's own ``p``."""
    return _equals_own_in(model.model, key, value, path)


def _equals_own_in(root: nn.Module, key: str, value: Tensor, path: Any) -> bool:
    own = _own_tensor(root, key, path)
    return own is not None and tuple(own.shape) == tuple(value.shape) and torch.equal(
        own.detach().to("cpu", value.dtype), value)


def _under_module(param_key: str, module_suffix: str) -> bool:
    module = param_key.rsplit(".", 1)[0]
    return module == module_suffix or module.endswith("." + module_suffix)


def _head_names(cfg: dict[str, Any], head: dict[str, Tensor]) -> list[str] | None:
    """Our head modules: the modules_to_save modules that have tensors in the file."""
    if not head:
        return None
    return sorted({k.rsplit(".", 1)[0] for k in head})


def _fill(model: AdaptedModel, name: str, conv: type[Converter], layers: dict[str, dict[str, Tensor]],
          shared: dict[str, Tensor], head: dict[str, Tensor], cfg: dict[str, Any], path: Any,
          bias_deltas: dict[str, Tensor] | None = None) -> None:
    adapted = model.adapted_layers()
    missing_layers = sorted(n for n in layers if n not in adapted or name not in adapted[n].adapters)
    if missing_layers:
        raise InteropError(f"{path}: module(s) {', '.join(missing_layers[:3])} not adapted in this model")
    extra = sorted(n for n, layer in adapted.items() if name in layer.adapters and n not in layers)
    if extra:
        raise InteropError(f"{path}: target(s) {', '.join(extra[:3])} matched but the file has no tensors for them")
    pending: list[tuple[Tensor, Tensor]] = []
    own_shared = model.shared[name].state_dict(keep_vars=True) if name in model.shared else {}
    for k, v in conv.shared_from_peft(model, name, shared, cfg).items():
        if k not in own_shared:
            raise InteropError(f"{path}: converter produced unknown shared key {k}")
        check_shape(f"shared.{k}", v.shape, own_shared[k].shape)
        pending.append((own_shared[k], v))
    for layer_name, layer_tensors in layers.items():
        adapter = adapted[layer_name].adapters[name]
        base = adapted[layer_name].base
        conv.check_layer_type(layer_name, base)
        ours = conv.layer_from_peft(conv.from_layer_layout(layer_tensors, base), adapter)
        if "bias_delta" in adapter.state_dict():  # a trained bias (Δb = 0 where PEFT saved none)
            ours["bias_delta"] = (bias_deltas or {}).get(layer_name, torch.zeros_like(adapter.bias_delta))
        want = adapter.state_dict(keep_vars=True)
        missing = sorted(set(want) - set(ours))
        if missing:
            raise InteropError(f"{path}: {layer_name}: no value for {', '.join(missing)}")
        for k, v in ours.items():
            if k not in want:
                raise InteropError(f"{path}: {layer_name}: converter produced unknown key {k}")
            check_shape(f"{layer_name}.{k}", v.shape, want[k].shape)
            pending.append((want[k], v))
    head_params = model.head_parameters()
    for k, v in head.items():
        if k not in head_params:
            raise InteropError(f"{path}: head tensor {k} has no matching trainable head parameter in this model "
                               f"(head parameters: {', '.join(sorted(head_params)) or 'none'})")
        check_shape(k, v.shape, head_params[k].shape)
        pending.append((head_params[k], v))
    with torch.no_grad():
        for dest, value in pending:
            dest.copy_(value.to(dest.dtype))
