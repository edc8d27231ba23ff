"""The arena: same model, same data, same parameter budget; each method's own LR sweep; several seeds.

Pseudocode of :func:`run_profile`::

    for task in [profile.task, *profile.extra_tasks]:
        for method in profile.methods:
            for configuration in budgets(method):             # solved size knob, or fixed size, or reference
                sweep  = [run(lr, seed₀) for lr in lr_grid(method)]        # experiment "lr_sweep"
                lr*    = argmax_lr  val_acc(sweep)      # validation only; ties → the smaller LR
                main   = [run(lr*, s) for s in seeds]                       # experiment "main" (seed₀ reused)
                curve  = [run(lr*, s, n) for n in curve sizes, s in curve seeds]   # "learning_curve"

Sweep runs are evaluated on validation only: the test and OOD sets are never looked at for a rate
that was not chosen. The chosen sweep run becomes the main experiment's first seed without
retraining; its test and OOD metrics are then computed from its saved adapter (the state training
ended in, restored exactly).

Each run is looked up by its key first, so a killed sweep resumes where it stopped; a run whose
training computation already exists under another experiment label is recorded again by copying
(same ``train_key``), never retrained. Every finished run saves its adapter (and head) next to the
store, so geometry probes can read any update — full fine-tuning's ΔW included.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import hashlib
import inspect
import json
import math
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import __version__
from ..core.io import load_adapter, save_adapter
from ..core.method import get_method, registered_methods
from ..core.model import AdaptedModel, attach
from .budget import BudgetSolution, solve_budget
from .data import TaskData, load_task
from .models import encoder_param_count, load_classifier, model_info
from .profiles import Profile, get_profile, method_plan, profile_methods
from .store import ResultsStore, RunRecord, config_key
from .train import TrainConfig, evaluate_heldout, train_classifier, use_feature_cache

ARTIFACTS = "artifacts"


@functools.cache
def _code_versions() -> dict[str, str]:
    """Every registered method's code version, hashed once per process (at a sweep's first run):
    files edited while a sweep runs do not change the code already imported and running, so they
    must not change its keys either."""
    root = Path(__file__).resolve().parent.parent
    shared = sorted((root / "core").glob("*.py")) + [root / "evidence" / f for f in ("data.py", "models.py",
                                                                                      "train.py")]
    shared += sorted((root / "ops").glob("**/*.py")) + sorted((root / "methods").glob("_*.py"))
    base = hashlib.sha256()
    for f in shared:
        if f.is_file():
            base.update(f.relative_to(root).as_posix().encode())
            base.update(f.read_bytes())
    out = {}
    for name, cls in registered_methods().items():
        h = base.copy()
        source = inspect.getsourcefile(cls)
        if source and Path(source).is_file():
            h.update(Path(source).read_bytes())
        out[name] = f"{__version__}+{h.hexdigest()[:12]}"
    return out


def code_version(method: str) -> str:
    """``<version>+<hash>`` of the sources a run's numbers depend on: the engine, the evidence data/model/
    training code, the method's own module and the shared helpers (``ops``, ``methods/_*.py``)."""
    return _code_versions()[get_method(method).name]


@dataclasses.dataclass
class Configuration:
    """One method at one budget (or fixed size / reference): what the sweep and seeds share."""

    method: str
    budget: str | None  # "0.1%", "fixed", None
    solution: BudgetSolution

    @property
    def hyperparameters(self) -> dict[str, Any]:
        hp = dict(self.solution.hyperparameters)
        if self.solution.targets is not None:
            t = self.solution.targets
            hp["targets"] = t if isinstance(t, str) else list(t)
        return hp

    def label(self) -> str:
        knob = self.solution.knob
        size = f"{knob}={self.solution.value}" if knob else ""
        return " ".join(x for x in (self.method, size, f"@{self.budget}" if self.budget else "") if x)


Log = Callable[[str], None]
SWEEP = "lr_sweep"  # the experiment label of LR-sweep runs (validation only)


