"""The rubric in code: every dimension of the seed catalog's point scale decided by a stated test.

Dimensions and tests (test accuracy on the primary setting's test split, main experiment, every
finished seed; 95% percentile-bootstrap intervals resampling each arm's seeds; ≥ 2 seeds per arm
for any CI-based decision)::

    PE  (1)    R = (s − s0)/(s_FT − s0) ≥ 0.95 (point estimate; CI shown) with adapter parameters < 1% of
               full fine-tuning's; s0 = head-only.  fail: R < 0.95 or ≥ 1% parameters
    BL  (1)    mean(s) − mean(s_LoRA) at the same budget label (fixed-size methods: the LoRA arm closest
               in parameters) has a CI above 0.  fail: CI below 0;  inconclusive: CI contains 0
    BF  (1.5)  mean(s) − mean(s_FT) has a CI above 0
    DE  (1.5)  learning curves: at every train size ≤ 256 where both ran, the accuracy difference to full
               fine-tuning at the same size; their mean has a CI above 0
    OOD (2)    retention = mean over shifted sets of ood_acc/test_acc, per seed; retention − LoRA's
               retention has a CI above 0 (LoRA itself is compared with full fine-tuning)
    WA  (1)    not measurable: the literature mark is carried over

Geometry (the entry's :class:`~peftatlas.catalog.Prediction` s on full fine-tuning's update): each
prediction is *supported* (median z over the selected matrices ≥ 3 in the predicted direction, or
|z| < 3 for a "no structure" prediction; a threshold met; a magnitude/direction correlation of the
predicted sign with a CI excluding 0), *contradicted* (significant the other way, threshold missed)
or *not significant*. All measured predictions supported → +0.5 point; any contradicted → −0.5.

Measured grade = Σ passed dimensions + geometry modifier, clipped to [0, 8]; an analytic override
(the stated claim is mathematically false) caps it at 1. Dimensions without data score 0 and say
"not measured"; the number of measured dimensions is reported beside the grade.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import numpy as np

from ..catalog import ENTRIES, MAX_POINTS, SCALE, Entry, Prediction, registered_names
from ..geometry.rotation import magnitude_direction_correlation
from .evidence import Arm, Evidence
from .stats import Interval, bootstrap, gain_recovered, mean_difference

PE_RECOVERY = 0.95
PE_MAX_FRACTION = 0.01
DE_MAX_SIZE = 256
Z_SIGNIFICANT = 3.0
GEOMETRY_BONUS = 0.5

RULES: dict[str, str] = {
    "PE": f"R = (s − s_head)/(s_FT − s_head) ≥ {PE_RECOVERY} with adapter parameters < {PE_MAX_FRACTION:.0%} of "
          "full fine-tuning's",
    "BL": "accuracy − budget-matched LoRA's accuracy: 95% bootstrap CI above 0",
    "BF": "accuracy − full fine-tuning's accuracy: 95% bootstrap CI above 0",
    "DE": f"mean accuracy difference to full fine-tuning over learning-curve sizes ≤ {DE_MAX_SIZE}: CI above 0",
    "OOD": "OOD retention (ood_acc/test_acc) − LoRA's retention (LoRA: − full FT's): CI above 0",
    "WA": "not measurable; the literature mark is carried over",
}


@dataclasses.dataclass
class Verdict:
    dim: str
    status: str  # pass | fail | inconclusive | not measured | n/a | literature | reference
    points: float
    derivation: str
    numbers: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def rule(self) -> str:
        return RULES[self.dim]


@dataclasses.dataclass
class GeometryVerdict:
    prediction: Prediction
    status: str  # supported | not significant | contradicted | not measured
    derivation: str
    numbers: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Grade:
    entry: Entry
    method: str | None
    setting: tuple[str, str] | None
    budget: str | None
    verdicts: dict[str, Verdict]
    geometry: list[GeometryVerdict]
    geometry_modifier: float
    measured_points: float | None
    literature_points: float
    derivation: list[str]
    disagreements: list[str]

    @property
    def measured_dims(self) -> int:
        return sum(v.status in ("pass", "fail", "inconclusive") for v in self.verdicts.values())

    @property
    def label(self) -> str:
        """Entry name, plus the method name when the entry has several implementations."""
        if len(self.entry.methods) == 1 or not self.method:
            return self.entry.name
        return f"{self.entry.name} — {self.method}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "entry": self.entry.id, "method": self.method, "setting": list(self.setting) if self.setting else None,
            "budget": self.budget, "measured_points": self.measured_points, "literature_points": self.literature_points,
            "measured_dimensions": self.measured_dims, "geometry_modifier": self.geometry_modifier,
            "verdicts": {d: {"status": v.status, "points": v.points, "rule": v.rule, "derivation": v.derivation,
                             "numbers": v.numbers} for d, v in self.verdicts.items()},
            "geometry": [{"meaning": g.prediction.meaning, "status": g.status, "derivation": g.derivation}
                         for g in self.geometry],
            "derivation": self.derivation, "disagreements": self.disagreements,
        }


# --- dimension tests ----------------------------------------------------------------------------------
def _ci_verdict(dim: str, diff: Interval, what: str, numbers: dict[str, Any]) -> Verdict:
    numbers = {**numbers, "difference": diff.estimate, "ci_low": diff.low, "ci_high": diff.high, "n": list(diff.n)}
    text = f"{what}: {diff.fmt(pct=True)} (seeds {'/'.join(map(str, diff.n))})"
    if min(diff.n) < 2:
        return Verdict(dim, "inconclusive", 0.0, text + " — needs ≥ 2 seeds per arm for a CI", numbers)
    if diff.low > 0:
        return Verdict(dim, "pass", SCALE[dim], text + " — CI above 0", numbers)
    if diff.high < 0:
        return Verdict(dim, "fail", 0.0, text + " — CI below 0", numbers)
    return Verdict(dim, "inconclusive", 0.0, text + " — CI contains 0", numbers)


def decide_pe(arm: Arm, full: Arm | None, head: Arm | None) -> Verdict:
    if full is None or head is None:
        return Verdict("PE", "not measured", 0.0, "needs full fine-tuning and head-only runs in the same setting")
    s, ft, s0 = arm.metric("test_acc"), full.metric("test_acc"), head.metric("test_acc")
    if not (s and ft and s0):
        return Verdict("PE", "not measured", 0.0, "test accuracy missing")
    frac = arm.adapter_params / full.adapter_params if full.adapter_params > 0 else float("nan")
    gap = float(np.mean(ft) - np.mean(s0))
    nums = {"fraction_params": frac, "s": float(np.mean(s)), "s_full": float(np.mean(ft)),
            "s_head": float(np.mean(s0)), "adapter_params": arm.adapter_params}
    if gap <= 0:
        return Verdict("PE", "inconclusive", 0.0, f"full fine-tuning ({np.mean(ft):.3f}) does not beat head-only "
                       f"({np.mean(s0):.3f}): there is no gain to recover", nums)
    r = gain_recovered(s, ft, s0)
    nums.update({"R": r.estimate, "R_low": r.low, "R_high": r.high})
    text = (f"R = {r.fmt()} at {arm.adapter_params:,.0f} adapter parameters = {100 * frac:.3f}% of full "
            f"fine-tuning's (s = {np.mean(s):.3f}, s_FT = {np.mean(ft):.3f}, s_head = {np.mean(s0):.3f})")
    if frac >= PE_MAX_FRACTION:
        return Verdict("PE", "fail", 0.0, text + f" — uses ≥ {PE_MAX_FRACTION:.0%} of the parameters", nums)
    if r.estimate >= PE_RECOVERY:
        sure = "CI also above" if r.low >= PE_RECOVERY else "CI reaches below"
        return Verdict("PE", "pass", SCALE["PE"], text + f" — R ≥ {PE_RECOVERY} ({sure} the threshold)", nums)
    return Verdict("PE", "fail", 0.0, text + f" — R < {PE_RECOVERY}", nums)


def decide_bl(arm: Arm, lora: Arm | None) -> Verdict:
    if arm.method == "lora":
        return Verdict("BL", "n/a", 0.0, "LoRA is the comparator")
    if lora is None:
        return Verdict("BL", "not measured", 0.0, "no LoRA run in the same setting")
    a, b = arm.metric("test_acc"), lora.metric("test_acc")
    if not (a and b):
        return Verdict("BL", "not measured", 0.0, "test accuracy missing")
    return _ci_verdict("BL", mean_difference(a, b), f"vs LoRA @{lora.budget} ({lora.adapter_params:,.0f} params)",
                       {"lora_budget": lora.budget})


def decide_bf(arm: Arm, full: Arm | None) -> Verdict:
    if full is None:
        return Verdict("BF", "not measured", 0.0, "no full fine-tuning run in the same setting")
    a, b = arm.metric("test_acc"), full.metric("test_acc")
    if not (a and b):
        return Verdict("BF", "not measured", 0.0, "test accuracy missing")
    return _ci_verdict("BF", mean_difference(a, b), "vs full fine-tuning", {})


def decide_de(ev: Evidence, setting: tuple[str, str], method: str) -> Verdict:
    mine, ref = ev.curve_points(setting, method), ev.curve_points(setting, "full")
    sizes = sorted(s for s in set(mine) & set(ref) if s <= DE_MAX_SIZE)
    if not sizes:
        have = f"method sizes {sorted(mine) or 'none'}, full FT sizes {sorted(ref) or 'none'}"
        return Verdict("DE", "not measured", 0.0, f"no learning-curve size ≤ {DE_MAX_SIZE} run by both ({have})")
    groups = [mine[s] for s in sizes] + [ref[s] for s in sizes]
    k = len(sizes)
    diff = bootstrap(groups, lambda *m: np.mean([m[i] - m[k + i] for i in range(k)], axis=0))
    return _ci_verdict("DE", diff, f"mean difference to full FT at sizes {sizes}", {"sizes": sizes})


def decide_ood(arm: Arm, lora: Arm | None, full: Arm | None) -> Verdict:
    comp = full if arm.method == "lora" else lora
    name = "full fine-tuning" if arm.method == "lora" else "LoRA"
    if comp is None:
        return Verdict("OOD", "not measured", 0.0, f"no {name} run in the same setting")
    a, b = arm.retention(), comp.retention()
    if not (a and b):
        return Verdict("OOD", "not measured", 0.0, "no OOD metrics (ood_acc/*) in the runs")
    v = _ci_verdict("OOD", mean_difference(a, b),
                    f"retention {np.mean(a):.3f} vs {name} {np.mean(b):.3f} over {', '.join(arm.ood_sets())}",
                    {"retention": float(np.mean(a)), "comparator_retention": float(np.mean(b)), "comparator": name})
    return v


# --- geometry -------------------------------------------------------------------------------------------
def matching_rows(rows: list, p: Prediction) -> list:
    pat = re.compile(p.matrices) if p.matrices else None
    return [r for r in rows if r.probe == p.probe and r.stat == p.stat and (p.null is None or r.null == p.null)
            and (pat is None or pat.search(r.matrix))]


def judge_prediction(ev: Evidence, setting: tuple[str, str], p: Prediction) -> GeometryVerdict:
    if p.kind == "magdir":
        pts = ev.magdir_points(setting, p.job_method)
        if len(pts) < 3:
            return GeometryVerdict(p, "not measured",
                                   f"needs ≥ 3 matrices of {p.job_method}'s update, have {len(pts)}")
        c = magnitude_direction_correlation(pts)
        text = (f"Pearson r(ΔM, ΔD) = {c['r']:+.2f} [95% CI {c['ci_low']:+.2f}, {c['ci_high']:+.2f}] "
                f"over {c['n']} matrices")
        nums = dict(c)
        if c["ci_low"] > 0 or c["ci_high"] < 0:
            sign = 1 if c["ci_low"] > 0 else -1
            return GeometryVerdict(p, "supported" if sign == p.direction else "contradicted", text, nums)
        return GeometryVerdict(p, "not significant", text + " (CI contains 0)", nums)
    kind = "pair" if p.probe == "seed_rank" else "single"
    rows = matching_rows(ev.probe_rows(setting, kind, "full"), p)
    if not rows:
        return GeometryVerdict(p, "not measured", f"no {p.probe}/{p.stat} probe results on full fine-tuning's update")
    if p.kind == "threshold":
        vals = []
        for r in rows:
            d = _dim(r)
            vals.append(r.value / d if p.per_d and d else r.value)
        arr = np.asarray(vals, dtype=float)
        if p.aggregate == "cv":
            stat = float(arr.std() / arr.mean()) if arr.mean() > 0 else float("nan")
            what = "coefficient of variation"
        else:
            stat, what = float(np.median(arr)), "median" + (" / d" if p.per_d else "")
        ok = stat <= p.value if p.op == "<=" else stat >= p.value
        text = f"{what} of {p.stat} over {len(rows)} matrices = {stat:.3g} (predicted {p.op} {p.value:g})"
        if not math.isfinite(stat):
            return GeometryVerdict(p, "not significant", text + ": undefined", {"value": stat})
        return GeometryVerdict(p, "supported" if ok else "contradicted", text, {"value": stat, "n": len(rows)})
    zs = np.asarray([r.z for r in rows if r.z is not None], dtype=float)
    if zs.size == 0:
        inv = any(r.invariant for r in rows)
        return GeometryVerdict(p, "not measured", "the null cannot move this statistic (invariant)" if inv else
                               "no z-scores stored")
    med = float(np.median(zs))
    frac = float(np.mean(np.abs(zs) >= Z_SIGNIFICANT))
    vals = np.asarray([r.value for r in rows], dtype=float)
    nulls = np.asarray([r.null_mean for r in rows if r.null_mean is not None], dtype=float)
    text = (f"median z = {med:+.1f} over {zs.size} matrices ({100 * frac:.0f}% with |z| ≥ {Z_SIGNIFICANT:g}); "
            f"median value {np.median(vals):.3g} vs null {np.median(nulls) if nulls.size else float('nan'):.3g} "
            f"({p.null}, {rows[0].n} draws)")
    nums = {"median_z": med, "fraction_significant": frac, "matrices": int(zs.size)}
    ratio = float(np.median(vals) / np.median(nulls)) if nulls.size and np.median(nulls) > 0 else float("nan")
    if p.min_ratio is not None:
        text += f"; value/null = {ratio:.3g} (practical threshold ≥ {p.min_ratio:g})"
        nums["ratio"] = ratio
    if p.direction == 0:
        status = "supported" if abs(med) < Z_SIGNIFICANT else "contradicted"
    elif med * p.direction >= Z_SIGNIFICANT:
        practical = p.min_ratio is None or (math.isfinite(ratio) and ratio >= p.min_ratio)
        status = "supported" if practical else "not significant"
    elif med * p.direction <= -Z_SIGNIFICANT:
        status = "contradicted"
    else:
        status = "not significant"
    return GeometryVerdict(p, status, text, nums)


def _dim(row: Any) -> float | None:
    """The dimension a per-d threshold divides by: the compared side's d, else min(d_out, d_in)."""
    if row.detail.get("d"):
        return float(row.detail["d"])
    shape = row.detail.get("shape")
    return float(min(shape)) if shape else None


