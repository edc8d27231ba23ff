"""What every expressivity experiment shares: a result table, its files, and summary statistics."""

from __future__ import annotations

import csv
import dataclasses
import json
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


@dataclasses.dataclass
class ExperimentResult:
    """Per-fit rows, their summary (mean/std per group) and the run's settings."""

    name: str
    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    settings: dict[str, Any]
    plot: Callable[[Figure, ExperimentResult], None] | None = None
    files: dict[str, Path] = dataclasses.field(default_factory=dict)

    def write(self, out: str | Path) -> dict[str, Path]:
        """Write ``<name>.csv`` (every fit), ``<name>_summary.csv``, ``<name>.json`` and ``<name>.png``."""
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        files = {"rows": folder / f"{self.name}.csv", "summary": folder / f"{self.name}_summary.csv",
                 "json": folder / f"{self.name}.json"}
        write_csv(self.rows, files["rows"])
        write_csv(self.summary, files["summary"])
        files["json"].write_text(json.dumps(
            {"experiment": self.name, "settings": self.settings, "summary": self.summary, "rows": self.rows},
            indent=2))
        if self.plot is not None:
            files["plot"] = folder / f"{self.name}.png"
            fig = Figure(figsize=(11, 4), constrained_layout=True)
            FigureCanvasAgg(fig)  # Agg canvas without touching pyplot's global backend
            self.plot(fig, self)
            fig.savefig(files["plot"], dpi=110)
        self.files = files
        return files


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    fields: list[str] = []
    for r in rows:
        fields.extend(k for k in r if k not in fields)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def summarize(rows: Sequence[dict[str, Any]], keys: Sequence[str], value: str) -> list[dict[str, Any]]:
    """Mean, standard deviation and count of ``value`` for each distinct combination of ``keys``."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(float(r[value]))
    out = []
    for group, vals in groups.items():
        out.append({**dict(zip(keys, group)), f"{value}_mean": statistics.fmean(vals),
                    f"{value}_std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)})
    return out


@contextmanager
def timed(settings: dict[str, Any]) -> Iterator[None]:
    """Record the wall-clock seconds of the block in ``settings["seconds"]``.

    The fits are tiny matrices, where intra-op threads only add overhead; the block runs on one
    thread and the previous setting is restored afterwards.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        yield
    finally:
        settings["seconds"] = round(time.perf_counter() - start, 2)
        torch.set_num_threads(threads)


def format_table(summary: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain-text table for the terminal."""
    def cell(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    table = [[cell(r.get(c, "")) for c in columns] for r in summary]
    widths = [max(len(c), *(len(t[i]) for t in table)) if table else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(t[i].ljust(w) for i, w in enumerate(widths)) for t in table]
    return "\n".join(lines)
