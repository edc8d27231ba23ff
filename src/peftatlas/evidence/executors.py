"""Executors consume a :class:`~.plan.Plan`; :func:`drive` is the one loop that feeds them and writes the store.

::

    done = {key: record} of the store's finished runs          (failed ones are tried again)
    loop:
        submit plan.ready(done) − in flight, up to the executor's capacity
        nothing in flight → stop
        (spec, records) = executor.next_finished()
        store.put(each record); done[key] = record             # only the driver writes the store

An executor only runs specs: ``sequential`` (in this process), ``processes`` (local worker
processes, :mod:`.parallel`) and ``ray`` (a Ray cluster, :mod:`.ray_executor`). Since the plan is a
pure function of the finished records, every executor produces the same runs with the same keys;
runs are deterministic under a seed, so they give the same numbers (bit for bit under the same
torch thread count per run).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from .execute import RunContext, execute
from .plan import SWEEP, Plan, run_counts
from .runspec import RunSpec
from .store import ResultsStore, RunRecord

Log = Callable[[str], None]


class Executor(Protocol):
    """Runs specs somewhere and hands back their records, one finished spec at a time."""

    capacity: int  # specs kept in flight

    def submit(self, spec: RunSpec) -> None: ...

    def next_finished(self) -> tuple[RunSpec, list[RunRecord]]: ...

    def close(self) -> None: ...


class SequentialExecutor:
    """Runs each spec in this process, in submission order."""

    capacity = 1

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.queue: collections.deque[RunSpec] = collections.deque()

    def submit(self, spec: RunSpec) -> None:
        self.queue.append(spec)

    def next_finished(self) -> tuple[RunSpec, list[RunRecord]]:
        spec = self.queue.popleft()
        return spec, execute(spec, self.ctx)

    def close(self) -> None:
        self.queue.clear()


def run_line(spec: RunSpec, rec: RunRecord) -> str:
    """One log line for a finished run."""
    if rec.status != "done":
        return f"  FAILED {spec.experiment:<14} {spec.describe()}: {rec.error}"
    m = rec.metrics
    ood = " ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in m.items() if k.startswith("ood_acc/"))
    test = f" test {m['test_acc']:.3f}" if "test_acc" in m else ""
    return (f"  {spec.experiment:<14} {spec.describe()}: val {m['val_acc']:.3f}{test}"
            f"{' | OOD ' + ood if ood else ''} ({rec.wall_seconds:.0f} s)")


class Progress:
    """Finished runs against the plan's count, and the time left at this session's pace::

        total = sweep + main + completions + curve + curve copies     (run_counts)
                + grid-extension sweeps already finished
        left  = total − the plan's finished records − finished now
        ETA   = (elapsed / finished now) · left          (shown once a run has finished in this session)

    Both sides count the same runs, so a resumed sweep is not shown as done while runs are left;
    only extensions made during this session push the count past ``total`` (shown as ``k/N+``).
    """

    def __init__(self, total: int, already: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.finished = min(already, total)
        self.now = 0
        self.clock = clock
        self.start = clock()

    @classmethod
    def of(cls, plan: Plan, covered: Sequence[RunRecord]) -> Progress:
        """The progress of ``plan`` with ``covered`` (:meth:`Plan.covered`) already finished."""
        counts = run_counts(plan)
        grid = plan.profile.lr_grid
        extensions = sum(1 for r in covered if r.experiment == SWEEP and r.lr not in grid(r.method))
        planned = sum(counts[k] for k in ("sweep", "main", "completions", "curve", "curve_copies"))
        return cls(planned + extensions, len(covered))

    def step(self) -> None:
        self.now += 1

    def line(self) -> str:
        """``[k/N, ETA 1h05m]`` (``k/N+`` once grid extensions push k past the plan's count N)."""
        done = self.finished + self.now
        left = max(0, self.total - done)
        if not self.now:
            return f"[{done}/{self.total}]"
        eta = (self.clock() - self.start) / self.now * left
        hours, minutes = divmod(round(eta / 60), 60)
        span = f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"
        return f"[{done}/{self.total}{'+' if done > self.total else ''}, ETA {span}]"


def drive(plan: Plan, store: ResultsStore, executor: Executor, log: Log | None = None,
          on_record: Callable[[RunRecord], None] | None = None,
          tidy: Callable[[dict[str, RunRecord]], None] | None = None) -> dict[str, int]:
    """Run every spec of ``plan`` not already finished in ``store`` (module docstring).

    Returns counters: ``trained`` (runs executed, completions included), ``cached`` (finished
    records of the plan found in the store), ``failed``. ``on_record`` is called after each record is
    stored; ``tidy(done)`` after each finished run (and once at the start), e.g. to cut artifacts no
    later run needs (:func:`~.artifacts.apply_disposals`; it may update records in ``done``).
    """
    say = log or (lambda s: None)
    done = {r.key: r for r in store.records(status="done")}
    covered = plan.covered(done)
    counts = {"trained": 0, "cached": len(covered), "failed": 0}
    progress = Progress.of(plan, covered)
    in_flight: dict[str, RunSpec] = {}
    if tidy is not None:
        tidy(done)
    try:
        while True:
            for spec in plan.ready(done):
                if len(in_flight) >= executor.capacity:
                    break
                if spec.key not in in_flight:
                    executor.submit(spec)
                    in_flight[spec.key] = spec
            if not in_flight:
                break
            spec, records = executor.next_finished()
            in_flight.pop(spec.key, None)
            for rec in records:
                store.put(rec)
                done[rec.key] = rec
                if on_record is not None:
                    on_record(rec)
            if tidy is not None:
                tidy(done)
            main = next((r for r in records if r.key == spec.key), records[-1])
            counts["failed" if main.status != "done" else "trained"] += 1
            progress.step()
            say(f"{progress.line()}{run_line(spec, main)}")
    finally:
        executor.close()
    return counts