def geometry_modifier(verdicts: list[GeometryVerdict]) -> float:
    judged = [v for v in verdicts if v.status != "not measured"]
    if not judged:
        return 0.0
    if any(v.status == "contradicted" for v in judged):
        return -GEOMETRY_BONUS
    if all(v.status == "supported" for v in judged):
        return GEOMETRY_BONUS
    return 0.0


# --- grades ---------------------------------------------------------------------------------------------
def _disagreements(entry: Entry, verdicts: dict[str, Verdict]) -> list[str]:
    out = []
    for dim, v in verdicts.items():
        lit = entry.literature[dim]
        if v.status == "pass" and not lit.earned:
            out.append(f"{dim}: measured PASS, literature did not award it ({lit.why})")
        elif v.status == "fail" and lit.earned:
            out.append(f"{dim}: literature awards it ({lit.why}); measured FAIL — {v.derivation}")
        elif v.status == "inconclusive" and lit.earned:
            out.append(f"{dim}: literature awards it ({lit.why}); not confirmed here — {v.derivation}")
    return out


def grade_method(ev: Evidence, entry: Entry, method: str | None, setting: tuple[str, str] | None) -> Grade:
    lit = entry.literature_points
    verdicts: dict[str, Verdict] = {}
    arm = ev.primary_arm(setting, method) if (setting and method) else None
    derivation: list[str] = []
    if arm is None:
        for dim in SCALE:
            verdicts[dim] = Verdict(dim, "not measured", 0.0, "no finished runs of this method in the store")
        verdicts["WA"] = Verdict("WA", "literature", SCALE["WA"] if entry.literature["WA"].earned else 0.0,
                                 entry.literature["WA"].why)
        geo = [judge_prediction(ev, setting, p) for p in entry.predictions] if setting else []
        return Grade(entry, method, setting, None, verdicts, geo, geometry_modifier(geo), None, lit,
                     ["not measured yet: no finished runs"], [])
    full, head = ev.reference(setting, "full"), ev.reference(setting, "head_only")
    lora = ev.matched_lora(setting, arm)
    if not entry.graded:
        for dim in SCALE:
            verdicts[dim] = Verdict(dim, "reference", 0.0, "reference method: measured numbers shown, not graded")
        geo = [judge_prediction(ev, setting, p) for p in entry.predictions]
        return Grade(entry, method, setting, arm.budget, verdicts, geo, 0.0, None, lit,
                     ["reference method (ungraded)"], [])
    verdicts["PE"] = decide_pe(arm, full, head)
    verdicts["BL"] = decide_bl(arm, lora)
    verdicts["BF"] = decide_bf(arm, full)
    verdicts["DE"] = decide_de(ev, setting, arm.method)
    verdicts["OOD"] = decide_ood(arm, lora, full)
    wa = entry.literature["WA"]
    verdicts["WA"] = Verdict("WA", "literature", SCALE["WA"] if wa.earned else 0.0, wa.why)
    geo = [judge_prediction(ev, setting, p) for p in entry.predictions]
    mod = geometry_modifier(geo)
    base = sum(v.points for v in verdicts.values())
    total = min(max(base + mod, 0.0), MAX_POINTS)
    derivation = [f"{d} {v.points:g}/{SCALE[d]:g} ({v.status})" for d, v in verdicts.items()]
    derivation.append(f"geometry {mod:+g}")
    cap_note = ""
    if entry.override and entry.override.kind == "analytic" and total > entry.override.cap:
        cap_note = (f"{total:g}, capped at {entry.override.cap:g} by the analytic override "
                    f"({entry.override.finding}) → ")
        total = entry.override.cap
    grade = Grade(entry, arm.method, setting, arm.budget, verdicts, geo, mod, total, lit, derivation,
                  _disagreements(entry, verdicts))
    derivation.append(f"= {cap_note}{total:g} / {MAX_POINTS:g} ({grade.measured_dims} of 5 measurable dimensions "
                      "measured)")
    return grade


def grade_all(ev: Evidence) -> list[Grade]:
    """One grade per (entry, registered method with runs); entries without runs get one 'not measured' row."""
    setting = ev.primary_setting()
    with_runs = {r.method for r in ev.done()} if setting else set()
    grades: list[Grade] = []
    for entry in ENTRIES:
        names = registered_names(entry)
        measured = [m for m in names if m in with_runs]
        if measured:
            grades += [grade_method(ev, entry, m, setting) for m in measured]
        else:
            grades.append(grade_method(ev, entry, names[0] if names else None, setting))
    return sort_grades(grades)


def sort_grades(grades: list[Grade]) -> list[Grade]:
    """Measured grade first (descending), then references, then unmeasured by literature grade."""
    def key(g: Grade) -> tuple:
        if g.measured_points is not None:
            return (0, -g.measured_points, -g.measured_dims, -g.literature_points, g.entry.id, g.method or "")
        if not g.entry.graded:
            return (1, 0, 0, 0, g.entry.id, g.method or "")
        return (2, 0, 0, -g.literature_points, g.entry.id, g.method or "")
    return sorted(grades, key=key)


def grade_store(path: str) -> list[Grade]:
    return grade_all(Evidence.from_store(path))
