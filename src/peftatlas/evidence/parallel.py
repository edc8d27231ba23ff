"""The ``processes`` executor: runs side by side in local worker processes (``peftatlas run --jobs N``).

Each worker is a fresh process (``spawn``) with its own :class:`~.execute.RunContext` running torch
with ``threads`` intra-op threads; workers return records and never open the store (the driver,
:func:`~.executors.drive`, writes it). Head-only features are shared through a folder beside the
store. On a small CPU, two one-thread runs side by side get more work done than one two-thread run:
the transformer's small matrices scale poorly across threads. Float reductions may round
differently under another thread count, so a run is reproducible bit for bit under the same
``threads`` setting.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

import torch

from .execute import RunContext, execute
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

    def __init__(self, root: str | Path, jobs: int, threads: int | None = None) -> None:
        self.capacity = jobs
        self.threads = threads or max(1, (os.cpu_count() or 1) // jobs)
        self.pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_init_worker,
                                        initargs=(str(root), str(Path(root) / "features"), self.threads))
        self.pending: dict[Future, RunSpec] = {}

    def submit(self, spec: RunSpec) -> None:
        self.pending[self.pool.submit(_execute, spec)] = spec

    def next_finished(self) -> tuple[RunSpec, list[RunRecord]]:
        finished, _ = wait(self.pending, return_when=FIRST_COMPLETED)
        future = min(finished, key=lambda f: self.pending[f].key)  # deterministic among simultaneous ones
        return self.pending.pop(future), future.result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
