"""Budget matching: choose each method's size knob so its trainable-parameter count hits a target.

Pseudocode::

    target = parse("0.1%") · encoder_params            (or an absolute count)
    for each candidate target-module set T (in order of preference):
        count(v) = Σ_{m ∈ T} method.param_count(m, cfg(knob = v))      # closed form, no model built
        v* = argmin_v |count(v) − target| over valid v ≤ max_value
        if |count(v*) − target| ≤ tol · target: use (T, v*)           # first set that lands wins
    otherwise: the closest (T, v) overall, recorded as missing the budget

Methods without a size knob (``size_knob = None``) run at their fixed size; the solution says so.
The count covers the adapter only; the task head trains in every method and is recorded apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..core.method import LayerAdapter, MethodError, get_method, make_config
from ..core.targeting import TargetError, head_module_names, match_targets

TargetSpec = str | Sequence[str] | None


class BudgetError(ValueError):
    """A budget cannot be parsed or a method cannot be counted on the given targets."""


@dataclasses.dataclass
class BudgetSolution:
    """The hyperparameters chosen for one method at one budget, and how close they land."""

    method: str
    budget: str | None  # the budget as written ("0.1%", "20000"), None = no budget (fixed / reference)
    target: int | None  # the target adapter-parameter count
    knob: str | None
    value: int | None
    targets: Any  # the target-module spec used
    achieved: int  # closed-form adapter parameter count
    met: bool | None  # None when no budget applies
    note: str
    hyperparameters: dict[str, Any]

    @property
    def rel_error(self) -> float | None:
        return None if not self.target else (self.achieved - self.target) / self.target


def parse_budget(budget: str | int | float, reference: int) -> int:
    """``"0.1%"`` → round(0.001 · reference); ``"20000"``, 20000 → 20000; ``0.001`` → a fraction."""
    text = str(budget).strip()
    try:
        if text.endswith("%"):
            value = float(text[:-1]) / 100.0 * reference
        else:
            number = float(text)
            value = number * reference if 0 < number < 1 else number
    except ValueError:
        raise BudgetError(f"budget {budget!r} is neither a count, a fraction nor a percentage") from None
    if value < 1:
        raise BudgetError(f"budget {budget!r} of {reference:,} parameters is below one parameter")
    return round(value)


def target_modules(model: nn.Module, cls: type[LayerAdapter], targets: TargetSpec,
                   exclude: TargetSpec = None) -> dict[str, nn.Module]:
    """The modules ``cls`` would adapt for ``targets`` (same matching as :func:`peftatlas.attach`)."""
    spec = cls.default_targets if targets is None else targets
    if spec is None:
        return {}
    names = match_targets(model, spec, cls.target_types, head_module_names(model, "auto"), exclude, cls.can_adapt)
    modules = dict(model.named_modules())
    return {n: modules[n] for n in names}


def count_params(cls: type[LayerAdapter], modules: dict[str, nn.Module], hyperparameters: dict[str, Any],
                 shared: bool = True) -> int:
    """Closed-form adapter parameter count over ``modules``, as :func:`peftatlas.attach` would build it.

    Per layer: ``param_count`` under the method's per-layer config (``layer_configs`` may specialise
    or drop layers); plus, with ``shared``, the trainable tensors of the model-wide shared state
    (e.g. VB-LoRA's vector bank), which is built to be counted. Raises :class:`MethodError` if invalid.
    """
    cfg = make_config(cls, hyperparameters)
    layer_cfgs = cls.layer_configs(modules, cfg)
    total = sum(int(cls.param_count(modules[n], c)) for n, c in layer_cfgs.items())
    if shared:
        state = cls.build_shared({n: modules[n] for n in layer_cfgs}, cfg)
        total += 0 if state is None else sum(p.numel() for p in state.parameters())
    return total


def _try_count(cls: type[LayerAdapter], modules: dict[str, nn.Module], hp: dict[str, Any],
               shared: bool = True) -> int | None:
    try:
        return count_params(cls, modules, hp, shared)
    except (MethodError, ValueError, ZeroDivisionError):
        return None


def _has_shared_params(cls: type[LayerAdapter], modules: dict[str, nn.Module], base: dict[str, Any], knob: str,
                       max_value: int) -> bool:
    """Whether the method's shared state holds trainable tensors (checked at its smallest valid knob value).

    Building shared state can be costly (VeRA's random bases grow with r), so the scan builds it only
    for methods where it counts.
    """
    for v in range(1, max_value + 1):
        try:
            cfg = make_config(cls, {**base, knob: v})
            layer_cfgs = cls.layer_configs(modules, cfg)
            state = cls.build_shared({n: modules[n] for n in layer_cfgs}, cfg)
        except (MethodError, ValueError, ZeroDivisionError):
            continue
        return state is not None and any(True for _ in state.parameters())
    return False


def built_count(cls: type[LayerAdapter], modules: dict[str, nn.Module], hyperparameters: dict[str, Any]) -> int:
    """Parameter count of the adapters really built on ``modules`` (raises what construction raises).

    The closed form can accept a value that construction rejects (e.g. a block size that does not
    divide a layer); the solver therefore confirms its pick by building it once.
    """
    cfg = make_config(cls, hyperparameters)
    layer_cfgs = cls.layer_configs(modules, cfg)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        shared = cls.build_shared({n: modules[n] for n in layer_cfgs}, cfg)
        total = 0 if shared is None else sum(p.numel() for p in shared.parameters())
        for n, c in layer_cfgs.items():
            total += sum(p.numel() for p in cls(modules[n], c, shared).parameters())
    return total


def _candidate_values(cls: type[LayerAdapter], modules: dict[str, nn.Module], base: dict[str, Any], knob: str,
                      target: int, max_value: int, shared: bool) -> dict[int, int]:
    """Closed-form counts for the knob values worth considering, keyed by value.

    Most knobs (rank, frequencies) add parameters as they grow: the scan doubles the value until the
    count passes the target and stops there. Some go the other way (C3A's block size, RandLoRA's basis
    rank: a larger value means fewer parameters); for those the whole range [1, max_value] is counted.
    """
    counts: dict[int, int] = {}

    def count(v: int) -> int | None:
        if v not in counts:
            c = _try_count(cls, modules, {**base, knob: v}, shared)
            if c is None:
                return None
            counts[v] = c
        return counts[v]

    valid = [v for v in range(1, min(max_value, 8) + 1) if count(v) is not None]
    top = next((v for v in range(max_value, 0, -1) if count(v) is not None), None) if max_value > 8 else None
    lowest = valid[0] if valid else top
    if lowest is not None and top is not None and counts[top] < counts[lowest]:  # count falls as the knob grows
        for v in range(1, max_value + 1):
            count(v)
        return counts
    upper = 1
    while upper < max_value:  # grow until the count passes the target
        c = count(upper)
        if c is not None and c >= target:
            break
        upper = min(max_value, upper * 2)
    for v in range(1, upper + 1):
        count(v)
    return {v: c for v, c in counts.items() if v <= upper}


def _best_value(cls: type[LayerAdapter], modules: dict[str, nn.Module], base: dict[str, Any], knob: str,
                target: int, max_value: int, max_checks: int = 64) -> tuple[int, int] | None:
    """(value, built count) closest to ``target`` over valid knob values in [1, max_value]."""
    shared = _has_shared_params(cls, modules, base, knob, max_value)
    counts = _candidate_values(cls, modules, base, knob, target, max_value, shared)
    for v in sorted(counts, key=lambda v: (abs(counts[v] - target), v))[:max_checks]:
        try:
            return v, built_count(cls, modules, {**base, knob: v})
        except (MethodError, ValueError, ZeroDivisionError):
            continue
    return None


def solve_budget(model: nn.Module, method: str, budget: str | int | None, reference: int,
                 target_options: Sequence[TargetSpec] = (None,), hyperparameters: dict[str, Any] | None = None,
                 tol: float = 0.10, max_value: int = 4096) -> BudgetSolution:
    """Solve ``method``'s size knob for ``budget`` (see the module docstring).

    ``reference`` is the parameter count percentages refer to (e.g. the encoder's). ``target_options``
    lists candidate target-module specs in order of preference (None = the method's default).
    """
    cls = get_method(method)
    base = dict(hyperparameters or {})
    options = list(target_options) or [None]
    resolved: list[tuple[TargetSpec, dict[str, nn.Module]]] = []
    for spec in options:
        try:
            resolved.append((spec, target_modules(model, cls, spec)))
        except TargetError:
            continue
    if not resolved:
        raise BudgetError(f"{cls.name}: none of the target options {options} matches a module of this model")
    if budget is None or cls.size_knob is None:
        spec, modules = resolved[0]
        try:
            count = count_params(cls, modules, base)
        except (MethodError, ValueError, ZeroDivisionError) as e:
            raise BudgetError(f"{cls.name}: cannot count parameters with hyperparameters {base}: {e}") from None
        note = "no budget (reference run)" if budget is None else f"fixed size: {cls.name} has no size knob"
        target = None if budget is None else parse_budget(budget, reference)
        met = None if budget is None else abs(count - target) <= tol * target
        return BudgetSolution(cls.name, None if budget is None else str(budget), target, None, None, spec,
                              count, met, note, base)
    target = parse_budget(budget, reference)
    knob = cls.size_knob
    if knob in base:
        raise BudgetError(f"{cls.name}: the budget sets {knob!r}; do not also fix it in the hyperparameters")
    closest: tuple[float, TargetSpec, int, int] | None = None
    for spec, modules in resolved:
        hit = _best_value(cls, modules, base, knob, target, max_value)
        if hit is None:
            continue
        err = abs(hit[1] - target) / target
        if err <= tol:
            note = f"{knob}={hit[0]} lands {100 * (hit[1] - target) / target:+.1f}% from the target"
            return BudgetSolution(cls.name, str(budget), target, knob, hit[0], spec, hit[1], True, note,
                                  {**base, knob: hit[0]})
        if closest is None or err < closest[0]:
            closest = (err, spec, hit[0], hit[1])
    if closest is None:
        raise BudgetError(f"{cls.name}: no valid value of {knob!r} in [1, {max_value}] on any target option")
    _, spec, value, count = closest
    note = (f"budget missed: closest is {knob}={value} with {count:,} parameters "
            f"({100 * (count - target) / target:+.1f}% from {target:,}; tolerance ±{100 * tol:.0f}%)")
    return BudgetSolution(cls.name, str(budget), target, knob, value, spec, count, False, note, {**base, knob: value})
