"""Everything the rubric and the report read from a results database, loaded once.

The *primary setting* is the (model, task) with the most full fine-tuning seeds in the main
experiment (ties: the one with OOD metrics, then by name). A method's *primary budget* is the budget
label with the most finished seeds for it there (ties: the smallest budget). Runs elsewhere are
shown in the evidence tables but do not decide grades.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..geometry.probe import ProbeRow
from ..geometry.store import ProbeJob, ProbeStore
from .stats import Scores

OOD_PREFIX = "ood_acc/"
PARAM_TOLERANCE = 0.10  # a matched comparator's adapter size within ±10%


def budget_value(label: str | None) -> float:
    """Sort key of a budget label: '0.1%' → 0.1, 'fixed' and None last."""
    if label is None:
        return float("inf")
    m = re.match(r"^\s*([0-9.]+)\s*%\s*$", label)
    return float(m.group(1)) if m else float("inf") - 1


def item_correctness(record: Any) -> dict[str, np.ndarray]:
    """Per-item 0/1 correctness of one run, by evaluation set: ``{"test": …, "ood/<set>": …}``.

    The one place that knows how records keep it: ``record.items`` maps a set name to
    ``{"n", "bits"}`` (:func:`peftatlas.evidence.store.decode_items`) or to a plain list of 0/1 in the
    set's fixed item order. Empty when the record has none: the rubric then cannot include test-item
    uncertainty and says "not measured".
    """
    from ..evidence.store import decode_items

    raw = getattr(record, "items", None) or {}
    out: dict[str, np.ndarray] = {}
    for name, value in raw.items():
        if isinstance(value, dict) and "bits" in value and "n" in value:
            arr = np.asarray(decode_items(value), dtype=np.float64)
        elif isinstance(value, list | tuple):
            arr = np.asarray(value, dtype=np.float64)
        else:
            continue
        if arr.size:
            out[name] = arr
    return out


def _stack(records: list[Any], split: str, metric: str) -> Scores | None:
    """Scores of ``records`` on one evaluation set: per-item when every record has the same items."""
    accs = [float(r.metrics[metric]) for r in records if metric in r.metrics]
    items = [item_correctness(r).get(split) for r in records]
    if items and all(x is not None for x in items) and len({x.size for x in items}) == 1:  # type: ignore[union-attr]
        return Scores.from_items(np.stack(items))  # type: ignore[arg-type]
    if len(accs) != len(records) or not accs:
        return None
    return Scores.from_seeds(accs)


def hp_key(record: Any) -> str:
    """Canonical JSON of a run's hyperparameters: what tells two arms of one method and budget apart."""
    return json.dumps(record.hyperparameters, sort_keys=True, default=str)


def _targets(hp: dict[str, Any]) -> tuple[str, ...] | str | None:
    t = hp.get("targets")
    if t is None or isinstance(t, str):
        return t
    return tuple(sorted(t))


def _default_targets(method: str) -> tuple[str, ...] | str | None:
    """What ``targets=None`` meant for ``method``: its class's default targets (so a LoRA arm planned with
    its defaults and a VeRA arm planned as ``"all-linear"`` count as the same target modules)."""
    from ..core.method import MethodError, get_method

    try:
        default = get_method(method).default_targets
    except MethodError:
        return None
    return _targets({"targets": default})


def _module_names(alternation: str) -> str:
    """``attention\\.self\\.query|output\\.dense`` → "output, query": regex escapes removed, the
    ``attention.self.`` prefix and a trailing ``.dense`` dropped, sorted, duplicates merged."""
    names = set()
    for part in alternation.split("|"):
        name = part.replace("\\", "").removeprefix("attention.self.")
        names.add(name.removesuffix(".dense") if name != "dense" else name)
    return ", ".join(sorted(names))


