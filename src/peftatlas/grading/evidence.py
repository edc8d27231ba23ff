"""Everything the rubric and the report read from a results database, loaded once.

The *primary setting* is the (model, task) with the most full fine-tuning seeds in the main
experiment (ties: the one with OOD metrics, then by name). A method's *primary budget* is the budget
label with the most finished seeds for it there (ties: the smallest budget). Runs elsewhere are
shown in the evidence tables but do not decide grades.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..geometry.probe import ProbeRow
from ..geometry.store import ProbeJob, ProbeStore

OOD_PREFIX = "ood_acc/"


def budget_value(label: str | None) -> float:
    """Sort key of a budget label: '0.1%' → 0.1, 'fixed' and None last."""
    if label is None:
        return float("inf")
    m = re.match(r"^\s*([0-9.]+)\s*%\s*$", label)
    return float(m.group(1)) if m else float("inf") - 1


@dataclasses.dataclass
class Arm:
    """The finished main-experiment seeds of one method at one budget in one setting."""

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
        vals = [r.metrics.get("adapter_params", r.trainable_params) for r in self.records]
        return float(np.median(vals)) if vals else float("nan")

    @property
    def trainable_params(self) -> float:
        return float(np.median([r.trainable_params for r in self.records])) if self.records else float("nan")

    def retention(self) -> list[float]:
        """Per seed: mean over the OOD sets of ood_acc / test_acc."""
        out = []
        for r in self.records:
            ood = [v for k, v in r.metrics.items() if k.startswith(OOD_PREFIX)]
            test = r.metrics.get("test_acc")
            if ood and test:
                out.append(float(np.mean(ood)) / float(test))
        return out

    def ood_sets(self) -> list[str]:
        return sorted({k[len(OOD_PREFIX):] for r in self.records for k in r.metrics if k.startswith(OOD_PREFIX)})


@dataclasses.dataclass
class Evidence:
    """Runs and probe results of one results database."""

    path: Path | None
    records: list[Any]
    jobs: list[ProbeJob]
    rows: dict[str, list[ProbeRow]]

    @classmethod
    def from_store(cls, path: str | Path) -> Evidence:
        from ..evidence.store import ResultsStore

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"results database {p} does not exist; run `peftatlas run` or `peftatlas atlas`")
        with ResultsStore(p) as store:
            records = store.records()
        with ProbeStore(p) as probes:
            jobs = [j for j in probes.jobs() if j.status == "done"]
            rows = {j.job_key: probes.rows(j.job_key) for j in jobs}
        return cls(p, records, jobs, rows)

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
        groups: dict[tuple[str, str | None], dict[int, Any]] = {}
        for r in self.done():
            if (r.model, r.task) != setting or (method is not None and r.method != method):
                continue
            groups.setdefault((r.method, r.budget), {}).setdefault(r.seed, r)
        return [Arm(m, b, [recs[s] for s in sorted(recs)]) for (m, b), recs in sorted(
            groups.items(), key=lambda kv: (kv[0][0], budget_value(kv[0][1])))]

    def primary_arm(self, setting: tuple[str, str], method: str) -> Arm | None:
        arms = self.arms(setting, method)
        if not arms:
            return None
        return min(arms, key=lambda a: (-len(a.records), budget_value(a.budget)))

    def reference(self, setting: tuple[str, str], method: str) -> Arm | None:
        """The full-FT or head-only arm of a setting (they have no budget)."""
        return self.primary_arm(setting, method)

    def matched_lora(self, setting: tuple[str, str], arm: Arm) -> Arm | None:
        """LoRA at the same budget label; for fixed-size methods the LoRA arm closest in parameters."""
        loras = self.arms(setting, "lora")
        if not loras:
            return None
        same = [a for a in loras if a.budget == arm.budget]
        if same:
            return same[0]
        return min(loras, key=lambda a: abs(np.log(max(a.adapter_params, 1)) - np.log(max(arm.adapter_params, 1))))

    def curve_points(self, setting: tuple[str, str], method: str) -> dict[int, list[float]]:
        """Learning curve: train size → test accuracies over seeds (experiment "learning_curve")."""
        out: dict[int, dict[int, float]] = {}
        for r in self.done("learning_curve"):
            if (r.model, r.task) != setting or r.method != method or r.train_size is None:
                continue
            if "test_acc" in r.metrics:
                out.setdefault(int(r.train_size), {}).setdefault(r.seed, float(r.metrics["test_acc"]))
        return {size: [v for _, v in sorted(seeds.items())] for size, seeds in sorted(out.items())}

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
