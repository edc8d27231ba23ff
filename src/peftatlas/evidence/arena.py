"""The arena: same model, same data, same parameter budget; each method's own LR selection; several seeds.

:func:`run_profile` builds the profile's run plan (:mod:`.plan`: arms, LR sweeps on several seeds with
the grid extended past an edge, seeds, learning curves, matched-LoRA arms) and drives it with one
executor (:mod:`.executors`: ``sequential``, ``processes``, ``ray``); the driver alone writes the
store. Sweep runs are evaluated on validation only: the test and OOD sets are never looked at for
a rate that was not chosen. A chosen sweep run becomes a main seed without retraining; its test
and OOD metrics are computed from its saved adapter (the state training ended in, restored exactly).

Every run is looked up by its key first, so a killed profile resumes where it stopped. Every
finished run saves its adapter (and head) next to the store, so geometry probes can read any
update — full fine-tuning's ΔW included.
"""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path
from typing import Any

from .artifacts import apply_disposals
from .execute import RunContext, load_run
from .executors import SequentialExecutor, drive
from .plan import SWEEP, build_plan
from .profiles import Profile, get_profile
from .store import ResultsStore, RunRecord, canonical_json

ARTIFACTS = "artifacts"
EXECUTORS = ("sequential", "processes", "ray")
__all__ = ["ARTIFACTS", "SWEEP", "format_table", "load_run", "run_profile", "summarize"]


def make_executor(name: str, root: Path, jobs: int, threads: int | None = None, address: str | None = None,
                  ray_options: dict[str, Any] | None = None) -> Any:
    """The executor called ``name`` for a store in folder ``root``."""
    if name == "sequential":
        return SequentialExecutor(RunContext(root, root / "features", threads=threads))
    if name == "processes":
        from .parallel import ProcessExecutor

        return ProcessExecutor(root, jobs, threads)
    if name == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(root, address=address, **(ray_options or {}))
    raise ValueError(f"unknown executor {name!r}; choose from {', '.join(EXECUTORS)}")


