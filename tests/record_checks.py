"""Checks on stored run records shared by the executor tests (imported by name: pytest puts tests/ on the path)."""

from __future__ import annotations

import dataclasses


def unchanged(before, after) -> bool:
    """``after`` is ``before``, or ``before`` was an LR-sweep run whose rate was chosen afterwards and only gained
    its test/OOD metrics (evaluated from its saved adapter), per-item results and evaluation time."""
    if after == before:
        return True
    grown = {k: v for k, v in after.metrics.items() if k not in before.metrics}
    return (before.experiment == "lr_sweep" and "test_acc" not in before.metrics and "test_acc" in grown
            and all(after.metrics[k] == v for k, v in before.metrics.items())
            and dataclasses.replace(after, metrics=before.metrics, items=before.items,
                                    wall_seconds=before.wall_seconds) == before)