@dataclasses.dataclass
class Arm:
    """The finished main-experiment seeds of one method at one budget in one setting.

    The rubric reads an arm only through this interface: :meth:`scores` (seeds × items correctness on
    the test set, or on all OOD sets concatenated), :attr:`adapter_params`, :attr:`targets`,
    :attr:`matches`, :meth:`steps_to_target` and :attr:`steps`.
    """

    method: str
    budget: str | None
    records: list[Any]

    def metric(self, name: str) -> list[float]:
        return [float(r.metrics[name]) for r in self.records if name in r.metrics]

    @property
    def seeds(self) -> list[int]:
        return sorted(r.seed for r in self.records)

    @property
    def adapter_params(self) -> float:
        vals = [(getattr(r, "arm", None) or {}).get("adapter_params") or r.metrics.get("adapter_params",
                                                                                     r.trainable_params)
                for r in self.records]
        return float(np.median(vals)) if vals else float("nan")

    @property
    def trainable_params(self) -> float:
        return float(np.median([r.trainable_params for r in self.records])) if self.records else float("nan")

    @property
    def hp(self) -> str | None:
        return hp_key(self.records[0]) if self.records else None

    @property
    def targets(self) -> tuple[str, ...] | str | None:
        """The target modules the adapter was attached to (None: not recorded)."""
        if not self.records:
            return None
        arm = getattr(self.records[0], "arm", None) or {}
        recorded = _targets(arm if "targets" in arm else self.records[0].hyperparameters)
        return recorded if recorded is not None else _default_targets(self.method)

    @property
    def targets_label(self) -> str:
        """The targets for people. A name list reads "query, value"; a layer-subset regex from the plan's
        matched arms (``…\\.(0|2|5)\\.(attention\\.self\\.query|…)``) reads "query, value on 3 of 6 blocks";
        a module path loses ``attention.self.`` and a trailing ``.dense``, so the attention output and the
        feed-forward output stay told apart ("attention.output", "output"); a name alternation that matches
        every block (``.*\\.(q_proj|…|query|…)``) reads "any of: q_proj, …"; anything else as recorded."""
        t = self.targets
        if isinstance(t, tuple):
            return ", ".join(t)
        if not isinstance(t, str):
            return str(t)
        m = re.fullmatch(r".+?\\\.\(([\d|]+)\)\\\.\((.+)\)", t)
        if m is None:
            anywhere = re.fullmatch(r"\.\*\\\.\(([\w|\\.]+)\)", t)
            return f"any of: {_module_names(anywhere.group(1))}" if anywhere else t
        arm = (getattr(self.records[0], "arm", None) or {}) if self.records else {}
        where = re.search(r"on (\d+ of \d+ blocks)", str(arm.get("note", "")))
        blocks = where.group(1) if where else f"blocks {m.group(1).replace('|', ',')}"
        return f"{_module_names(m.group(2))} on {blocks}"

    @property
    def matches(self) -> dict[str, bool]:
        """For a matched-LoRA arm: each method it was added for → whether it is within ±10% of it."""
        arm = (getattr(self.records[0], "arm", None) or {}) if self.records else {}
        return {m: bool(v.get("budget_met")) for m, v in (arm.get("matches") or {}).items()}

    @property
    def steps(self) -> int | None:
        """Training steps of the arm's runs (the last evaluation step of the first record's curve)."""
        steps = [int(p["step"]) for r in self.records[:1] for p in r.curve if "step" in p]
        return max(steps) if steps else None

    def scores(self, split: str = "test") -> Scores | None:
        """``split="test"``: test accuracy; ``"ood"``: every OOD set's items concatenated (per seed: the
        item-weighted mean over the sets). None when a record lacks the metric."""
        if split == "test":
            return _stack(self.records, "test", "test_acc")
        sets = self.ood_sets()
        if not sets:
            return None
        parts = [_stack(self.records, f"ood/{s}", f"{OOD_PREFIX}{s}") for s in sets]
        if any(p is None for p in parts):
            return None
        if all(p.items is not None for p in parts):  # type: ignore[union-attr]
            return Scores.from_items(np.concatenate([p.items for p in parts], axis=1))  # type: ignore[union-attr,misc]
        return Scores.from_seeds(np.mean([p.per_seed for p in parts], axis=0))  # type: ignore[union-attr]

    def ood_accuracy(self) -> list[float]:
        """Per seed: mean OOD accuracy over the shifted sets."""
        out = []
        for r in self.records:
            ood = [v for k, v in r.metrics.items() if k.startswith(OOD_PREFIX)]
            if ood:
                out.append(float(np.mean(ood)))
        return out

    def retention(self) -> list[float]:
        """Per seed: mean over the OOD sets of ood_acc / test_acc (shown only; never graded — it rewards
        under-fitting)."""
        out = []
        for r in self.records:
            ood = [v for k, v in r.metrics.items() if k.startswith(OOD_PREFIX)]
            test = r.metrics.get("test_acc")
            if ood and test:
                out.append(float(np.mean(ood)) / float(test))
        return out

    def steps_to_target(self) -> list[float] | None:
        """Per seed: steps until the validation target was reached (+inf: never); None if not recorded."""
        if not any("steps_to_target" in r.metrics or "target_acc" in r.metrics for r in self.records):
            return None
        return [float(r.metrics.get("steps_to_target", math.inf)) for r in self.records]

    def ood_sets(self) -> list[str]:
        return sorted({k[len(OOD_PREFIX):] for r in self.records for k in r.metrics if k.startswith(OOD_PREFIX)})


