"""Saving and loading adapters: ``adapter.safetensors`` + ``adapter.json``. No pickle anywhere.

The JSON holds the method, its hyperparameters, the exact target list, a fingerprint of the base
model (parameter shapes of every target and of the head) and the SHA-256 of the tensor file, so a
mismatched pair of files is detected. Saving writes only its own two files, each atomically
(:mod:`peftatlas.core.atomic`): everything else in the folder is left as it was, and an
interrupted save leaves the previous adapter files intact.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .. import __version__
from .atomic import write_files
from .method import config_to_dict, get_method, make_config
from .model import AdaptedModel, AdapterSpec
from .tree import get_user_submodule

TENSORS = "adapter.safetensors"
META = "adapter.json"
FORMAT = "peftatlas-adapter"
FORMAT_VERSION = 1
SHARED_PREFIX = "__shared__."
PEFT_CONFIG = "adapter_config.json"  # HF PEFT's folder (read by peftatlas.interop.peft_format)


class AdapterFileError(ValueError):
    """An adapter folder is missing, corrupt, or does not fit the model it is loaded into."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fingerprint(model: AdaptedModel, targets: list[str]) -> dict[str, dict[str, list[int]]]:
    out: dict[str, dict[str, list[int]]] = {}
    for n in targets:
        base = get_user_submodule(model.model, n, unwrap=True)
        out[n] = {k: list(v.shape) for k, v in base.named_parameters(recurse=False)}
    return out


def _head_fingerprint(model: AdaptedModel) -> dict[str, list[int]]:
    """Shapes of the pretrained head's parameters (every adapter's head copy has the same)."""
    return {f"{h}.{k}": list(v.shape) for h, w in model.heads().items() for k, v in w.base.named_parameters()}


def atomic_write_dir(path: str | os.PathLike, files: dict[str, bytes | dict[str, torch.Tensor]]) -> Path:
    """Write ``files`` into folder ``path``, each atomically, leaving every other file there alone.

    Tensor dicts are serialised to safetensors first; see :func:`peftatlas.core.atomic.write_files`.
    """
    return write_files(path, {name: c if isinstance(c, bytes) else _tensors_to_bytes(c) for name, c in files.items()})


def save_adapter(model: AdaptedModel, path: str | os.PathLike, name: str | None = None,
                 include_head: bool = True) -> Path:
    """Save adapter ``name`` (default: the first active) and the trained head to folder ``path``."""
    name = name or (model.active_adapters[0] if model.active_adapters else None)
    if name not in model.specs:
        raise ValueError(f"unknown adapter {name!r}; known: {sorted(model.specs)}")
    spec = model.specs[name]
    tensors: dict[str, torch.Tensor] = {}
    for layer_name, layer in model.adapted_layers().items():
        if name in layer.adapters:
            for k, v in layer.adapters[name].state_dict().items():
                tensors[f"{layer_name}.{k}"] = v.detach().cpu().contiguous()
    for k, v in _shared_tensors(model, name).items():
        tensors[k] = v.detach().cpu().contiguous()
    if include_head:
        for k, v in model.head_parameters(name).items():
            tensors[f"head.{k}"] = v.detach().cpu().contiguous()
    tmp_tensor_blob = _tensors_to_bytes(tensors)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "peftatlas_version": __version__,
        "method": spec.method,
        "adapter_name": name,
        "hyperparameters": config_to_dict(spec.config),
        "init_seed": spec.init_seed,
        "targets": spec.targets,
        "head": model.head_names if include_head else [],
        "fingerprint": {"targets": _fingerprint(model, spec.targets), "head": _head_fingerprint(model)},
        "base_model": getattr(getattr(model.model, "config", None), "_name_or_path", None),
        "base_model_class": type(model.model).__name__,
        "tensors_sha256": hashlib.sha256(tmp_tensor_blob).hexdigest(),
    }
    atomic_write_dir(path, {TENSORS: tmp_tensor_blob, META: json.dumps(meta, indent=2).encode()})
    return Path(path)


def _tensors_to_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save(tensors, metadata={"format": "pt"})