def run_profile(profile: str | Profile, store_path: str | Path, methods: list[str] | None = None,
                progress: bool = True, jobs: int | str | None = 1, executor: str | None = None,
                address: str | None = None, artifacts: str | Path | None = None, threads: int | None = None,
                ray_options: dict[str, Any] | None = None) -> list[RunRecord]:
    """Run (or resume) ``profile`` into the SQLite store at ``store_path``; the records it covers.

    ``methods`` restricts the run to these registered names (default: the profile's list). With
    ``progress`` it logs one line per run. ``executor``: ``sequential``, ``processes`` (``jobs``
    worker processes) or ``ray`` (``address``: ``auto``, ``HOST:PORT`` or None for a local cluster);
    default ``processes`` when ``jobs`` resolves to more than 1, else ``sequential``. ``artifacts``:
    the adapter folder (default ``artifacts`` beside the store; for Ray on several nodes with adapters
    over 16 MiB, a path on a shared filesystem). ``threads``: torch threads per run (default: as the
    executor sets them).
    """
    from .parallel import resolve_jobs

    prof = get_profile(profile)
    n_jobs = resolve_jobs(jobs, prof)
    name = executor or ("processes" if n_jobs > 1 else "sequential")
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if progress else (lambda s: None)
    path = Path(store_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = str(Path(artifacts).resolve()) if artifacts is not None else ARTIFACTS
    log(f"profile {prof.name}: {prof.description}")
    plan = build_plan(prof, methods, artifacts=folder, log=log, cache=path.parent / "plans")
    for task in plan.tasks.values():
        log(task.describe())
    with ResultsStore(path) as store:
        ex = make_executor(name, path.parent.resolve(), n_jobs, threads, address, ray_options)
        log(f"executor {name}: {len(plan.arms)} arms, up to {ex.capacity} run(s) at a time")
        counts = drive(plan, store, ex, log=log, tidy=lambda done: apply_disposals(plan, store, done))
        log(f"runs: {counts['trained']} trained, {counts['cached']} already in the store, "
            f"{counts['failed']} failed")
        return plan.covered({r.key: r for r in store.records()})


# --- the results table ---------------------------------------------------------------------------------
def _mean_sd(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(records: list[RunRecord]) -> list[dict[str, Any]]:
    """One row per (task, method, budget) of the main experiment: means, spreads, FT-gain recovered.

    ``recovered = (test − head_only) / (full − head_only)`` with means over seeds (catalog M1).
    """
    main = [r for r in records if r.experiment == "main" and r.status == "done"]
    groups: dict[tuple, list[RunRecord]] = {}
    for r in main:  # one row per arm: matched-LoRA arms at two ranks share method and budget label
        groups.setdefault((r.task, r.method, r.budget, r.profile, canonical_json(r.hyperparameters)), []).append(r)
    rows: list[dict[str, Any]] = []
    for (task, method, budget, profile, _), rs in groups.items():
        test = _mean_sd([r.metrics["test_acc"] for r in rs])
        ood_names = sorted({k for r in rs for k in r.metrics if k.startswith("ood_acc/")})
        rows.append({
            "task": task, "method": method, "budget": budget, "profile": profile,
            "params": rs[0].trainable_params, "adapter_params": int(rs[0].metrics.get("adapter_params", 0)),
            "hyperparameters": rs[0].hyperparameters, "lr": rs[0].lr, "seeds": len(rs),
            "val_acc": _mean_sd([r.metrics["val_acc"] for r in rs])[0], "test_acc": test[0], "test_sd": test[1],
            "ood": {k.split("/", 1)[1]: _mean_sd([r.metrics[k] for r in rs if k in r.metrics])[0] for k in ood_names},
            "steps_to_target": _median([r.metrics.get("steps_to_target") for r in rs]),
            "wall_seconds": sum(r.wall_seconds for r in rs),
        })
    for row in rows:
        ref = {m: next((x["test_acc"] for x in rows if x["task"] == row["task"] and x["method"] == m
                        and x["profile"] == row["profile"]), None) for m in ("full", "head_only")}
        lo, hi = ref["head_only"], ref["full"]
        row["recovered"] = (row["test_acc"] - lo) / (hi - lo) if lo is not None and hi is not None and hi != lo \
            else math.nan
    return rows


def _median(values: list[float | None]) -> float:
    """Median over runs, counting a run that never reached the target as +inf."""
    if not values:
        return math.nan
    return statistics.median([math.inf if v is None else v for v in values])


def format_table(records: list[RunRecord]) -> str:
    """The main comparison as a plain-text table."""
    rows = summarize(records)
    if not rows:
        return "(no finished main runs)"
    ood_names = sorted({k for r in rows for k in r["ood"]})
    head = ["task", "method", "budget", "size", "adapter params", "lr", "val", "test (mean ± sd)", "recovered",
            *[f"OOD {n}" for n in ood_names], "steps→target"]
    lines = []
    for r in sorted(rows, key=lambda r: (r["task"], r["budget"] or "", -r["test_acc"])):
        hp = r["hyperparameters"]
        size = ", ".join(f"{k}={v}" for k, v in hp.items() if k != "targets" and isinstance(v, int)
                         and not isinstance(v, bool))
        st = r["steps_to_target"]
        lines.append([r["task"], r["method"], r["budget"] or "-", size or "-", f"{r['adapter_params']:,}",
                      f"{r['lr']:.3g}", f"{r['val_acc']:.3f}", f"{r['test_acc']:.3f} ± {r['test_sd']:.3f} "
                      f"(n={r['seeds']})", f"{r['recovered']:.2f}",
                      *[f"{r['ood'].get(n, math.nan):.3f}" for n in ood_names],
                      "never" if st == math.inf else ("-" if math.isnan(st) else f"{st:.0f}")])
    widths = [max(len(h), *(len(x[i]) for x in lines)) for i, h in enumerate(head)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(x, widths)) for x in lines]
    return "\n".join(out)
