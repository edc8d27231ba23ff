"""Executing one run spec: what every executor's worker does, and all it does (it never writes the store).

::

    train     build the classifier, attach the method (spec.hyperparameters), train_classifier(...),
              save the adapter (and head) atomically at spec.artifact, return [record]
    complete  the sweep record ``twin`` trained without test/OOD: load its saved adapter, evaluate
              test + OOD there (the very state training ended in), return [twin completed, main copy];
              if the adapter is gone, retrain the same computation instead (same key, same numbers)

A run that raises is returned as a failed record with its error; the driver stores it and the
profile goes on. Records carry per-item correctness on every held-out set (``RunRecord.items``).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..core.io import load_adapter, save_adapter
from ..core.model import AdaptedModel, attach
from .data import TaskData, load_task
from .models import load_classifier
from .runspec import RunSpec
from .store import ResultsStore, RunRecord, encode_items
from .train import FeatureCache, TrainConfig, evaluate_heldout, train_classifier

RUNNING = ".running"  # under the artifact folder: one <key>.pid file per run in progress (which process runs it)


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
        self._tasks: dict[str, TaskData] = {}
        if threads:
            torch.set_num_threads(threads)

    def task(self, spec: RunSpec) -> TaskData:
        d = spec.data
        ident = json.dumps([d["task"], d["ood"], d["train"], d["val"], d["test"], d["ood_size"]])
        if ident not in self._tasks:
            data = load_task(d["task"], ood=d["ood"])
            self._tasks[ident] = data.subset(d["train"], d["val"], d["test"], d["ood_size"])
        data = self._tasks[ident]
        return data if d.get("curve") is None else data.subset(train=d["curve"])

    def path(self, artifact: str) -> Path:
        return self.root / artifact


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
    data = ctx.task(spec)
    cfg = TrainConfig(**spec.train)
    model, tokenizer = load_classifier(spec.model, data.num_labels, seed=cfg.seed, encoder_dropout=cfg.encoder_dropout)
    hp = dict(spec.hyperparameters)
    targets = hp.pop("targets", None)
    adapted = attach(model, spec.method, targets=targets, seed=cfg.seed, **hp)
    counts = adapted.count_parameters()
    result = train_classifier(adapted, tokenizer, data, cfg, evaluate_test=spec.evaluate_test,
                              progress=ctx.progress, desc=spec.describe(), features=ctx.features)
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
            metrics, items = evaluate_heldout(model, tokenizer, ctx.task(spec), TrainConfig(**spec.train))
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
    head = meta["fingerprint"]["head"].get("classifier.weight")
    if not head:
        raise ValueError(f"{folder}: the saved adapter has no classifier head to size the model by")
    model, tokenizer = load_classifier(model_name, int(head[0]), seed=seed)
    return load_adapter(model, folder), tokenizer


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