def read_adapter_files(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read and verify the two files; every problem becomes an :class:`AdapterFileError`."""
    folder = Path(path)
    if not folder.is_dir():
        raise AdapterFileError(f"adapter folder {folder} does not exist")
    meta_path, tensor_path = folder / META, folder / TENSORS
    for p in (meta_path, tensor_path):
        if not p.is_file():
            raise AdapterFileError(f"adapter folder {folder} has no {p.name}")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterFileError(f"corrupt {meta_path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise AdapterFileError(f"{meta_path} is not a peftatlas adapter description")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise AdapterFileError(f"{meta_path} has format version {meta['format_version']}; "
                               f"this peftatlas reads up to {FORMAT_VERSION}, please upgrade")
    missing = [k for k in ("method", "hyperparameters", "targets", "fingerprint") if k not in meta]
    if missing:
        raise AdapterFileError(f"{meta_path} lacks field(s) {', '.join(missing)}")
    expected = meta.get("tensors_sha256")
    if expected and _sha256(tensor_path) != expected:
        raise AdapterFileError(f"{tensor_path} does not match {meta_path} (checksum differs): "
                               "the file is corrupt or belongs to another adapter")
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterFileError(f"corrupt {tensor_path}: {e}") from None
    return meta, tensors


def check_fingerprint(model: AdaptedModel, meta: dict[str, Any]) -> None:
    """Compare the saved fingerprint with ``model``; report every mismatch in one line."""
    problems: list[str] = []
    names = dict(model._unwrapped_view().named_modules())
    for target, shapes in meta["fingerprint"]["targets"].items():
        module = names.get(target)
        if module is None:
            problems.append(f"target {target} not found in the model")
            continue
        have = {k: list(v.shape) for k, v in module.named_parameters(recurse=False)}
        for k, shape in shapes.items():
            if have.get(k) != shape:
                problems.append(f"{target}.{k} has shape {have.get(k)} but the adapter expects {shape}")
    saved_head = meta["fingerprint"].get("head", {})
    have_head = _head_fingerprint(model)
    for k, shape in saved_head.items():
        if k not in have_head:
            problems.append(f"head parameter {k} not found in the model")
        elif have_head[k] != shape:
            problems.append(f"head {k} has shape {have_head[k]} but the adapter expects {shape}")
    if problems:
        raise AdapterFileError("adapter does not fit this model: " + "; ".join(problems))


def load_adapter(
    model: nn.Module | AdaptedModel,
    path: str | os.PathLike,
    name: str = "default",
    trainable: bool = False,
    head: str | list[str] | None = "auto",
) -> AdaptedModel:
    """Load an adapter folder into ``model`` (a plain model is wrapped first).

    A HF PEFT folder (``adapter_config.json`` + ``adapter_model.safetensors``) is imported through
    :func:`peftatlas.interop.peft_format.import_peft`. Nothing is changed if the files are corrupt
    or do not fit: the error names every problem.
    """
    if is_peft_folder(path):
        return _import_peft_folder(model, path, name, trainable)
    meta, tensors = read_adapter_files(path)
    try:
        cls = get_method(meta["method"])
    except ValueError as e:
        raise AdapterFileError(f"{path}: {e}") from None
    if isinstance(model, AdaptedModel):
        _check_free_name(model, name, path)
    wrapped = model if isinstance(model, AdaptedModel) else AdaptedModel(model, head=meta.get("head") or head)
    fresh = wrapped is not model
    injected = False
    try:
        check_fingerprint(wrapped, meta)
        try:
            cfg = make_config(cls, meta["hyperparameters"])
        except (TypeError, ValueError) as e:
            raise AdapterFileError(f"{path}: hyperparameters do not fit method {cls.name}: {e}") from None
        wrapped._inject(name, cls, cfg, list(meta["targets"]), int(meta.get("init_seed", 0)))
        injected = True
        _fill_from_tensors(wrapped, name, meta, tensors, path)
    except BaseException:
        if injected:
            wrapped.delete_adapter(name)
        if fresh:
            wrapped.unload()  # the plain model as it was (head unwrapped)
        raise
    wrapped.set_trainable(trainable, name)
    return wrapped


def restore_adapter(model: AdaptedModel, path: str | os.PathLike, name: str | None = None) -> str:
    """Copy a saved adapter's tensors (and head) back into the *existing* adapter of the same name.

    For resuming training (a Trainer checkpoint): the adapter must have the same method, targets
    and hyperparameters as when it was saved. ``name`` defaults to the name stored in the folder,
    then to the first active adapter. Returns the name restored; nothing changes on a mismatch.
    """
    meta, tensors = read_adapter_files(path)
    name = name or meta.get("adapter_name") or (model.active_adapters[0] if model.active_adapters else None)
    if name not in model.specs:
        raise AdapterFileError(f"{path}: adapter {name!r} is not on this model (adapters: {', '.join(model.specs)}); "
                               "use load_adapter() to add it")
    spec = model.specs[name]
    saved = (meta["method"], list(meta["targets"]), meta["hyperparameters"])
    ours = json.loads(json.dumps(config_to_dict(spec.config)))  # as the file holds it (tuples → lists)
    if saved != (spec.method, list(spec.targets), ours):
        raise AdapterFileError(f"{path}: the saved adapter {name!r} ({meta['method']}, {len(meta['targets'])} "
                               f"targets) differs from the one on this model ({spec.method}, {len(spec.targets)} "
                               "targets) in method, targets or hyperparameters")
    check_fingerprint(model, meta)
    _fill_from_tensors(model, name, meta, tensors, path)
    return name


def _check_free_name(model: AdaptedModel, name: str, path: Any) -> None:
    if name in model.specs:
        raise AdapterFileError(
            f"adapter {name!r} is already loaded (adapters on this model: {', '.join(model.specs)}); "
            f"load {path} under another name, e.g. load_adapter(model, {str(path)!r}, name=\"{name}_2\")")


def is_peft_folder(path: str | os.PathLike) -> bool:
    """A HF PEFT adapter folder (its config file) that holds no peftatlas adapter description."""
    folder = Path(path)
    return (folder / PEFT_CONFIG).is_file() and not (folder / META).is_file()


def _import_peft_folder(model: nn.Module | AdaptedModel, path: Any, name: str, trainable: bool) -> AdaptedModel:
    from ..interop.peft_format import import_peft
    from ..interop.registry import InteropError

    if isinstance(model, AdaptedModel):
        _check_free_name(model, name, path)
    try:
        return import_peft(model, path, name=name, trainable=trainable)
    except InteropError as e:
        raise AdapterFileError(f"{path} is a HF PEFT folder that cannot be imported: {e}") from None


def from_pretrained(
    base: nn.Module | str | os.PathLike,
    adapter_dir: str | os.PathLike,
    name: str = "default",
    trainable: bool = False,
    **base_kwargs: Any,
) -> AdaptedModel:
    """Base model + adapter in one call: ``base`` is a model or a transformers folder / hub id.

    For a path, the base is built with the transformers class recorded in the adapter
    (``base_model_class``; ``AutoModel`` for a PEFT folder or an older file), passing
    ``base_kwargs`` on to its ``from_pretrained``. ``adapter_dir`` may be a peftatlas adapter, a
    folder written by ``save_pretrained`` or a HF PEFT adapter folder.
    """
    if not isinstance(base, nn.Module):
        base = _load_base(base, adapter_dir, base_kwargs)
    elif base_kwargs:
        raise TypeError(f"base-model options {sorted(base_kwargs)} need a path, not a model instance")
    return load_adapter(base, adapter_dir, name=name, trainable=trainable)


def _load_base(path: str | os.PathLike, adapter_dir: str | os.PathLike, kwargs: dict[str, Any]) -> nn.Module:
    import transformers

    class_name = None
    if (Path(adapter_dir) / META).is_file():
        class_name = read_adapter_files(adapter_dir)[0].get("base_model_class")
    model_class = getattr(transformers, class_name, None) if class_name else None
    if not (isinstance(model_class, type) and issubclass(model_class, transformers.PreTrainedModel)):
        model_class = transformers.AutoModel
    return model_class.from_pretrained(str(path), **kwargs)


def _fill_from_tensors(model: AdaptedModel, name: str, meta: dict[str, Any],
                       tensors: dict[str, torch.Tensor], path: Any) -> None:
    """Copy saved tensors into the freshly injected adapter; every key must match exactly."""
    layers = model.adapted_layers()
    wanted: dict[str, torch.Tensor] = {}
    for layer_name in meta["targets"]:
        for k, v in layers[layer_name].adapters[name].state_dict(keep_vars=True).items():
            wanted[f"{layer_name}.{k}"] = v
    wanted.update(_shared_tensors(model, name))
    if meta.get("head"):
        wanted.update({f"head.{k}": p for k, p in model.head_parameters(name).items()})
    missing = sorted(set(wanted) - set(tensors))
    unexpected = sorted(set(tensors) - set(wanted))
    parts = []
    if missing:
        parts.append(f"missing key(s) {_few(missing)}")
    if unexpected:
        parts.append(f"unexpected key(s) {_few(unexpected)}")
    wrong = [k for k in wanted if k in tensors and tuple(tensors[k].shape) != tuple(wanted[k].shape)]
    if wrong:
        parts.append("shape mismatch for " + _few(
            [f"{k} (file {list(tensors[k].shape)}, model {list(wanted[k].shape)})" for k in wrong]))
    if parts:
        raise AdapterFileError(f"{path}: " + "; ".join(parts))
    with torch.no_grad():
        for k, dest in wanted.items():
            dest.copy_(tensors[k].to(dest.dtype))


def _shared_tensors(model: AdaptedModel, name: str) -> dict[str, torch.Tensor]:
    """Trainable model-wide tensors of adapter ``name``, keyed ``__shared__.<param>`` in the file."""
    prefix = f"shared.{name}."
    return {SHARED_PREFIX + k[len(prefix):]: p for k, p in model.shared_parameters(name).items()}


def _few(keys: list[str], n: int = 3) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def spec_from_meta(meta: dict[str, Any]) -> AdapterSpec:
    cls = get_method(meta["method"])
    return AdapterSpec(cls.name, make_config(cls, meta["hyperparameters"]), list(meta["targets"]),
                       int(meta.get("init_seed", 0)))
