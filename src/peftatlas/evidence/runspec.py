"""A run spec: one run of a plan, complete enough for any worker to execute and key it.

Kept apart from the planner (:mod:`.plan`) on purpose: the worker code imports this module only, so
a run's code version (:mod:`.codeversion`, which hashes the worker's import closure) does not change
when a profile or the planner changes — those enter the run's key through its config instead.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run, complete enough for any worker to execute it and key it (JSON-serialisable).

    ``kind``: ``"train"`` trains (evaluating test/OOD unless ``evaluate_test`` is false);
    ``"complete"`` produces a main record from the finished sweep run ``twin`` (same training
    computation): test/OOD are evaluated from its saved adapter, or the run is retrained if the
    adapter is gone. ``artifact`` is the adapter folder (relative to the store's folder, or absolute).
    """

    key: str
    train_key: str
    kind: str
    experiment: str
    profile: str
    model: str
    task: str
    data: dict[str, Any]  # load_task/subset arguments: train/val/test/ood sizes, the curve's train size
    method: str
    hyperparameters: dict[str, Any]
    budget: str | None
    lr: float
    seed: int
    train_size: int | None
    train: dict[str, Any]  # TrainConfig fields
    code_version: str
    evaluate_test: bool
    artifact: str
    arm: dict[str, Any]
    depends_on: tuple[str, ...] = ()
    twin: dict[str, Any] | None = None  # "complete": the sweep record it completes (as RunRecord fields)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        return cls(**{**data, "depends_on": tuple(data.get("depends_on", ()))})

    def describe(self) -> str:
        size = ", ".join(f"{k}={v}" for k, v in self.hyperparameters.items() if k != "targets")
        n = f" n={self.train_size}" if self.train_size else ""
        return f"{self.method}{' ' + size if size else ''} lr={self.lr:g} s{self.seed}{n}"