class Arena:
    """Runs a :class:`Profile` against a :class:`ResultsStore`; see the module docstring."""

    def __init__(self, profile: Profile, store: ResultsStore, progress: bool = True, log: Log | None = None) -> None:
        self.profile = profile
        self.store = store
        self.progress = progress
        self.log: Log = log or ((lambda s: print(s, file=sys.stderr, flush=True)) if progress else (lambda s: None))
        self._tasks: dict[str, TaskData] = {}
        self.touched: list[RunRecord] = []
        self.counts = {"trained": 0, "cached": 0, "copied": 0, "failed": 0}
        use_feature_cache(store.root / "features")  # head-only features, shared by worker processes

    # --- data and configurations --------------------------------------------------------------------
    def task(self, name: str) -> TaskData:
        if name not in self._tasks:
            p = self.profile
            data = load_task(name, ood=(name == p.task))
            self._tasks[name] = data.subset(p.train_size, p.val_size, p.test_size, p.ood_size)
        return self._tasks[name]

    def configurations(self, method: str, num_labels: int) -> list[Configuration]:
        cls = get_method(method)
        plan = method_plan(method)
        model, _ = load_classifier(self.profile.model, num_labels)
        reference = encoder_param_count(self.profile.model)
        out: list[Configuration] = []
        if cls.family == "reference" and cls.size_knob is None and method in ("full", "head_only"):
            budgets: list[str | None] = [None]
        elif cls.size_knob is None:
            budgets = ["fixed"]
        else:
            budgets = list(self.profile.budgets)
        for b in budgets:
            sol = solve_budget(model, method, None if b in (None, "fixed") else b, reference, plan.targets,
                               plan.hyperparameters, tol=self.profile.budget_tolerance, max_value=plan.max_knob)
            if b == "fixed":
                sol.note = f"fixed size: {cls.name} has no size knob ({sol.achieved:,} adapter parameters)"
            out.append(Configuration(cls.name, b, sol))
        return out

    # --- one run ------------------------------------------------------------------------------------
    def train_config(self, task: str, conf: Configuration, lr: float, seed: int) -> TrainConfig:
        p = self.profile
        head_lr = None if conf.method == "head_only" else p.head_lr
        return TrainConfig(lr=lr, head_lr=head_lr, seed=seed, target_acc=p.target_for(task), **p.train)

    def run(self, experiment: str, task_name: str, conf: Configuration, lr: float, seed: int,
            train_size: int | None = None) -> RunRecord:
        """Look the run up; copy it from another experiment; or train it and store the record."""
        task = self.task(task_name)
        if train_size is not None and train_size >= len(task.train):
            train_size = None
        data = task if train_size is None else task.subset(train=train_size)
        cfg = self.train_config(task_name, conf, lr, seed)
        version = code_version(conf.method)
        identity = {
            "model": model_info(self.profile.model)["source"], "task": task.name, "data": data.fingerprint(),
            "split_seed": task.split_seed, "method": conf.method, "hyperparameters": conf.hyperparameters,
            "budget": conf.budget, "train": dataclasses.asdict(cfg), "train_size": train_size,
            "profile": self.profile.name, "code_version": version,
        }
        train_key = config_key(identity)
        key = config_key({**identity, "experiment": experiment})
        done = self.store.get(key)
        if done is not None and done.status == "done":
            self.counts["cached"] += 1
            return self._touch(done)
        twin = next((r for r in self.store.records(train_key=train_key, status="done")), None)
        if twin is not None:
            if experiment != SWEEP and "test_acc" not in twin.metrics:
                twin = self._complete(twin, data, cfg)
            rec = dataclasses.replace(twin, key=key, experiment=experiment, created=time.time())
            self.store.put(rec)
            self.counts["copied"] += 1
            return self._touch(rec)
        base = RunRecord(
            key=key, experiment=experiment, model=self.profile.model, task=task.name, method=conf.method,
            hyperparameters=conf.hyperparameters, budget=conf.budget, trainable_params=0, lr=lr, seed=seed,
            train_size=train_size, metrics={}, curve=[], status="failed", error=None, artifact=None,
            code_version=version, created=time.time(), wall_seconds=0.0, profile=self.profile.name,
            train_key=train_key)
        t0 = time.time()
        desc = f"{conf.label()} lr={lr:g} s{seed}" + (f" n={train_size}" if train_size else "")
        try:
            rec = self._train(base, conf, data, cfg, desc, evaluate_test=experiment != SWEEP)
            self.counts["trained"] += 1
        except Exception as e:  # a failed run is a result too; the sweep goes on
            rec = dataclasses.replace(base, error=f"{type(e).__name__}: {e}", wall_seconds=time.time() - t0)
            self.counts["failed"] += 1
            self.log(f"  FAILED {desc}: {rec.error}")
            if self.progress:
                traceback.print_exc(file=sys.stderr)
        self.store.put(rec)
        if rec.status == "done":
            m = rec.metrics
            ood = " ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in m.items() if k.startswith("ood_acc/"))
            test = f" test {m['test_acc']:.3f}" if "test_acc" in m else ""
            self.log(f"  {experiment:<14} {desc}: val {m['val_acc']:.3f}{test}"
                     f"{' | OOD ' + ood if ood else ''} ({rec.wall_seconds:.0f} s)")
        return self._touch(rec)

    def _complete(self, twin: RunRecord, data: TaskData, cfg: TrainConfig) -> RunRecord:
        """Add test and OOD metrics to a run trained without them (an LR-sweep run whose rate was chosen),
        evaluating its saved adapter — the very state training ended in — and store the result."""
        t0 = time.time()
        model, tokenizer = load_run(self.store, twin)
        metrics = {**twin.metrics, **evaluate_heldout(model, tokenizer, data, cfg)}
        done = dataclasses.replace(twin, metrics=metrics, wall_seconds=twin.wall_seconds + time.time() - t0)
        self.store.put(done)
        self.touched = [done if r.key == done.key else r for r in self.touched]
        del model
        gc.collect()
        return done

    def _train(self, base: RunRecord, conf: Configuration, data: TaskData, cfg: TrainConfig, desc: str,
               evaluate_test: bool = True) -> RunRecord:
        model, tokenizer = load_classifier(self.profile.model, data.num_labels, seed=cfg.seed,
                                           encoder_dropout=cfg.encoder_dropout)
        hp = dict(conf.solution.hyperparameters)
        adapted = attach(model, conf.method, targets=conf.solution.targets, seed=cfg.seed, **hp)
        counts = adapted.count_parameters()
        result = train_classifier(adapted, tokenizer, data, cfg, evaluate_test=evaluate_test,
                                  progress=self.progress, desc=desc)
        metrics = dict(result.metrics)
        metrics["adapter_params"] = float(counts.adapter)
        metrics["head_params"] = float(counts.head)
        if conf.solution.target:
            metrics["budget_target"] = float(conf.solution.target)
            metrics["budget_rel_error"] = (counts.adapter - conf.solution.target) / conf.solution.target
            metrics["budget_met"] = float(bool(conf.solution.met))
        artifact = f"{ARTIFACTS}/{base.key[:24]}"
        save_adapter(adapted, self.store.root / artifact)
        rec = dataclasses.replace(base, trainable_params=counts.adapter + counts.head, metrics=metrics,
                                  curve=result.curve, status="done", artifact=artifact,
                                  wall_seconds=result.wall_seconds, created=time.time())
        del adapted, model
        gc.collect()
        return rec

    def _touch(self, rec: RunRecord) -> RunRecord:
        self.touched.append(rec)
        return rec

    # --- experiments -------------------------------------------------------------------------------
    def sweep(self, task: str, conf: Configuration) -> float | None:
        """Run the LR grid at the first seed; the LR with the best validation accuracy, ties going to the
        smaller LR (None if every run failed)."""
        seed = self.profile.seeds[0]
        runs = [self.run(SWEEP, task, conf, lr, seed) for lr in self.profile.lr_grid(conf.method)]
        done = [r for r in runs if r.status == "done"]
        if not done:
            return None
        return max(done, key=lambda r: (r.metrics["val_acc"], -r.lr)).lr

    def method(self, task: str, method: str) -> None:
        data = self.task(task)
        try:
            confs = self.configurations(method, data.num_labels)
        except (ValueError, NotImplementedError) as e:
            self.log(f"{method}: skipped, cannot configure it for {self.profile.model}: {e}")
            return
        for conf in confs:
            self.log(f"{task} / {conf.label()} — {conf.solution.note}")
            lr = self.sweep(task, conf)
            if lr is None:
                self.log(f"  {conf.label()}: every LR failed; no main runs")
                continue
            for seed in self.profile.seeds:
                self.run("main", task, conf, lr, seed)
            if task == self.profile.task and self._in_curve(method):
                for size in self.profile.learning_curve_sizes:
                    for seed in self.profile.seeds[:self.profile.learning_curve_seeds]:
                        self.run("learning_curve", task, conf, lr, seed, train_size=size)

    def _in_curve(self, method: str) -> bool:
        wanted = self.profile.learning_curve_methods
        return not wanted or method in wanted

    def run_all(self, methods: list[str] | None = None) -> list[RunRecord]:
        names, missing = profile_methods(self.profile, methods)
        for m in missing:
            self.log(f"{m}: not a registered method; skipped (see `peftatlas methods`)")
        self.log(f"profile {self.profile.name}: {self.profile.description}")
        for task in (self.profile.task, *self.profile.extra_tasks):
            self.log(self.task(task).describe())
            for method in names:
                self.method(task, method)
        return self.touched


