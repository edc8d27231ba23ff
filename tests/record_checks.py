"""Checks on stored run records, and a run killer, shared by the executor tests (imported by name: pytest
puts tests/ on the path)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
from pathlib import Path


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


def kill_first_run(running: Path, killed: list[tuple[str, int]], retried: list[str], deadline: float,
                   times: int = 1) -> None:
    """SIGKILL the process named by the first ``<key>.pid`` marker of a run in progress (never this test's
    own process), then each new attempt of that run until it has been killed ``times`` times; then wait for
    a retry of it: the marker rewritten by another process, or removed (only a run of it removes it)."""
    key = None
    while time.time() < deadline and len(killed) < times:
        markers = [running / f"{key}.pid"] if key else sorted(running.glob("*.pid")) if running.is_dir() else []
        for marker in markers:
            try:
                pid = int(marker.read_text())
                if pid == os.getpid() or (marker.stem, pid) in killed:
                    continue
                os.kill(pid, signal.SIGKILL)  # the worker process running this run
            except (ValueError, OSError):
                continue
            key = marker.stem
            killed.append((key, pid))
            break
        time.sleep(0.01)
    while killed and time.time() < deadline:
        marker = running / f"{killed[-1][0]}.pid"
        with contextlib.suppress(OSError):
            if not marker.exists() or marker.read_text() not in ("", str(killed[-1][1])):
                retried.append(marker.stem)
                return
        time.sleep(0.01)
