"""Independent arena runs in parallel worker processes (``peftatlas run --jobs N``).

A profile's runs depend on each other in one way only: a configuration's seed runs (and learning
curves) use the learning rate its sweep chose. :func:`prefill` therefore submits every LR-sweep run
first and, as soon as the last sweep run of a configuration finishes, that configuration's other
seeds and learning-curve runs — so no worker waits for the other methods' sweeps::

    queue: every (configuration, LR) of every sweep, at the first seed   (full FT first, head-only last)
    on the last sweep run of configuration c:  queue c's seeds and learning curves at its chosen LR

Each worker is a fresh process (``spawn``) holding its own :class:`~peftatlas.evidence.arena.Arena`
on the same SQLite store (WAL mode takes concurrent writers) and running torch with
``threads`` intra-op threads. The ordinary sequential pass that follows finds every finished run
in the store and only assembles the records, so the results and their keys are those of a
sequential sweep; a run that failed in a worker is simply tried again there. On a small CPU,
two one-thread runs side by side get more work done than one two-thread run: the transformer's
small matrices scale poorly across threads. Float reductions may round differently under another
thread count, so a run is reproducible bit for bit under the same ``jobs``/``threads`` setting.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import torch

from .profiles import Profile, get_profile, profile_methods


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One arena run, addressed by what a worker needs to rebuild it."""

    experiment: str
    task: str
    method: str
    conf_index: int
    lr: float
    seed: int
    train_size: int | None = None


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


# --- worker side ---------------------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(profile: Profile, store_path: str, threads: int) -> None:
    from .arena import Arena
    from .store import ResultsStore

    torch.set_num_threads(threads)
    store = ResultsStore(store_path)
    _WORKER["arena"] = Arena(profile, store, progress=False, log=lambda s: print(s, file=sys.stderr, flush=True))
    _WORKER["confs"] = {}


def _run(spec: RunSpec) -> dict[str, int]:
    """Train (or find) one run in this worker; the change of the arena's counters."""
    arena = _WORKER["arena"]
    confs = _WORKER["confs"]
    if (spec.task, spec.method) not in confs:
        confs[(spec.task, spec.method)] = arena.configurations(spec.method, arena.task(spec.task).num_labels)
    conf = confs[(spec.task, spec.method)][spec.conf_index]
    before = dict(arena.counts)
    arena.run(spec.experiment, spec.task, conf, spec.lr, spec.seed, spec.train_size)
    return {k: arena.counts[k] - before[k] for k in before}


# --- main side -----------------------------------------------------------------------------------------
def _add(counts: dict[str, int], delta: dict[str, int]) -> None:
    for k, v in delta.items():
        counts[k] += v


def _cost_order(method: str) -> tuple[int, int]:
    """Submission order: full fine-tuning first (the longest runs), head-only last (seconds once its
    features are cached), so that the last runs to finish are short ones."""
    return (method == "head_only", method != "full")


def prefill(profile: str | Profile, store_path: str | Path, methods: list[str] | None, jobs: int,
            threads: int | None = None, log: Any = None) -> dict[str, int]:
    """Train the profile's runs with ``jobs`` worker processes (see the module docstring).

    Returns the workers' counters (trained / cached / copied / failed). ``threads`` per worker
    defaults to ``max(1, cores // jobs)``.
    """
    from .arena import SWEEP, Arena
    from .store import ResultsStore

    prof = get_profile(profile)
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    names, _ = profile_methods(prof, methods)
    counts = {"trained": 0, "cached": 0, "copied": 0, "failed": 0}
    ctx = multiprocessing.get_context("spawn")
    with ResultsStore(store_path) as store, ProcessPoolExecutor(
            jobs, mp_context=ctx, initializer=_init_worker, initargs=(prof, str(store_path), threads)) as pool:
        planner = Arena(prof, store, progress=False)
        plans: list[tuple[str, str, int, Any]] = []
        for task in (prof.task, *prof.extra_tasks):
            for method in sorted(names, key=_cost_order):
                try:
                    confs = planner.configurations(method, planner.task(task).num_labels)
                except (ValueError, NotImplementedError):
                    continue  # the sequential pass reports why
                plans += [(task, method, i, c) for i, c in enumerate(confs)]
        if log:
            log(f"training with {jobs} worker processes × {threads} thread(s): "
                f"{len(plans)} configurations, each configuration's seeds as soon as its LR sweep is done")
        pending: dict[Future, int | None] = {}  # future → plan index (sweep runs) or None
        sweeping: dict[int, int] = {}  # plan index → sweep runs still running
        for p, (t, m, i, c) in enumerate(plans):
            grid = prof.lr_grid(c.method)
            sweeping[p] = len(grid)
            for lr in grid:
                pending[pool.submit(_run, RunSpec(SWEEP, t, m, i, lr, prof.seeds[0]))] = p
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                p = pending.pop(f)
                _add(counts, f.result())
                if p is None:
                    continue
                sweeping[p] -= 1
                if sweeping[p]:
                    continue
                t, m, i, c = plans[p]
                lr = planner.sweep(t, c)  # every sweep run of this configuration is in the store: a lookup
                if lr is None:
                    continue
                follow = [RunSpec("main", t, m, i, lr, s) for s in prof.seeds]
                if t == prof.task and planner._in_curve(m):
                    follow += [RunSpec("learning_curve", t, m, i, lr, s, n) for n in prof.learning_curve_sizes
                               for s in prof.seeds[:prof.learning_curve_seeds]]
                for spec in follow:
                    pending[pool.submit(_run, spec)] = None
    return counts