def load_run(store: ResultsStore, record: RunRecord) -> tuple[AdaptedModel, Any]:
    """Rebuild a finished run: a fresh model of ``record.model`` with the saved adapter and head loaded.

    Returns ``(model, tokenizer)``. For ``full`` runs, each adapted layer's
    ``adapters["default"].deltas["weight"]`` is the fine-tuning update ΔW of that weight.
    """
    folder = store.artifact_path(record)
    if folder is None or not folder.is_dir():
        raise FileNotFoundError(f"run {record.key[:12]} ({record.method}) has no saved adapter"
                                + (f" at {folder}" if folder else ""))
    meta = json.loads((folder / "adapter.json").read_text())
    head = meta["fingerprint"]["head"].get("classifier.weight")
    if not head:
        raise ValueError(f"{folder}: the saved adapter has no classifier head to size the model by")
    model, tokenizer = load_classifier(record.model, int(head[0]), seed=record.seed)
    return load_adapter(model, folder), tokenizer


def run_profile(profile: str | Profile, store_path: str | Path, methods: list[str] | None = None,
                progress: bool = True, jobs: int | str | None = 1) -> list[RunRecord]:
    """Run (or resume) ``profile`` into the SQLite store at ``store_path``; the records it covers.

    ``methods`` restricts the run to these registered names (default: the profile's list). With
    ``progress`` it logs one line per run and shows progress bars on a terminal. ``jobs`` > 1 (or
    ``"auto"``) first trains independent runs in that many worker processes
    (:mod:`peftatlas.evidence.parallel`); the sequential pass then finds them in the store.
    """
    from .parallel import prefill, resolve_jobs

    prof = get_profile(profile)
    n_jobs = resolve_jobs(jobs, prof)
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if progress else None
    pre = {"trained": 0, "cached": 0, "copied": 0, "failed": 0}
    if n_jobs > 1:
        Path(store_path).parent.mkdir(parents=True, exist_ok=True)
        pre = prefill(prof, store_path, methods, n_jobs, log=log)
    with ResultsStore(store_path) as store:
        arena = Arena(prof, store, progress=progress)
        records = arena.run_all(methods)
        c = {k: v + (pre[k] if k != "cached" else 0) for k, v in arena.counts.items()}
        c["cached"] = max(0, c["cached"] - pre["trained"] - pre["copied"]) if n_jobs > 1 else c["cached"]
        arena.log(f"runs: {c['trained']} trained, {c['cached']} already in the store, {c['copied']} reused "
                  f"across experiments, {c['failed']} failed")
    return records


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
    for r in main:
        groups.setdefault((r.task, r.method, r.budget, r.profile), []).append(r)
    rows: list[dict[str, Any]] = []
    for (task, method, budget, profile), rs in groups.items():
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
