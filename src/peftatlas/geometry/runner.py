"""Run the probes on the updates stored in a results database (``peftatlas probe --store PATH``).

For every (model, task) with finished full fine-tuning runs of the main experiment::

    single  probe_matrix(ΔW_FT, W0) on every adapted linear matrix of the lowest seed   (nulls)
    pair    probe_pair(ΔW_FT seed a, ΔW_FT seed b) for the two lowest seeds            (seed-consistent rank)
    method  spectra and magnitude/direction of each other mergeable method's own ΔW (lowest seed):
            what the method actually learned, e.g. DoRA's ΔM/ΔD; plus, on a few matrices, the
            null tests its catalog entry predicts (:mod:`peftatlas.geometry.own`, same draws)

``ΔW_FT`` is read from the full-FT run's saved adapter (keys ``<module>.deltas.weight``); a method's
ΔW is ``merged_params(W0) − W0`` of its loaded adapter. W0 comes from the model the arena's runs of
that model start from (its setting's ``model``: :func:`peftatlas.evidence.execute.setting_for` — the
encoder classifier, SmolLM2, the DINOv2 classifier), or from any ``base_loader(model, num_labels)``.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..core.io import read_adapter_files
from .own import OWN_NULL_MATRICES, OwnNulls, own_nulls
from .probe import PROBE_VERSION, ProbeRow, probe_matrix, probe_pair
from .store import ProbeJob, ProbeStore, job_key

BaseLoader = Callable[[str, int], nn.Module]  # (model name, number of labels) -> the pristine model
DELTA_SUFFIX = ".deltas.weight"


@dataclasses.dataclass
class ProbeConfig:
    """How much probing to do. ``draws`` null matrices per null model and statistic."""

    draws: int = 100  # the rubric judges null-model predictions on ≥ 100 draws
    budget: int | None = None  # equal-budget fits; None = a rank-1 LoRA's (d_out + d_in)
    k: int = 8  # subspace size of the W0-alignment statistics
    nulls: tuple[str, ...] = ("perm", "spec")
    max_matrices: int | None = None  # None = every adapted linear matrix
    seed: int = 0
    methods: bool = True  # also probe other methods' own updates (nulls only where their entry predicts one)
    jobs: int = 1  # worker processes sharing a job's matrices (results do not depend on it)

    def key_fields(self) -> dict[str, Any]:
        return {"draws": self.draws, "budget": self.budget, "k": self.k, "nulls": list(self.nulls),
                "max_matrices": self.max_matrices, "seed": self.seed, "probe_version": PROBE_VERSION}


def default_base_loader(model: str, num_labels: int = 2) -> nn.Module:
    """The pristine model a run of ``model`` starts from, in eval mode: its setting's ``model`` with a head of
    ``num_labels`` drawn from seed 0 (the encoder's and the ViT's classifiers; SmolLM2, which has no head)."""
    from ..evidence.execute import _Labels, setting_for
    from ..evidence.train import TrainConfig

    return setting_for(model).model(model, _Labels(num_labels), 0, TrainConfig())[0].eval()


def head_labels(folder: str | Path) -> int:
    """Number of labels of a saved adapter's task head (2 when it saved no head)."""
    _, tensors = read_adapter_files(folder)
    heads = [v for k, v in tensors.items() if k.startswith("head.") and k.endswith("weight") and v.ndim == 2]
    return int(heads[-1].shape[0]) if heads else 2


