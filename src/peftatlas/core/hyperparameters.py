"""Typed, range-checked hyperparameters, read from each method's ``Config`` dataclass.

Every ``Config`` field is checked twice when a config is built (:func:`peftatlas.core.method.make_config`):

1. **type**, from its annotation: ``int`` takes integers only (not ``True``/``False``, not ``4.5``, not
   ``"8"``); ``float`` takes any real number (integers included); ``bool`` only ``True``/``False``;
   ``str`` only strings; ``X | None`` also ``None``; ``list[X]`` a list or tuple of ``X``;
   ``dict[K, V]`` a dict of ``K`` → ``V``;
2. **range**, from the field's metadata (``dataclasses.field(..., metadata={"range": at_least(0)})``),
   else from :data:`CONVENTIONAL_RANGES`, which states the usual meaning of the shared names once
   (a rank ``r`` ≥ 1, ``alpha`` > 0, ``dropout`` in [0, 1), ...). A field whose metadata says
   ``{"range": None}`` opts out.

A failure is one line naming the method, the field, what was expected and the value given.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import types
import typing
from typing import Any

from .method import MethodError


class HyperparameterTypeError(MethodError, TypeError):
    """A hyperparameter of the wrong type (both a :class:`MethodError` and a ``TypeError``)."""


@dataclasses.dataclass(frozen=True)
class Range:
    """An interval of allowed values; ``None`` ends are unbounded."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '≥'} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '≤'} {self.high:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


def at_least(low: float) -> Range:
    return Range(low=low)


POSITIVE = Range(low=0, low_open=True)
FRACTION = Range(low=0, high=1, high_open=True)  # a probability that must leave something: [0, 1)

# The usual meaning of the names shared by many methods. A method whose field means something else
# declares its own range in the field's metadata.
CONVENTIONAL_RANGES: dict[str, Range] = {
    **dict.fromkeys(("r", "init_r", "target_r", "num_virtual_tokens", "bottleneck", "block_size", "n_experts",
                     "n_skills", "n_splits", "n_tasks", "n_blocks", "n_factors", "phm_dim", "topk", "num_vectors",
                     "vector_length", "neumann_terms", "group_size", "n_frequency", "delta_t", "r_min"),
                    at_least(1)),
    **dict.fromkeys(("alpha", "temperature", "scaling"), POSITIVE),
    **dict.fromkeys(("dropout", "beta1", "beta2"), FRACTION),
    **dict.fromkeys(("init_std", "d_init", "orth_reg_weight", "orth_lambda", "lam", "init_logits_std",
                     "init_bank_bound", "lambda_init", "update_ratio", "tinit", "tfinal", "start_step"),
                    at_least(0)),
}


def check_config(method: str, cfg: Any) -> None:
    """Raise a one-line error if a field of ``cfg`` has the wrong type (:class:`HyperparameterTypeError`)."""
    hints = _hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, expected = getattr(cfg, f.name), hints.get(f.name, Any)
        if not _is_instance(value, expected):
            raise HyperparameterTypeError(
                f"{method}: hyperparameter {f.name} must be {_type_name(expected)}, "
                f"got {value!r} ({type(value).__name__})")


def check_ranges(method: str, cfg: Any) -> None:
    """Raise a one-line :class:`MethodError` if a numeric field of ``cfg`` lies outside its range."""
    for f in dataclasses.fields(cfg):
        allowed = f.metadata["range"] if "range" in f.metadata else CONVENTIONAL_RANGES.get(f.name)
        value = getattr(cfg, f.name)
        if allowed is None or not isinstance(value, numbers.Real) or isinstance(value, bool):
            continue
        if not allowed.contains(value):
            raise MethodError(f"{method}: hyperparameter {f.name} must be {allowed}, got {value!r}")


def field_range(f: dataclasses.Field) -> Range | None:
    """The range a field is checked against (for documentation and ``peftatlas methods``)."""
    return f.metadata["range"] if "range" in f.metadata else CONVENTIONAL_RANGES.get(f.name)


@functools.cache
def _hints(config_type: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(config_type)
    except (NameError, TypeError):  # an annotation that cannot be resolved is not checked
        return {}


def _is_instance(value: Any, expected: Any) -> bool:
    origin = typing.get_origin(expected)
    if expected is Any:
        return True
    if expected is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_is_instance(value, option) for option in typing.get_args(expected))
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if origin in (list, tuple):
        args = typing.get_args(expected)
        item = args[0] if args else Any
        return isinstance(value, (list, tuple)) and all(_is_instance(v, item) for v in value)
    if origin is dict:
        key, item = (typing.get_args(expected) or (Any, Any))[:2]
        return isinstance(value, dict) and all(_is_instance(k, key) and _is_instance(v, item)
                                               for k, v in value.items())
    if isinstance(expected, type):
        return isinstance(value, expected)
    return True  # Literal, Callable, ...: not checked here (a method's validate_config may)


def _type_name(expected: Any) -> str:
    if isinstance(expected, type) and typing.get_origin(expected) is None:
        return {"int": "an integer", "float": "a number", "bool": "True or False", "str": "a string"}.get(
            expected.__name__, expected.__name__)
    if typing.get_origin(expected) is dict:
        key, item = (typing.get_args(expected) or (Any, Any))[:2]
        return f"a dict of {_type_name(key)} → {_type_name(item)}"
    if typing.get_origin(expected) in (typing.Union, types.UnionType):
        return " or ".join("None" if a is type(None) else _type_name(a) for a in typing.get_args(expected))
    return str(expected).replace("typing.", "")
