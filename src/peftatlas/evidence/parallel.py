"""The ``processes`` executor: runs side by side in local worker processes (``peftatlas run --jobs N``).

Each worker is a fresh process (``spawn``) with its own :class:`~.execute.RunContext` running torch
with ``threads`` intra-op threads; workers return records and never open the store (the driver,
:func:`~.executors.drive`, writes it). Head-only features are shared through a folder beside the
store. On a small CPU, two one-thread runs side by side get more work done than one two-thread run:
the transformer's small matrices scale poorly across threads. Float reductions may round
differently under another thread count, so a run is reproducible bit for bit under the same
``threads`` setting.

A worker that dies (killed by the OS when memory runs out, or a crash in native code) breaks the whole
pool, and every run in flight is lost with it: the executor cannot tell which worker died. It starts a
new pool and submits those runs again; each loss counts as one retry of every run that was in flight, and
a run lost more than ``max_retries`` (2) times becomes a failed record that says so, as under Ray. The
driver and the runs already finished are never affected.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import torch

from .execute import RunContext, base_record, execute
from .profiles import Profile
from .runspec import RunSpec
from .store import RunRecord


def default_jobs() -> int:
    """Worker processes for ``--jobs auto``: 1 with a GPU (one device, one run), else 2 when there are ≥ 2 cores."""
    if torch.cuda.is_available():
        return 1
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def resolve_jobs(jobs: int | str | None, profile: Profile | None = None) -> int:
    """``"auto"``/None → :func:`default_jobs` (1 for a tiny config-built model, whose runs take less
    than a worker's start-up); otherwise a positive integer."""
    if jobs in (None, "auto"):
        return 1 if profile is not None and profile.model.startswith("tiny") else default_jobs()
    n = int(jobs)
    if n < 1:
        raise ValueError(f"jobs must be ≥ 1 or 'auto', got {jobs!r}")
    return n


_CONTEXT: list[RunContext] = []


def _init_worker(root: str, features: str, threads: int) -> None:
    _CONTEXT[:] = [RunContext(root, features, threads=threads, log=lambda s: print(s, file=sys.stderr))]


def _execute(spec: RunSpec) -> list[RunRecord]:
    return execute(spec, _CONTEXT[0])


class ProcessExecutor:
    """``jobs`` spawned worker processes × ``threads`` torch threads each (default ``cores // jobs``)."""

    def __init__(self, root: str | Path, jobs: int, threads: int | None = None, max_retries: int = 2) -> None:
        self.capacity = jobs
        self.threads = threads or max(1, (os.cpu_count() or 1) // jobs)
        self.root, self.max_retries = Path(root), max_retries
        self.pool = self._new_pool()
        self.pending: dict[Future, RunSpec] = {}
        self.losses: dict[str, int] = {}
        self.collected: list[tuple[RunSpec, list[RunRecord]]] = []  # returned before waiting again

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.capacity, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker,
                                   initargs=(str(self.root), str(self.root / "features"), self.threads))

    def submit(self, spec: RunSpec) -> None:
        """Queue ``spec``; if a worker died since the last wait (the pool refuses new work), the pool is
        restarted first: the runs that were in flight count the loss, ``spec`` (never sent) does not."""
        try:
            future = self.pool.submit(_execute, spec)
        except BrokenProcessPool:
            self._restart()
            future = self.pool.submit(_execute, spec)
        self.pending[future] = spec

    def next_finished(self) -> tuple[RunSpec, list[RunRecord]]:
        while not self.collected:
            finished, _ = wait(self.pending, return_when=FIRST_COMPLETED)
            future = min(finished, key=lambda f: self.pending[f].key)  # deterministic among simultaneous ones
            try:
                records = future.result()
            except BrokenProcessPool:
                self._restart()
                continue
            return self.pending.pop(future), records
        return self.collected.pop(0)

    def _restart(self) -> None:
        """A worker died: a new pool, the runs in flight submitted again or, past ``max_retries``, failed."""
        for future, spec in sorted(self.pending.items(), key=lambda item: item[1].key):
            if future.done() and future.exception() is None:  # finished before the pool broke: kept
                self.collected.append((spec, future.result()))
        kept = {spec.key for spec, _ in self.collected}
        lost = sorted((s for s in self.pending.values() if s.key not in kept), key=lambda spec: spec.key)
        self.pending.clear()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.pool = self._new_pool()
        for spec in lost:
            n = self.losses[spec.key] = self.losses.get(spec.key, 0) + 1
            if n <= self.max_retries:
                self.submit(spec)
                continue
            error = (f"WorkerDied: the worker process died {n} time(s) while this run was in flight (killed by "
                     "the OS, e.g. out of memory, or a crash in native code); not retried again")
            self.collected.append((spec, [dataclasses.replace(base_record(spec), error=error)]))

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
