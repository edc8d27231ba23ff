"""Converters between a peftatlas method and one HF PEFT tuner type, registered by method name.

A converter states the correspondence as data wherever it can:

* ``peft_type`` — PEFT's ``peft_type`` string (``"LORA"``, ``"VERA"``, ...);
* ``layer_keys`` — PEFT per-layer tensor name → our adapter's state-dict key (same tensor, same
  layout); methods whose parametrizations differ override :meth:`Converter.layer_to_peft` /
  :meth:`Converter.layer_from_peft` instead;
* ``fields`` — PEFT config field → our hyperparameter (same meaning, same value);
* ``fixed`` — PEFT config fields that must hold exactly this value: features PEFT has and we lack
  (``use_dora``, ``lora_bias``, ...). Exporting writes them; importing a file that sets anything
  else fails with :class:`InteropError` naming the field — except ``fan_in_fan_out`` (PEFT derives
  it from the layer type) and ``bias`` (judged by the saved bias tensors, see :mod:`.peft_format`);
* ``export_only`` — fields written on export and ignored on import (initialisation switches).

* ``peft_layer_types`` — the layer types whose PEFT tensors the converter writes and reads
  (Linear and GPT-2's Conv1D share one layout; PEFT decides ``fan_in_fan_out`` from the layer
  type itself, so the field is written from the targets and not checked on import); converters
  that know PEFT's conv / embedding layouts override :meth:`Converter.to_layer_layout` /
  :meth:`Converter.from_layer_layout`.

A method joins the interop layer by defining a subclass decorated with ``@register_converter``.
Nothing here imports ``peft``: the format is plain JSON + safetensors.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..core.layer_types import GPT2_CONV1D, LINEAR, layer_type
from ..core.method import LayerAdapter, config_to_dict, get_method


class InteropError(ValueError):
    """An adapter cannot be converted between peftatlas and the PEFT format (says why)."""


_CONVERTERS: dict[str, type[Converter]] = {}
_CHECKED_ELSEWHERE = ("fan_in_fan_out", "bias")  # config fields not compared with ``fixed`` on import


class Converter:
    """The PEFT-format view of one peftatlas method."""

    method: ClassVar[str] = ""
    peft_type: ClassVar[str] = ""
    layer_keys: ClassVar[dict[str, str]] = {}
    fields: ClassVar[dict[str, str]] = {}
    fixed: ClassVar[dict[str, Any]] = {}
    # Written on export but not checked on import (initialisation switches: the file holds the weights).
    export_only: ClassVar[dict[str, Any]] = {}
    # Our hyperparameters under which the conversion is exact, when the method's test_config is not
    # (e.g. an offset PEFT lacks); the interop tests build the adapter with these overrides.
    peft_compatible: ClassVar[dict[str, Any]] = {}
    # Layer types converted (PEFT stores Linear and GPT-2 Conv1D adapters alike).
    peft_layer_types: ClassVar[tuple[str, ...]] = (LINEAR, GPT2_CONV1D)
    # Our config field that trains a per-layer bias change ``bias_delta`` (PEFT's ``bias="<tuner>_only"``:
    # the adapted layers' trained biases); None: the method keeps base biases frozen.
    bias_field: ClassVar[str | None] = None

    # --- config -----------------------------------------------------------------------------------
    @classmethod
    def accepts(cls, peft_cfg: dict[str, Any]) -> bool:
        """Whether this converter reads ``peft_cfg`` (several of ours may share one peft_type)."""
        return True

    @classmethod
    def config_to_peft(cls, cfg: Any, **options: Any) -> dict[str, Any]:
        """The method fields of ``adapter_config.json`` for our config ``cfg``."""
        if options:
            raise InteropError(f"{cls.method}: unknown export option(s) {sorted(options)}")
        ours = config_to_dict(cfg)
        out = {**cls.fixed, **cls.export_only, **{peft: ours[mine] for peft, mine in cls.fields.items()}}
        if cls.bias_field is not None and ours.get(cls.bias_field):
            out["bias"] = f"{cls.peft_type.lower()}_only"  # the trained biases are saved as <m>.base_layer.bias
        return out

    @classmethod
    def model_config_to_peft(cls, model: Any, name: str, **options: Any) -> dict[str, Any]:
        """Like :meth:`config_to_peft`, for methods whose PEFT config depends on the layers (IA³)."""
        return cls.config_to_peft(model.specs[name].config, **options)

    @classmethod
    def config_from_peft(cls, peft_cfg: dict[str, Any], layers: dict[str, dict[str, Tensor]]) -> dict[str, Any]:
        """Our hyperparameters from PEFT's config (and, where needed, the per-layer tensors)."""
        cls.check_fixed(peft_cfg)
        return {mine: peft_cfg[peft] for peft, mine in cls.fields.items() if peft in peft_cfg}

    @classmethod
    def check_fixed(cls, peft_cfg: dict[str, Any]) -> None:
        # PEFT itself sets fan_in_fan_out from each layer's type (True exactly for GPT-2 Conv1D); a
        # bias-training file is judged by its bias tensors (peft_format: equal to the model's own or refused)
        bad = [f"{k}={peft_cfg[k]!r} (peftatlas {cls.method} supports only {v!r})"
               for k, v in cls.fixed.items()
               if k in peft_cfg and k not in _CHECKED_ELSEWHERE and not _same(peft_cfg[k], v)]
        if bad:
            raise InteropError(f"PEFT {cls.peft_type} adapter uses feature(s) peftatlas cannot represent: "
                               + "; ".join(bad))

    # --- tensors ----------------------------------------------------------------------------------
    @classmethod
    def layer_to_peft(cls, adapter: LayerAdapter) -> dict[str, Tensor]:
        """PEFT per-layer tensors (key suffix after the module path) of one of our adapters."""
        state = adapter.state_dict()
        return {peft: state[mine] for peft, mine in cls.layer_keys.items()}

    @classmethod
    def layer_from_peft(cls, tensors: dict[str, Tensor], adapter: LayerAdapter) -> dict[str, Tensor]:
        """Our adapter's state-dict entries from PEFT's per-layer tensors (suffix → tensor)."""
        return {mine: tensors[peft] for peft, mine in cls.layer_keys.items() if peft in tensors}

    @classmethod
    def check_layer_type(cls, layer_name: str, base: nn.Module) -> str:
        """The layer type of ``base``; an :class:`InteropError` if this converter does not handle it."""
        kind = layer_type(base) or type(base).__name__
        if kind not in cls.peft_layer_types:
            raise InteropError(f"{cls.method}: {layer_name} is a {kind} layer; converting {cls.peft_type} adapters "
                               f"is supported on {', '.join(cls.peft_layer_types)} layers only")
        return kind

    @classmethod
    def to_layer_layout(cls, tensors: dict[str, Tensor], base: nn.Module) -> dict[str, Tensor]:
        """Our matrix-layout PEFT tensors of one layer → PEFT's layout for ``base``'s layer type."""
        return tensors

    @classmethod
    def from_layer_layout(cls, tensors: dict[str, Tensor], base: nn.Module) -> dict[str, Tensor]:
        """Inverse of :meth:`to_layer_layout` (PEFT's tensors of a conv / embedding → matrix layout)."""
        return tensors

    @classmethod
    def peft_layer_suffixes(cls) -> tuple[str, ...]:
        """Per-layer PEFT key suffixes this converter reads (used to split keys into layers)."""
        return tuple(cls.layer_keys)

    @classmethod
    def shared_to_peft(cls, model: Any, name: str, **options: Any) -> dict[str, Tensor]:
        """Model-wide tensors PEFT stores under ``base_model.<key>`` (e.g. VeRA's projections)."""
        return {}

    @classmethod
    def shared_from_peft(cls, model: Any, name: str, tensors: dict[str, Tensor], peft_cfg: dict[str, Any]
                         ) -> dict[str, Tensor]:
        """On import: model-wide tensors from the file → our shared state-dict entries to fill.

        Raises if a tensor cannot be taken (VeRA: stored bases that differ from the seed's).
        """
        if tensors:
            raise InteropError(f"{cls.method}: unexpected model-wide tensor(s) {sorted(tensors)}")
        return {}