def current_records(records: list[Any]) -> tuple[list[Any], set[str]]:
    """The records made by each method's latest code, and the keys of the superseded ones.

    A results store can hold two code versions of one method in one setting (a method file was changed
    and the profile resumed: the new runs have new keys, the old ones stay). Pooling their seeds would mix
    two programs in one arm, so per (model, task, profile, method) only the code version of the newest
    record counts; the others are kept in the store but ignored by grades and reports."""
    newest: dict[tuple, tuple[float, str]] = {}
    for r in records:
        group = (r.model, r.task, getattr(r, "profile", "") or "", r.method)
        stamp = (r.created or 0.0, r.code_version or "")
        if group not in newest or stamp > newest[group]:
            newest[group] = stamp
    kept, superseded = [], set()
    for r in records:
        group = (r.model, r.task, getattr(r, "profile", "") or "", r.method)
        if (r.code_version or "") == newest[group][1]:
            kept.append(r)
        else:
            superseded.add(r.key)
    return kept, superseded


@dataclasses.dataclass
class Evidence:
    """Runs and probe results of one results database (each method's latest code version only:
    :func:`current_records`; ``superseded`` counts the older records left out)."""

    path: Path | None
    records: list[Any]
    jobs: list[ProbeJob]
    rows: dict[str, list[ProbeRow]]
    superseded: int = 0

    @classmethod
    def from_store(cls, path: str | Path) -> Evidence:
        from ..evidence.store import ResultsStore

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"results database {p} does not exist; run `peftatlas run` or `peftatlas atlas`")
        with ResultsStore(p) as store:
            records, superseded = current_records(store.records())
        with ProbeStore(p) as probes:  # a probe job that read a superseded run is superseded too
            jobs = [j for j in probes.jobs() if j.status == "done" and not superseded.intersection(j.run_keys)]
            rows = {j.job_key: probes.rows(j.job_key) for j in jobs}
        return cls(p, records, jobs, rows, len(superseded))

    # --- settings and arms ----------------------------------------------------------------------
    def done(self, experiment: str | None = "main") -> list[Any]:
        return [r for r in self.records if r.status == "done" and (experiment is None or r.experiment == experiment)]

    def settings(self) -> list[tuple[str, str]]:
        return sorted({(r.model, r.task) for r in self.done()})

    def primary_setting(self) -> tuple[str, str] | None:
        def key(s: tuple[str, str]) -> tuple:
            full = {r.seed for r in self.done() if (r.model, r.task) == s and r.method == "full"}
            has_ood = any(k.startswith(OOD_PREFIX) for r in self.done() if (r.model, r.task) == s for k in r.metrics)
            return (-len(full), not has_ood, s)
        settings = self.settings()
        return min(settings, key=key) if settings else None

    def arms(self, setting: tuple[str, str], method: str | None = None) -> list[Arm]:
        """Main-experiment arms: records grouped by (method, budget label, hyperparameters), so two
        matched-LoRA arms that share the label "matched" but differ in rank stay apart."""
        groups: dict[tuple[str, str | None, str], dict[int, Any]] = {}
        for r in self.done():
            if (r.model, r.task) != setting or (method is not None and r.method != method):
                continue
            groups.setdefault((r.method, r.budget, hp_key(r)), {}).setdefault(r.seed, r)
        return [Arm(m, b, [recs[s] for s in sorted(recs)]) for (m, b, _), recs in sorted(
            groups.items(), key=lambda kv: (kv[0][0], budget_value(kv[0][1]), kv[0][2]))]

    def primary_arm(self, setting: tuple[str, str], method: str) -> Arm | None:
        arms = self.arms(setting, method)
        if not arms:
            return None
        return min(arms, key=lambda a: (-len(a.records), budget_value(a.budget)))

    def reference(self, setting: tuple[str, str], method: str) -> Arm | None:
        """The full-FT or head-only arm of a setting (they have no budget)."""
        return self.primary_arm(setting, method)

    def matched_lora(self, setting: tuple[str, str], arm: Arm) -> Arm | None:
        """The LoRA arm with the same target modules and a parameter count within ±``PARAM_TOLERANCE``.

        An arm recorded as matched to ``arm.method`` wins; otherwise the closest in parameters among the
        arms that qualify. None when no LoRA arm qualifies: the comparison is then not measured.
        """
        def qualifies(a: Arm) -> bool:
            if a.matches.get(arm.method):  # the plan added it for this method, same targets, within ±10%
                return True
            rel = abs(a.adapter_params - arm.adapter_params) / max(arm.adapter_params, 1.0)
            return a is not arm and a.targets == arm.targets and rel <= PARAM_TOLERANCE

        loras = [a for a in self.arms(setting, "lora") if qualifies(a)]
        if not loras:
            return None
        named = [a for a in loras if a.matches.get(arm.method)]
        return min(named or loras, key=lambda a: (abs(np.log(max(a.adapter_params, 1)) -
                                                      np.log(max(arm.adapter_params, 1))), -len(a.records)))

    def larger_lora(self, setting: tuple[str, str], arm: Arm) -> Arm | None:
        """The smallest LoRA arm on ``arm``'s target modules with more than ±``PARAM_TOLERANCE`` above its parameter
        count (the plan adds the nearest rank above when none lands within ±10 %, e.g. r = 1 on q, v for GOFT).
        Beating it is a stricter test than equal parameters; losing to it says nothing at equal budget."""
        above = [a for a in self.arms(setting, "lora") if a is not arm and a.targets == arm.targets
                 and a.adapter_params > arm.adapter_params * (1 + PARAM_TOLERANCE)]
        return min(above, key=lambda a: (a.adapter_params, -len(a.records)), default=None)

    def curve_points(self, setting: tuple[str, str], method: str) -> dict[int, list[float]]:
        """Learning curve: train size → test accuracies over seeds (experiment "learning_curve")."""
        out: dict[int, dict[int, float]] = {}
        for r in self.done("learning_curve"):
            if (r.model, r.task) != setting or r.method != method or r.train_size is None:
                continue
            if "test_acc" in r.metrics:
                out.setdefault(int(r.train_size), {}).setdefault(r.seed, float(r.metrics["test_acc"]))
        return {size: [v for _, v in sorted(seeds.items())] for size, seeds in sorted(out.items())}

    def curve_scores(self, setting: tuple[str, str], method: str, budget: str | None,
                     sizes: list[int], seeds: list[int], hp: str | None = None) -> Scores | None:
        """Learning-curve scores of one arm averaged over ``sizes``, per seed (and per item when every run
        has item correctness): ``Y[s, i] = mean_n Y[s, n, i]``. Averaging within a seed first keeps the
        seeds the independent unit (a seed's runs at different sizes are not independent)."""
        runs: dict[tuple[int, int], Any] = {}
        for r in self.done("learning_curve"):
            if (r.model, r.task) == setting and r.method == method and r.budget == budget and r.train_size \
                    and (hp is None or hp_key(r) == hp):
                runs.setdefault((int(r.train_size), r.seed), r)
        per = []
        for n in sizes:
            recs = [runs.get((n, s)) for s in seeds]
            if any(x is None for x in recs):
                return None
            sc = _stack(recs, "test", "test_acc")  # type: ignore[arg-type]
            if sc is None:
                return None
            per.append(sc)
        if all(p.items is not None for p in per) and len({p.n_items for p in per}) == 1:
            return Scores.from_items(np.mean([p.items for p in per], axis=0))  # type: ignore[misc]
        return Scores.from_seeds(np.mean([p.per_seed for p in per], axis=0))

    def curve_seeds(self, setting: tuple[str, str], method: str, budget: str | None,
                    hp: str | None = None) -> dict[int, set[int]]:
        """Learning-curve train size → seeds with a finished run of one arm."""
        out: dict[int, set[int]] = {}
        for r in self.done("learning_curve"):
            if (r.model, r.task) == setting and r.method == method and r.budget == budget and r.train_size \
                    and (hp is None or hp_key(r) == hp):
                out.setdefault(int(r.train_size), set()).add(r.seed)
        return out

    # --- probes ---------------------------------------------------------------------------------
    def probe_job(self, setting: tuple[str, str], kind: str, method: str = "full") -> ProbeJob | None:
        jobs = [j for j in self.jobs if (j.model, j.task) == setting and j.kind == kind and j.method == method]
        return max(jobs, key=lambda j: j.created) if jobs else None

    def probe_rows(self, setting: tuple[str, str], kind: str, method: str = "full") -> list[ProbeRow]:
        job = self.probe_job(setting, kind, method)
        return self.rows.get(job.job_key, []) if job else []

    def magdir_points(self, setting: tuple[str, str], method: str) -> list[tuple[float, float]]:
        """DoRA's (ΔM, ΔD) per matrix of ``method``'s update (full FT: the single job; others: method jobs)."""
        rows = self.probe_rows(setting, "single" if method == "full" else "method", method)
        by: dict[str, dict[str, float]] = {}
        for r in rows:
            if r.probe == "magdir":
                by.setdefault(r.matrix, {})[r.stat] = r.value
        return [(v["delta_magnitude"], v["delta_direction"]) for _, v in sorted(by.items()) if len(v) == 2]
