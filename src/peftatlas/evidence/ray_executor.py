"""The ``ray`` executor: each run a Ray task on a cluster (``peftatlas run --executor ray``; extra ``peftatlas[ray]``).

::

    ray.init(address)                                   # "auto": a running cluster; None: a local one
    per spec: task = execute_remote.options(num_cpus=c, num_gpus=g, max_retries=R).remote(spec)
    driver:   ray.wait(tasks, num_returns=1) → records → the driver's store.put   (streamed, one by one)

Declared resources: ``num_gpus=1`` per run when the cluster has GPUs, else ``cpus_per_run`` CPUs
(torch runs that many threads). A worker or node lost mid-run makes Ray retry the task, at most
``max_retries`` times (system failures only: a run that raises is a failed *record*, not a retry);
a task that still fails becomes a failed record and the profile goes on. Adapters are written by the
worker to the artifact folder, which must be reachable from every node (``--artifacts`` on a shared
filesystem; the default, beside the store, serves a single machine). Records come back to the
driver, the only process that writes the SQLite store, so killing the driver loses nothing finished:
started again, it resumes from the store.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .execute import RunContext, execute
from .runspec import RunSpec
from .store import RunRecord

_CONTEXTS: dict[tuple[str, str, int], RunContext] = {}


def _execute_json(spec_json: str, root: str, features: str, threads: int) -> list[str]:
    """Worker side: run one spec (a context per worker process, reused across its tasks)."""
    key = (root, features, threads)
    if key not in _CONTEXTS:
        _CONTEXTS[key] = RunContext(root, features, threads=threads)
    return [r.to_json() for r in execute(RunSpec.from_dict(json.loads(spec_json)), _CONTEXTS[key])]


def require_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ValueError("the ray executor needs Ray: pip install 'peftatlas[ray]'") from None
    return ray


class RayExecutor:
    """Runs specs as Ray tasks (module docstring); ``capacity`` defaults to the cluster's run slots."""

    def __init__(self, root: str | Path, address: str | None = None, cpus_per_run: int = 1,
                 gpus_per_run: float | None = None, max_retries: int = 2, capacity: int | None = None,
                 init_kwargs: dict[str, Any] | None = None) -> None:
        ray = require_ray()
        self.ray = ray
        self.owns_ray = not ray.is_initialized()
        if self.owns_ray:
            if address:  # joining a running cluster: its resources are its own
                ray.init(address=address, log_to_driver=False, **(init_kwargs or {}))
            else:
                ray.init(include_dashboard=False, log_to_driver=False, **(init_kwargs or {}))
        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0.0)
        self.gpus_per_run = gpus_per_run if gpus_per_run is not None else (1.0 if gpus >= 1 else 0.0)
        self.cpus_per_run = cpus_per_run
        slots = int(gpus // self.gpus_per_run) if self.gpus_per_run else int(resources.get("CPU", 1) // cpus_per_run)
        self.capacity = capacity or max(1, slots)
        self.root = str(Path(root).resolve())
        self.features = str(Path(self.root) / "features")
        self.remote = ray.remote(_execute_json).options(num_cpus=cpus_per_run, num_gpus=self.gpus_per_run,
                                                        max_retries=max_retries, retry_exceptions=False)
        self.pending: dict[Any, RunSpec] = {}

    def submit(self, spec: RunSpec) -> None:
        ref = self.remote.remote(json.dumps(spec.to_dict()), self.root, self.features, self.cpus_per_run)
        self.pending[ref] = spec

    def next_finished(self) -> tuple[RunSpec, list[RunRecord]]:
        ready, _ = self.ray.wait(list(self.pending), num_returns=1)
        spec = self.pending.pop(ready[0])
        try:
            return spec, [RunRecord.from_json(t) for t in self.ray.get(ready[0])]
        except Exception as e:  # retries exhausted (worker or node lost every time): a failed record
            from .execute import base_record

            return spec, [_failed(base_record(spec), f"{type(e).__name__}: {e}")]

    def close(self) -> None:
        for ref in self.pending:
            self.ray.cancel(ref, force=True)
        self.pending.clear()
        if self.owns_ray:
            self.ray.shutdown()


def _failed(rec: RunRecord, error: str) -> RunRecord:
    import dataclasses

    return dataclasses.replace(rec, error=error[:2000])
