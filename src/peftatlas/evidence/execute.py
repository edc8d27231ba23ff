"""Executing one run spec: what every executor's worker does, and all it does (it never writes the store).

::

    train     build the classifier, attach the method (spec.hyperparameters), train_classifier(...),
              save the adapter (and head) atomically at spec.artifact, return [record]
    complete  the sweep record ``twin`` trained without test/OOD: load its saved adapter, evaluate
              test + OOD there (the very state training ended in), return [twin completed, main copy];
              if the adapter is gone, retrain the same computation instead (same key, same numbers)

A run that raises is returned as a failed record with its error; the driver stores it and the
profile goes on. Records carry per-item correctness on every held-out set (``RunRecord.items``).

What differs between kinds of model (data, a fresh model, the training loop, held-out evaluation) is
a :class:`Setting`, chosen by ``spec.model``: the sentence encoders' is :class:`EncoderSetting`; the
others live in the modules named by :data:`SETTING_MODULES`, each exposing ``SETTING``. Those modules
are imported by name when a run needs them, so an encoder run's code version (:mod:`.codeversion`)
does not include them, while theirs does (``codeversion.setting_roots``).
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import json
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ..core.io import load_adapter, save_adapter
from ..core.model import AdaptedModel, attach
from .data import TaskData, load_task
from .models import load_classifier
from .runspec import RunSpec
from .store import ResultsStore, RunRecord, encode_items
from .train import FeatureCache, TrainConfig, TrainResult, evaluate_heldout, train_classifier

RUNNING = ".running"  # under the artifact folder: one <key>.pid file per run in progress (which process runs it)

# model name → the module whose ``SETTING`` runs it (models not named here are sentence encoders)
SETTING_MODULES: dict[str, str] = {
    "smollm2": "peftatlas.evidence.settings.causal_lm",
    "dinov2_s14": "peftatlas.evidence.settings.vision",
}


class RunContext:
    """A worker's state between runs: where artifacts live, its task data and head-only feature cache.

    ``root`` is the store's folder (relative artifact paths are resolved against it). ``threads``
    sets torch's intra-op threads for this process (None leaves them).
    """

    def __init__(self, root: str | Path, features: str | Path | None = None, threads: int | None = None,
                 progress: bool = False, log: Callable[[str], None] | None = None) -> None:
        self.root = Path(root)
        self.features = FeatureCache(features)
        self.progress = progress
        self.log = log or (lambda s: None)
        self._tasks: dict[str, Any] = {}
        if threads:
            torch.set_num_threads(threads)

    def task(self, spec: RunSpec) -> Any:
        """``spec``'s data from its setting, loaded once per worker (the curve's training subset applied)."""
        d = spec.data
        ident = json.dumps([spec.model, d["task"], d["ood"], d["train"], d["val"], d["test"], d["ood_size"]])
        if ident not in self._tasks:
            self._tasks[ident] = setting_for(spec.model).task(spec)
        data = self._tasks[ident]
        return data if d.get("curve") is None else data.subset(train=d["curve"])

    def path(self, artifact: str) -> Path:
        return self.root / artifact


class Setting(Protocol):
    """A kind of model in the arena: how a run gets its data, a fresh model, training and evaluation.

    ``task(spec)`` returns the data subset to ``spec.data``'s sizes (an object with ``subset(train=n)``
    for learning curves); ``model(name, data, seed, cfg)`` a fresh pretrained model with a head drawn
    from ``seed`` and its tokenizer (None where there is none); ``train`` trains an attached model and
    returns its :class:`~.train.TrainResult` (items per held-out set when ``evaluate_test``);
    ``evaluate`` scores a trained model on test and OOD as :func:`~.train.evaluate_heldout` does;
    ``num_labels(meta)`` sizes a fresh model from a saved adapter's metadata.
    """

    def task(self, spec: RunSpec) -> Any: ...

    def model(self, name: str, data: Any, seed: int, cfg: TrainConfig) -> tuple[nn.Module, Any]: ...

    def train(self, model: AdaptedModel, tokenizer: Any, data: Any, cfg: TrainConfig, *, evaluate_test: bool,
              spec: RunSpec, ctx: RunContext) -> TrainResult: ...

    def evaluate(self, model: nn.Module, tokenizer: Any, data: Any, cfg: TrainConfig) -> tuple[
        dict[str, float], dict[str, list[bool]]]: ...

    def num_labels(self, meta: dict[str, Any]) -> int: ...


class EncoderSetting:
    """Sentence encoders (MiniLM, config-built BERT) on text classification: :mod:`.models`, :mod:`.train`."""

    def task(self, spec: RunSpec) -> TaskData:
        d = spec.data
        return load_task(d["task"], ood=d["ood"]).subset(d["train"], d["val"], d["test"], d["ood_size"])

    def model(self, name: str, data: TaskData, seed: int, cfg: TrainConfig) -> tuple[nn.Module, Any]:
        return load_classifier(name, data.num_labels, seed=seed, encoder_dropout=cfg.encoder_dropout)

    def train(self, model: AdaptedModel, tokenizer: Any, data: TaskData, cfg: TrainConfig, *, evaluate_test: bool,
              spec: RunSpec, ctx: RunContext) -> TrainResult:
        return train_classifier(model, tokenizer, data, cfg, evaluate_test=evaluate_test, progress=ctx.progress,
                                desc=spec.describe(), features=ctx.features)

    def evaluate(self, model: nn.Module, tokenizer: Any, data: TaskData, cfg: TrainConfig) -> tuple[
            dict[str, float], dict[str, list[bool]]]:
        return evaluate_heldout(model, tokenizer, data, cfg)

    def num_labels(self, meta: dict[str, Any]) -> int:
        head = meta["fingerprint"]["head"].get("classifier.weight")
        if not head:
            raise ValueError("the saved adapter has no classifier head to size the model by")
        return int(head[0])


ENCODER = EncoderSetting()


def setting_for(model: str) -> Setting:
    """The :class:`Setting` that runs ``model`` (its module imported by name; :data:`SETTING_MODULES`)."""
    module = SETTING_MODULES.get(model)
    if module is None:
        return ENCODER
    found = getattr(importlib.import_module(module), "SETTING", None)
    if found is None:
        raise NotImplementedError(f"model {model!r}: {module} defines no SETTING, so the arena cannot run it yet")
    return found


def base_record(spec: RunSpec) -> RunRecord:
    """The record of ``spec`` before it ran (a failure unless filled in)."""
    return RunRecord(key=spec.key, experiment=spec.experiment, model=spec.model, task=spec.task, method=spec.method,
                     hyperparameters=spec.hyperparameters, budget=spec.budget, trainable_params=0, lr=spec.lr,
                     seed=spec.seed, train_size=spec.train_size, metrics={}, curve=[], status="failed", error=None,
                     artifact=None, code_version=spec.code_version, created=time.time(), wall_seconds=0.0,
                     profile=spec.profile, train_key=spec.train_key, arm=dict(spec.arm))


def execute(spec: RunSpec, ctx: RunContext) -> list[RunRecord]:
    """Run ``spec`` (module docstring); the records it produces, failed ones included. Never raises."""
    marker = _mark_running(ctx, spec)
    t0 = time.time()
    try:
        if spec.kind == "complete":
            return complete(spec, ctx)
        return [train_run(spec, ctx)]
    except Exception as e:  # a failed run is a result too
        if ctx.progress:
            traceback.print_exc()
        return [dataclasses.replace(base_record(spec), error=f"{type(e).__name__}: {e}", wall_seconds=time.time() - t0)]
    finally:
        marker.unlink(missing_ok=True)


def train_run(spec: RunSpec, ctx: RunContext, artifact: str | None = None) -> RunRecord:
    """Train ``spec`` and save its adapter at ``artifact`` (default ``spec.artifact``)."""
    setting = setting_for(spec.model)
    data = ctx.task(spec)
    cfg = TrainConfig(**spec.train)
    model, tokenizer = setting.model(spec.model, data, cfg.seed, cfg)
    hp = dict(spec.hyperparameters)
    targets = hp.pop("targets", None)
    adapted = attach(model, spec.method, targets=targets, seed=cfg.seed, **hp)
    counts = adapted.count_parameters()
    result = setting.train(adapted, tokenizer, data, cfg, evaluate_test=spec.evaluate_test, spec=spec, ctx=ctx)
    metrics = dict(result.metrics)
    metrics["adapter_params"] = float(counts.adapter)
    metrics["head_params"] = float(counts.head)
    target = spec.arm.get("budget_target")
    if target and spec.arm.get("role") != "reference":
        metrics["budget_target"] = float(target)
        metrics["budget_rel_error"] = (counts.adapter - target) / target
        metrics["budget_met"] = float(bool(spec.arm.get("budget_met")))
    folder = artifact or spec.artifact
    save_adapter(adapted, ctx.path(folder))
    rec = dataclasses.replace(base_record(spec), trainable_params=counts.adapter + counts.head, metrics=metrics,
                              curve=result.curve, status="done", artifact=folder, wall_seconds=result.wall_seconds,
                              created=time.time(), items={k: encode_items(v) for k, v in result.items.items()},
                              arm={**spec.arm, "adapter_params": counts.adapter})
    del adapted, model
    gc.collect()
    return rec


def complete(spec: RunSpec, ctx: RunContext) -> list[RunRecord]:
    """A main record from its finished sweep twin (module docstring)."""
    assert spec.twin is not None
    twin = RunRecord(**spec.twin)
    if "test_acc" not in twin.metrics:
        folder = ctx.path(twin.artifact) if twin.artifact else None
        if folder is not None and folder.is_dir():
            t0 = time.time()
            model, tokenizer = load_run_from(folder, twin.model, twin.seed)
            setting = setting_for(twin.model)
            metrics, items = setting.evaluate(model, tokenizer, ctx.task(spec), TrainConfig(**spec.train))
            twin = dataclasses.replace(twin, metrics={**twin.metrics, **metrics},
                                       items={k: encode_items(v) for k, v in items.items()},
                                       wall_seconds=twin.wall_seconds + time.time() - t0)
            del model
            gc.collect()
        else:  # the adapter is gone (e.g. records shipped without artifacts): the same computation again
            again = train_run(dataclasses.replace(spec, evaluate_test=True), ctx, artifact=twin.artifact)
            twin = dataclasses.replace(again, key=twin.key, experiment=twin.experiment, arm=twin.arm)
    main = dataclasses.replace(twin, key=spec.key, experiment=spec.experiment, arm={**twin.arm, **spec.arm},
                               created=time.time())
    return [twin, main]


def load_run_from(folder: Path, model_name: str, seed: int) -> tuple[AdaptedModel, Any]:
    """A fresh ``model_name`` classifier with the adapter and head saved in ``folder`` loaded."""
    meta = json.loads((folder / "adapter.json").read_text())
    setting = setting_for(model_name)
    try:
        labels = setting.num_labels(meta)
    except ValueError as e:
        raise ValueError(f"{folder}: {e}") from None
    model, tokenizer = setting.model(model_name, _Labels(labels), seed, TrainConfig())
    return load_adapter(model, folder), tokenizer


@dataclasses.dataclass(frozen=True)
class _Labels:
    """Stands in for a task where only its number of labels is known (a model rebuilt from its file)."""

    num_labels: int


def load_run(store: ResultsStore, record: RunRecord) -> tuple[AdaptedModel, Any]:
    """Rebuild a finished run: a fresh model of ``record.model`` with the saved adapter and head loaded.

    Returns ``(model, tokenizer)``. For ``full`` runs, each adapted layer's
    ``adapters["default"].deltas["weight"]`` is the fine-tuning update ΔW of that weight.
    """
    folder = store.artifact_path(record)
    if folder is None or not folder.is_dir():
        raise FileNotFoundError(f"run {record.key[:12]} ({record.method}) has no saved adapter"
                                + (f" at {folder}" if folder else ""))
    return load_run_from(folder, record.model, record.seed)


def _mark_running(ctx: RunContext, spec: RunSpec) -> Path:
    """``<artifacts>/.running/<key>.pid`` holding this process's id while the run is in progress."""
    folder = ctx.path(spec.artifact).parent / RUNNING
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f"{spec.key[:24]}.pid"
    marker.write_text(str(os.getpid()))
    return marker