def register_converter(cls: type[Converter]) -> type[Converter]:
    """Class decorator: make ``cls`` the PEFT converter of method ``cls.method``."""
    if not cls.method or not cls.peft_type:
        raise InteropError(f"converter {cls.__name__} must set both method and peft_type")
    key = get_method(cls.method).name
    if key in _CONVERTERS and _CONVERTERS[key] is not cls:
        raise InteropError(f"method {key!r} has two PEFT converters")
    _CONVERTERS[key] = cls
    return cls


def converters() -> dict[str, type[Converter]]:
    """Our method name → its PEFT converter, for every method both libraries have."""
    _ensure_loaded()
    return dict(sorted(_CONVERTERS.items()))


def converter_for_method(method: str) -> type[Converter]:
    _ensure_loaded()
    key = get_method(method).name
    if key not in _CONVERTERS:
        raise InteropError(f"method {key!r} has no PEFT equivalent here; convertible methods: "
                           + ", ".join(sorted(_CONVERTERS)))
    return _CONVERTERS[key]


def converter_for_peft(peft_cfg: dict[str, Any]) -> type[Converter]:
    _ensure_loaded()
    peft_type = str(peft_cfg.get("peft_type", ""))
    same_type = [c for c in _CONVERTERS.values() if c.peft_type == peft_type]
    if not same_type:
        known = sorted({c.peft_type for c in _CONVERTERS.values()})
        raise InteropError(f"PEFT type {peft_type!r} has no peftatlas converter; supported: {', '.join(known)}")
    chosen = [c for c in same_type if c.accepts(peft_cfg)]
    if not chosen:
        raise InteropError(f"no peftatlas method reads this {peft_type} configuration "
                           f"(candidates: {', '.join(c.method for c in same_type)})")
    return chosen[0]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b or (a in (None, {}, []) and b in (None, {}, []))


def _ensure_loaded() -> None:
    from . import lowrank, rotation, structured  # noqa: F401  (register the built-in converters)


def check_shape(key: str, got: torch.Size | tuple[int, ...], want: torch.Size | tuple[int, ...]) -> None:
    if tuple(got) != tuple(want):
        raise InteropError(f"{key}: shape {list(got)} in the file, {list(want)} expected")