def linear_weights(model: nn.Module) -> dict[str, np.ndarray]:
    """W0 of every ``nn.Linear`` in ``model`` by module name (float64)."""
    return {n: m.weight.detach().double().numpy() for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def full_ft_deltas(folder: str | Path) -> dict[str, np.ndarray]:
    """ΔW of every matrix in a full fine-tuning adapter folder (``<module>.deltas.weight``)."""
    _, tensors = read_adapter_files(folder)
    return {k[: -len(DELTA_SUFFIX)]: v.double().numpy() for k, v in tensors.items()
            if k.endswith(DELTA_SUFFIX) and v.ndim == 2}


def method_deltas(base: nn.Module, folder: str | Path) -> dict[str, np.ndarray]:
    """ΔW = merged − W0 of every adapted linear layer of a saved mergeable adapter (empty if not mergeable)."""
    from ..core.io import load_adapter

    adapted = load_adapter(base, folder, name="probe")
    out: dict[str, np.ndarray] = {}
    try:
        for layer_name, layer in adapted.adapted_layers().items():
            adapter = layer.adapters["probe"]
            if not getattr(adapter, "mergeable", False) or not isinstance(layer.base, nn.Linear):
                continue
            params = {k: v.detach().float() for k, v in layer.base.named_parameters(recurse=False)}
            with torch.no_grad():
                merged = adapter.merged_params(dict(params))["weight"]
            out[layer_name] = (merged.double() - params["weight"].double()).numpy()
    finally:
        adapted.unload()
    return out


def matrix_kind(name: str) -> str:
    """Module name with layer indices replaced, e.g. ``encoder.layer.N.attention.self.query``."""
    return re.sub(r"\.\d+\.", ".N.", name)


def select_matrices(names: list[str], max_n: int | None) -> list[str]:
    """Up to ``max_n`` names, spread over module kinds and evenly over depth (all when ``None``)."""
    names = sorted(names, key=_natural)
    if max_n is None or len(names) <= max_n:
        return names
    by_kind: dict[str, list[str]] = {}
    for n in names:
        by_kind.setdefault(matrix_kind(n), []).append(n)
    per_kind = max(1, math.ceil(max_n / len(by_kind)))
    chosen: list[str] = []
    for group in by_kind.values():
        idx = np.unique(np.linspace(0, len(group) - 1, min(per_kind, len(group))).round().astype(int))
        chosen += [group[i] for i in idx]
    chosen = sorted(chosen, key=lambda n: (_natural(n)[1:], matrix_kind(n)))  # spread depth first
    return sorted(chosen[:max_n], key=_natural)


def _natural(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _probe_targets(deltas: dict[str, np.ndarray], w0: dict[str, np.ndarray], head: set[str]) -> list[str]:
    """Linear matrices of the body with a non-zero update and a known W0."""
    return [n for n, d in deltas.items() if n in w0 and n not in head and w0[n].shape == d.shape and np.any(d)]


class ProbeRunner:
    """Runs and stores probe jobs for one results database."""

    def __init__(self, store_path: str | Path, config: ProbeConfig | None = None,
                 base_loader: BaseLoader | None = None, log: Callable[[str], None] | None = print) -> None:
        from ..evidence.store import ResultsStore

        self.path = Path(store_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"results database {self.path} does not exist; run `peftatlas run` first")
        self.results = ResultsStore(self.path)
        self.probes = ProbeStore(self.path)
        self.config = config or ProbeConfig()
        self.base_loader = base_loader or default_base_loader
        self.log = log or _silent
        self._bases: dict[str, dict[str, np.ndarray]] = {}

    def close(self) -> None:
        self.results.close()
        self.probes.close()

    def base_weights(self, model: str) -> dict[str, np.ndarray]:
        if model not in self._bases:
            self._bases[model] = linear_weights(self.base_loader(model, 2))
        return self._bases[model]

    def _artifact(self, rec: Any) -> Path | None:
        path = self.results.artifact_path(rec)
        return path if path is not None and path.is_dir() else None

    def groups(self) -> dict[tuple[str, str], list[Any]]:
        """Finished main-experiment records with artifacts, by (model, task), lowest seed first."""
        out: dict[tuple[str, str], list[Any]] = {}
        for rec in self.results.records(experiment="main", status="done"):
            if self._artifact(rec) is not None:
                out.setdefault((rec.model, rec.task), []).append(rec)
        for recs in out.values():
            recs.sort(key=lambda r: (r.method, r.budget or "", r.seed))
        return out

    def run(self) -> list[ProbeJob]:
        jobs: list[ProbeJob] = []
        groups = self.groups()
        if not groups:
            self.log(f"probe: {self.path} has no finished main-experiment runs with saved adapters; "
                     "run `peftatlas run --profile …` first")
        for (model, task), recs in sorted(groups.items()):
            full = _unique_seeds([r for r in recs if r.method == "full"])
            if not full:
                self.log(f"probe: {model}/{task}: no full fine-tuning run with a saved update; nothing to probe "
                         "(`peftatlas probe --retrain-missing` trains the probed ones again)")
                continue
            jobs.append(self._job("single", [full[0]], model, task, "full"))
            if len(full) >= 2:
                jobs.append(self._job("pair", full[:2], model, task, "full"))
            if self.config.methods:
                others: dict[tuple[str, str], Any] = {}
                for r in recs:
                    if r.method not in ("full", "head_only"):
                        others.setdefault((r.method, r.budget or ""), r)
                for (method, _), rec in sorted(others.items()):
                    jobs.append(self._job("method", [rec], model, task, method))
        return jobs

    def _job(self, kind: str, recs: list[Any], model: str, task: str, method: str) -> ProbeJob:
        cfg = self.config.key_fields() if kind != "method" else self._method_fields(method)
        key = job_key(kind, [r.key for r in recs], cfg)
        done = self.probes.job(key)
        if done is not None and done.status == "done":
            self.log(f"probe: {kind:<6} {model}/{task}/{method}: already done")
            return done
        job = ProbeJob(key, kind, [r.key for r in recs], model, task, method,
                       {**cfg, "seeds": [r.seed for r in recs], "budget_label": recs[0].budget,
                        "peftatlas_version": __version__}, created=time.time())
        start = time.time()
        self.probes.put_job(job)
        try:
            job.n_matrices = self._execute(job, recs)
            job.status = "done"
        except (ValueError, RuntimeError, OSError) as e:  # one bad artifact must not stop the others
            job.status, job.error = "failed", f"{type(e).__name__}: {e}"
            self.log(f"probe: {kind} {model}/{task}/{method} failed: {job.error}")
        job.wall_seconds = time.time() - start
        self.probes.put_job(job)
        return job

    def _method_fields(self, method: str) -> dict[str, Any]:
        """A method job's key fields: its matrices, and the null tests of its entry when draws are on."""
        plan = own_nulls(method) if self.config.draws else None
        own = {} if plan is None else {**self.config.key_fields(), **plan.key_fields(),
                                       "null_matrices": OWN_NULL_MATRICES}
        return {"probe_version": PROBE_VERSION, "max_matrices": self.config.max_matrices, **own}

    def _execute(self, job: ProbeJob, recs: list[Any]) -> int:
        w0 = self.base_weights(job.model)
        head = {"classifier"}
        if job.kind == "method":
            folder = self._artifact(recs[0])
            deltas = method_deltas(self.base_loader(job.model, head_labels(folder)), folder)  # type: ignore[arg-type]
        else:
            deltas = full_ft_deltas(self._artifact(recs[0]))  # type: ignore[arg-type]
        names = select_matrices(_probe_targets(deltas, w0, head), self.config.max_matrices)
        if not names:
            self.log(f"probe: {job.kind} {job.model}/{job.task}/{job.method}: no linear matrix with a non-zero update")
            return 0
        done = self.probes.matrices_done(job.job_key)
        todo = [n for n in names if n not in done]
        workers = min(self.config.jobs, len(todo)) if self.base_loader is default_base_loader else 1
        if job.kind == "single" and workers > 1:  # the slow kind (null draws); the others take seconds
            self._execute_in_workers(job, [r.key for r in recs], todo, workers)
            return len(names)
        other = full_ft_deltas(self._artifact(recs[1])) if job.kind == "pair" else {}  # type: ignore[arg-type]
        plan = own_nulls(job.method) if job.kind == "method" and "groups" in job.config else None
        with_nulls = set(select_matrices(names, OWN_NULL_MATRICES)) if plan else set()
        for i, name in enumerate(names):
            if name in done:
                continue
            t0 = time.time()
            rows = self._probe_one(job.kind, name, deltas[name], w0[name], other.get(name))
            if name in with_nulls:
                rows += self._own_nulls(name, deltas[name], w0[name], plan)  # type: ignore[arg-type]
            self.probes.put_rows(job.job_key, rows)
            self.log(f"probe: {job.kind:<6} {job.method:<16} [{i + 1}/{len(names)}] {name} "
                     f"({len(rows)} rows, {time.time() - t0:.1f}s)")
        return len(names)

    def _execute_in_workers(self, job: ProbeJob, run_keys: list[str], todo: list[str], workers: int) -> None:
        """Probe ``todo`` in ``workers`` spawned processes (one BLAS/torch thread each), matrices dealt
        round-robin; each process writes its rows to the store as it goes, so an interrupted job resumes."""
        ctx = multiprocessing.get_context("spawn")
        single = {k: os.environ.get(k) for k in _THREAD_VARS}
        os.environ.update({k: "1" for k in _THREAD_VARS})  # spawned children read these at start-up
        try:
            with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                futures = [pool.submit(_probe_worker, str(self.path), self.config, job.job_key, job.kind, run_keys,
                                       todo[w::workers], job.model, self.log is not _silent) for w in range(workers)]
                for f in futures:
                    f.result()
        finally:
            for k, v in single.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def _own_nulls(self, name: str, delta: np.ndarray, w0: np.ndarray, plan: OwnNulls) -> list[ProbeRow]:
        """The null tests of a method's entry on one matrix of its own update (the single job's settings)."""
        cfg = self.config
        return probe_matrix(delta, w0, name=name, draws=cfg.draws, seed=cfg.seed, budget=cfg.budget, k=cfg.k,
                            nulls=plan.nulls, groups=plan.groups)

    def _probe_one(self, kind: str, name: str, delta: np.ndarray, w0: np.ndarray,
                   other: np.ndarray | None) -> list[ProbeRow]:
        cfg = self.config
        if kind == "pair":
            if other is None:
                raise ValueError(f"second seed has no update for {name}")
            return probe_pair(delta, other, name=name)
        if kind == "method":
            return probe_matrix(delta, w0, name=name, draws=0, groups=("spectral", "magdir"))
        return probe_matrix(delta, w0, name=name, draws=cfg.draws, seed=cfg.seed, budget=cfg.budget, k=cfg.k,
                            nulls=cfg.nulls)


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _silent(_: str) -> None:
    return None


def auto_jobs() -> int:
    """Probe processes for ``--jobs auto``: one per core, at most 4."""
    return max(1, min(4, os.cpu_count() or 1))


def _probe_worker(store_path: str, config: ProbeConfig, job_key_: str, kind: str, run_keys: list[str],
                  names: list[str], model: str, verbose: bool) -> None:
    """Worker process: probe ``names`` of one job and store their rows (see ``_execute_in_workers``)."""
    torch.set_num_threads(1)
    log = (lambda s: print(s, flush=True)) if verbose else _silent
    runner = ProbeRunner(store_path, config, log=log)
    try:
        recs = [runner.results.get(k) for k in run_keys]
        deltas = full_ft_deltas(runner._artifact(recs[0]))  # type: ignore[arg-type]
        w0 = runner.base_weights(model)
        for name in names:
            t0 = time.time()
            rows = runner._probe_one(kind, name, deltas[name], w0[name], None)
            runner.probes.put_rows(job_key_, rows)
            log(f"probe: {kind:<6} {'full':<16} {name} ({len(rows)} rows, {time.time() - t0:.1f}s, worker)")
    finally:
        runner.close()


def _unique_seeds(recs: list[Any]) -> list[Any]:
    seen: dict[int, Any] = {}
    for r in sorted(recs, key=lambda r: r.seed):
        seen.setdefault(r.seed, r)
    return list(seen.values())


def probe_store(store_path: str | Path, config: ProbeConfig | None = None, base_loader: BaseLoader | None = None,
                log: Callable[[str], None] | None = print) -> list[ProbeJob]:
    """Probe every full fine-tuning update (and other methods' updates) in the database; resumable."""
    runner = ProbeRunner(store_path, config, base_loader, log)
    try:
        return runner.run()
    finally:
        runner.close()
