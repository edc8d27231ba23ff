"""Synthetic expressivity experiments for the seed methods: what can each parametrization fit?

Each experiment is a library function returning an :class:`ExperimentResult` (rows, summary,
settings, plot) whose ``write(folder)`` saves CSV, JSON and a PNG; ``peftatlas expressivity NAME``
runs them from the command line. ``QUICK`` holds reduced sizes for smoke tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .common import ExperimentResult, format_table, summarize
from .goft import run_goft
from .surm import run_surm
from .vera import run_vera

EXPERIMENTS: dict[str, Callable[..., ExperimentResult]] = {"vera": run_vera, "goft": run_goft, "surm": run_surm}

QUICK: dict[str, dict[str, Any]] = {
    "vera": {"targets": 2, "vera_ranks": (1, 10, 90), "lora_ranks": (1, 2), "restarts": 1, "iters": 60},
    "goft": {"dims": (4, 8), "targets": 1, "restarts": 2, "iters": 100},
    "surm": {"d": 16, "trials": 2},
}

# columns shown in the terminal for each experiment's summary
COLUMNS: dict[str, list[str]] = {
    "vera": ["method", "rank", "params", "rel_sq_error_mean", "rel_sq_error_std"],
    "goft": ["d", "target", "method", "params", "rel_error_mean", "rel_error_std"],
    "surm": ["target", "method", "params", "rel_error_mean", "rel_error_std"],
}


def run_experiment(name: str, quick: bool = False, seed: int = 0, **overrides: Any) -> ExperimentResult:
    """Run experiment ``name`` (``vera``, ``goft`` or ``surm``) at full or quick size."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown expressivity experiment {name!r}; choose from {', '.join(EXPERIMENTS)}")
    kwargs = {**(QUICK[name] if quick else {}), **overrides, "seed": seed}
    return EXPERIMENTS[name](**kwargs)


__all__ = ["COLUMNS", "EXPERIMENTS", "QUICK", "ExperimentResult", "format_table", "run_experiment", "run_goft",
           "run_surm", "run_vera", "summarize"]
