"""The rubric in code: every dimension of the seed catalog's point scale decided by a stated test.

Every dimension is a one-sided test of a linear contrast of arm accuracies in the crossed seeds ×
items model of :mod:`peftatlas.grading.stats` (uncertainty over seeds and test items, paired by item
when the arms share a test set), at level α = 0.025 each, then Holm's correction over the measured
dimensions of one grade (family-wise error ≤ 0.025 per grade). Every arm in a test needs ≥ 5 finished
seeds; fewer → "not measured" with the reason. The calibration test (``tests/test_calibration.py``)
simulates arms with no true difference through these functions and checks the false-pass rates::

    PE  (1)    R = (s − s_head)/(s_FT − s_head) > 0.95: the contrast s − 0.95 s_FT − 0.05 s_head > 0
               (Fieller interval for R shown); adapter < 1% of full fine-tuning's parameters.
               fail: R's upper bound < 0.95, or ≥ 1% parameters
    BL  (1)    acc − acc(LoRA) > 0, LoRA with the same target modules and ±10% parameters; no such arm →
               not measured (never fail).  fail: upper bound < 0. Where no LoRA rank lands within ±10 %
               (GOFT: 4,596 parameters, LoRA r = 1 on the same q, v: 9,216), the smallest larger LoRA on the
               same targets: beating it passes (a stricter comparator); anything else is inconclusive,
               never a fail (a loss to more parameters says nothing at equal budget)
    BF  (1.5)  non-inferiority to full fine-tuning: acc − acc(FT) > −1 point.  fail: upper bound < −1 pt
    DE  (1.5)  learning curves (mean accuracy over the training-set sizes below the full set) above full
               fine-tuning's AND the matched LoRA's (intersection–union test), or fewer steps to the
               validation target than both (exact permutation test on ranks; never-reached = +inf);
               Bonferroni over the two routes. Not measured without learning curves.
    OOD (2)    absolute accuracy on the shifted sets (all items pooled) − the matched LoRA's > 0, paired by
               item (LoRA itself: − full fine-tuning's). Effective robustness (residual from the ID→OOD
               line over all arms) is shown; the OOD/ID ratio is never used (it rewards under-fitting).
    WA  (1)    not measurable: the literature mark is shown beside the measured grade, never inside it

Geometry (the entry's :class:`~peftatlas.catalog.Prediction` s): judged on the graded method's own
update when the prediction is meaningful there (``on_own_update``: not fixed by the parametrization)
and its probe job carries the statistic, else on full fine-tuning's update (the hypothesis's
prevalence: shown, never counted). Null-model predictions need ≥ 100 draws and a median z ≥ 3 in the
predicted direction (plus any stated practical ratio); a "no structure" prediction is supported only by
an equivalence test (value within ±10% of the null mean over matrices, TOST); censored k* stays
censored (bounds on the median; no CV); per-d thresholds divide by each matrix's side width. All counted
predictions supported → +0.5; any contradicted → −0.5.

Measured grade = Σ passed dimensions + geometry modifier, clipped to [0, 7] (WA excluded); an analytic
override caps it, the uncapped sum is kept beside it. Every grade carries its setting (model, task,
budget, steps) and the number of dimensions measured (n of 5).
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
from .stats import (
    ALPHA,
    MIN_SEEDS,
    ContrastTest,
    Scores,
    difference_test,
    gain_recovered,
    holm,
    permutation_p_less,
)

PE_RECOVERY = 0.95
PE_MAX_FRACTION = 0.01
BF_MARGIN = 0.01  # non-inferiority margin: one accuracy point
Z_SIGNIFICANT = 3.0
GEOMETRY_BONUS = 0.5
MIN_NULL_DRAWS = 100  # a null-model prediction needs this many draws per matrix
EQUIVALENCE_MARGIN = 0.10  # "no structure": value within ±10% of the null mean (TOST over matrices)
MEASURED = ("PE", "BL", "BF", "DE", "OOD")
MEASURED_MAX = MAX_POINTS - SCALE["WA"]

RULES: dict[str, str] = {
    "PE": f"recovered share of full FT's gain over head-only R > {PE_RECOVERY} (one-sided, α = {ALPHA}, Holm), "
          f"adapter < {PE_MAX_FRACTION:.0%} of full FT's parameters",
    "BL": "accuracy − LoRA's (same targets, ±10% parameters) > 0, paired by item (α = 0.025, Holm)",
    "BF": f"non-inferior to full fine-tuning: accuracy − FT's > −{100 * BF_MARGIN:g} pt (α = 0.025, Holm)",
    "DE": "learning curve above full FT's and matched LoRA's, or fewer steps to target than both (α = 0.025, Holm)",
    "OOD": "absolute OOD accuracy − matched LoRA's (LoRA: full FT's) > 0, paired by item (α = 0.025, Holm)",
    "WA": "not measurable; the literature mark is shown beside the measured grade, never inside it",
}


@dataclasses.dataclass
class Verdict:
    dim: str
    status: str  # pass | fail | inconclusive | not measured | n/a | literature | reference
    points: float
    derivation: str
    numbers: dict[str, Any] = dataclasses.field(default_factory=dict)
    p: float | None = None  # one-sided p-value of the dimension's test (None: no test)
    p_holm: float | None = None

    @property
    def rule(self) -> str:
        return RULES[self.dim]

    @property
    def measured(self) -> bool:
        return self.status in ("pass", "fail", "inconclusive")


@dataclasses.dataclass
class GeometryVerdict:
    prediction: Prediction
    status: str  # supported | not significant | contradicted | not measured
    derivation: str
    numbers: dict[str, Any] = dataclasses.field(default_factory=dict)
    # the same prediction on the graded method's own update where its parametrization fixes the statistic
    # (a circulant method's update IS circulant): a positive control of the probe, shown and never counted
    control: GeometryVerdict | None = None


@dataclasses.dataclass(frozen=True)
class Setting:
    """Where a grade was measured: model, task, budget label and training steps."""

    model: str
    task: str
    budget: str | None
    steps: int | None

    @property
    def label(self) -> str:
        budget = "no budget" if self.budget is None else ("fixed size" if self.budget == "fixed" else
                                                          f"budget {self.budget}")
        steps = f"{self.steps:,} steps" if self.steps else "steps not recorded"
        return f"{self.model} · {self.task} · {budget} · {steps}"


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
    uncapped_points: float | None = None  # the sum before an analytic cap (None: no cap applied)
    steps: int | None = None
    not_applicable: str | None = None  # why the arena never runs this method (``MethodPlan.skip``); None: it does

    @property
    def measured_dims(self) -> int:
        return sum(self.verdicts[d].measured for d in MEASURED if d in self.verdicts)

    @property
    def failed_dims(self) -> int:
        return sum(self.verdicts[d].status == "fail" for d in MEASURED if d in self.verdicts)

    @property
    def wa_literature(self) -> bool:
        return self.entry.literature["WA"].earned

    @property
    def measured_in(self) -> Setting | None:
        return Setting(self.setting[0], self.setting[1], self.budget, self.steps) if self.setting else None

    @property
    def where(self) -> str:
        """Where the grade's runs were made (model · task · budget · steps), or "no runs"."""
        if self.measured_in is None or (self.budget is None and self.steps is None):
            return "no runs"
        return self.measured_in.label

    @property
    def outcome(self) -> str:
        """``graded`` (≥ 1 dimension measured), ``not measured`` or ``reference``: what the ranking groups by."""
        if not self.entry.graded:
            return "reference"
        return "graded" if self.measured_points is not None else "not measured"

    @property
    def label(self) -> str:
        """Entry name, plus the method name when the entry has several implementations."""
        if len(self.entry.methods) == 1 or not self.method:
            return self.entry.name
        return f"{self.entry.name} — {self.method}"

    def as_dict(self) -> dict[str, Any]:
        where = self.measured_in
        return {
            "entry": self.entry.id, "method": self.method, "setting": list(self.setting) if self.setting else None,
            "measured_in": dataclasses.asdict(where) | {"label": where.label} if where else None,
            "budget": self.budget, "measured_points": self.measured_points, "uncapped_points": self.uncapped_points,
            "measured_max": MEASURED_MAX, "literature_points": self.literature_points,
            "wa_literature": self.wa_literature, "outcome": self.outcome,
            "measured_dimensions": self.measured_dims, "failed_dimensions": self.failed_dims,
            "geometry_modifier": self.geometry_modifier,
            "verdicts": {d: {"status": v.status, "points": v.points, "rule": v.rule, "derivation": v.derivation,
                             "p": v.p, "p_holm": v.p_holm, "numbers": v.numbers} for d, v in self.verdicts.items()},
            "geometry": [{"meaning": g.prediction.meaning, "status": g.status, "derivation": g.derivation}
                         for g in self.geometry],
            "derivation": self.derivation, "disagreements": self.disagreements,
        }


# --- dimension tests ----------------------------------------------------------------------------------
def _too_few(dim: str, arms: dict[str, Scores | None]) -> Verdict | None:
    """"not measured" when an arm lacks data, has fewer than MIN_SEEDS seeds, or lacks per-item results."""
    missing = [k for k, v in arms.items() if v is None]
    if missing:
        return Verdict(dim, "not measured", 0.0, f"no scores for {', '.join(missing)}")
    few = {k: v.n_seeds for k, v in arms.items() if v is not None and v.n_seeds < MIN_SEEDS}
    if few:
        have = ", ".join(f"{k} {n}" for k, n in few.items())
        return Verdict(dim, "not measured", 0.0, f"needs ≥ {MIN_SEEDS} seeds per arm (have {have})",
                       {"seeds": few})
    no_items = [k for k, v in arms.items() if v is not None and v.items is None]
    if no_items or len({v.n_items for v in arms.values() if v is not None}) > 1:
        what = f"no per-item correctness for {', '.join(no_items)}" if no_items else "arms scored on different items"
        return Verdict(dim, "not measured", 0.0, f"{what}: the test needs item-level results to include test-item "
                       "uncertainty (a seeds-only test passed 4.9% of simulated null comparisons at nominal 2.5%)")
    return None


def _test_verdict(dim: str, t: ContrastTest, what: str, numbers: dict[str, Any]) -> Verdict:
    """pass: one-sided p ≤ α (before Holm); fail: the interval lies wholly below the threshold."""
    numbers = {**numbers, "estimate": t.estimate, "threshold": t.threshold, "ci_low": t.low, "ci_high": t.high,
               "se": t.se, "df": t.df, "n": list(t.n_seeds), "items": t.n_items, "paired": t.paired}
    text = f"{what}: {t.fmt()}"
    at = f"{100 * t.threshold + 0.0:+g} pt"
    if t.p <= ALPHA:
        return Verdict(dim, "pass", SCALE[dim], text + f" — CI above {at}", numbers, p=t.p)
    if t.high < t.threshold:
        return Verdict(dim, "fail", 0.0, text + f" — CI below {at}", numbers, p=t.p)
    return Verdict(dim, "inconclusive", 0.0, text + f" — CI contains {at}", numbers, p=t.p)


def decide_pe(s: Scores | None, full: Scores | None, head: Scores | None, fraction: float = 0.0) -> Verdict:
    """PE: R > 0.95 with the adapter under 1% of full fine-tuning's parameters."""
    missing = _too_few("PE", {"method": s, "full fine-tuning": full, "head-only": head})
    if missing:
        return missing
    assert s is not None and full is not None and head is not None
    nums: dict[str, Any] = {"fraction_params": fraction, "s": s.mean, "s_full": full.mean, "s_head": head.mean}
    if full.mean <= head.mean:
        return Verdict("PE", "inconclusive", 0.0, f"full fine-tuning ({full.mean:.3f}) does not beat head-only "
                       f"({head.mean:.3f}): there is no gain to recover", nums)
    r = gain_recovered(s, full, head, PE_RECOVERY)
    nums.update({"R": r.estimate, "R_low": r.low, "R_high": r.high})
    v = _test_verdict("PE", r.test, f"R = {r.estimate:.3f} [{100 * (1 - 2 * ALPHA):.0f}% Fieller CI {r.low:.3f}, "
                      f"{r.high:.3f}]; s − {PE_RECOVERY} s_FT − {1 - PE_RECOVERY:.2f} s_head", nums)
    if math.isfinite(fraction) and fraction >= PE_MAX_FRACTION:
        return Verdict("PE", "fail", 0.0, v.derivation + f"; but {fraction:.2%} ≥ {PE_MAX_FRACTION:.0%} of the "
                       "parameters", v.numbers, p=v.p)
    return v


def decide_bl(s: Scores | None, lora: Scores | None, lora_label: str = "LoRA", is_lora: bool = False,
              larger: Scores | None = None, larger_label: str = "") -> Verdict:
    """BL: beats the LoRA arm with the same targets and ±10% parameters (none → not measured); failing such an
    arm, beats the smallest larger LoRA on the same targets (a pass, or inconclusive: never a fail)."""
    if is_lora:
        return Verdict("BL", "n/a", 0.0, "LoRA is the comparator")
    if lora is None and larger is not None and s is not None:
        missing = _too_few("BL", {"method": s, larger_label: larger})
        if missing:
            return missing
        v = _test_verdict("BL", difference_test(s, larger), f"vs {larger_label} (no LoRA rank within ±10% "
                          "on these targets; a larger LoRA is the stricter comparator)", {"comparator": larger_label})
        if v.status != "pass":
            v.status, v.points = "inconclusive", 0.0
            v.derivation += " — not a fail: losing to a LoRA with more parameters says nothing at equal budget"
        return v
    if lora is None:
        return Verdict("BL", "not measured", 0.0, "no LoRA arm with the same target modules and ±10% parameters "
                       "in this setting")
    missing = _too_few("BL", {"method": s, lora_label: lora})
    if missing:
        return missing
    assert s is not None
    return _test_verdict("BL", difference_test(s, lora), f"vs {lora_label}", {"comparator": lora_label})


def decide_bf(s: Scores | None, full: Scores | None) -> Verdict:
    """BF: non-inferior to full fine-tuning within BF_MARGIN."""
    missing = _too_few("BF", {"method": s, "full fine-tuning": full})
    if missing:
        return missing
    assert s is not None and full is not None
    return _test_verdict("BF", difference_test(s, full, margin=BF_MARGIN),
                         f"vs full fine-tuning (non-inferiority margin {100 * BF_MARGIN:g} pt)", {"margin": BF_MARGIN})


def decide_de(curve: Scores | None, comparator_curves: dict[str, Scores | None],
              steps: list[float] | None = None, comparator_steps: dict[str, list[float] | None] | None = None,
              sizes: list[int] | None = None) -> Verdict:
    """DE: learning curve above every comparator's (IUT), or fewer steps to target than each (IUT);
    Bonferroni over the two routes when both are measured."""
    if curve is None or not comparator_curves:
        return Verdict("DE", "not measured", 0.0, "no learning curves shared with full fine-tuning "
                       f"(sizes: {sizes or 'none'})")
    missing = _too_few("DE", {"method": curve, **comparator_curves})
    if missing:
        return missing
    tests = {name: difference_test(curve, c) for name, c in comparator_curves.items()}  # type: ignore[arg-type]
    p_curve = max(t.p for t in tests.values())
    parts = [f"vs {name}: {t.fmt()}" for name, t in tests.items()]
    nums: dict[str, Any] = {"sizes": sizes, "curve": {k: {"estimate": t.estimate, "ci_low": t.low, "ci_high": t.high,
                                                          "p": t.p} for k, t in tests.items()}}
    p_steps = None
    cs = comparator_steps or {}
    usable = steps is not None and cs and set(cs) == set(comparator_curves) and all(
        v is not None and len(v) >= MIN_SEEDS for v in cs.values()) and len(steps) >= MIN_SEEDS
    if usable:
        p_steps = max(permutation_p_less(steps, v) for v in cs.values())  # type: ignore[arg-type]
        med = {k: float(np.median(v)) for k, v in cs.items()}  # type: ignore[arg-type]
        parts.append(f"steps to target: median {np.median(steps):g} vs " +  # type: ignore[arg-type]
                     ", ".join(f"{k} {m:g}" for k, m in med.items()) + f" (permutation p = {p_steps:.3g})")
        nums["steps_p"] = p_steps
    p = p_curve if p_steps is None else min(1.0, 2 * min(p_curve, p_steps))
    text = f"mean accuracy over sizes {sizes}: " + "; ".join(parts)
    if p <= ALPHA:
        return Verdict("DE", "pass", SCALE["DE"], text + " — beats every comparator", nums, p=p)
    if any(t.high < 0 for t in tests.values()) and (p_steps is None or p_steps > 0.5):
        return Verdict("DE", "fail", 0.0, text + " — below a comparator", nums, p=p)
    return Verdict("DE", "inconclusive", 0.0, text + " — not shown", nums, p=p)


def decide_ood(ood: Scores | None, comparator: Scores | None, name: str = "LoRA",
               extra: dict[str, Any] | None = None) -> Verdict:
    """OOD: absolute accuracy on the shifted sets above the comparator's, paired by item."""
    if comparator is None:
        return Verdict("OOD", "not measured", 0.0, f"no {name} arm to compare with in this setting")
    missing = _too_few("OOD", {"method": ood, name: comparator})
    if missing:
        return missing
    assert ood is not None
    return _test_verdict("OOD", difference_test(ood, comparator), f"OOD accuracy {ood.mean:.3f} vs {name} "
                         f"{comparator.mean:.3f}", {"comparator": name, **(extra or {})})


def apply_holm(verdicts: dict[str, Verdict]) -> dict[str, Verdict]:
    """Holm over the measured dimensions' p-values: a pass survives only if its adjusted p ≤ α."""
    ps = {d: v.p for d, v in verdicts.items() if d in MEASURED and v.measured and v.p is not None}
    adjusted = holm(ps)  # type: ignore[arg-type]
    for d, p_adj in adjusted.items():
        v = verdicts[d]
        v.p_holm = p_adj
        if v.status == "pass" and p_adj > ALPHA:
            v.status, v.points = "inconclusive", 0.0
            v.derivation += f" — but not after Holm's correction over {len(ps)} tests (p_adj = {p_adj:.3g})"
        elif v.status == "pass":
            v.derivation += f" (Holm p_adj = {p_adj:.3g} over {len(ps)} tests)"
    return verdicts


def effective_robustness(arms: list[Arm], arm: Arm) -> float | None:
    """OOD accuracy minus the ID→OOD line fitted (least squares) over every arm's mean accuracies."""
    pts = [(float(np.mean(a.metric("test_acc"))), float(np.mean(a.ood_accuracy()))) for a in arms
           if a.metric("test_acc") and a.ood_accuracy()]
    if len(pts) < 3 or not arm.ood_accuracy() or not arm.metric("test_acc"):
        return None
    x, y = np.asarray(pts).T
    if np.ptp(x) == 0:
        return None
    slope, intercept = np.polyfit(x, y, 1)
    return float(np.mean(arm.ood_accuracy()) - (intercept + slope * np.mean(arm.metric("test_acc"))))


# --- geometry -------------------------------------------------------------------------------------------
def matching_rows(rows: list, p: Prediction) -> list:
    pat = re.compile(p.matrices) if p.matrices else None
    return [r for r in rows if r.probe == p.probe and r.stat == p.stat and (p.null is None or r.null == p.null)
            and (pat is None or pat.search(r.matrix))]


def _own_rows(ev: Evidence, setting: tuple[str, str], p: Prediction, method: str | None) -> list:
    """The prediction's rows on the graded method's own update (its ``method`` probe job)."""
    if not method or method in ("full", "head_only") or p.probe == "seed_rank":
        return []
    return matching_rows(ev.probe_rows(setting, "method", method), p)


def _subject_rows(ev: Evidence, setting: tuple[str, str], p: Prediction, method: str | None
                  ) -> tuple[list, str, bool]:
    """Rows a prediction is judged on: the graded method's own update when the prediction is meaningful
    there (``on_own_update``) and its probe job carries the statistic (``own=True``: it may move the
    grade), else full fine-tuning's (prevalence: shown only)."""
    if p.on_own_update:
        own = _own_rows(ev, setting, p, method)
        if own:
            return own, f"{method}'s own update", True
    kind = "pair" if p.probe == "seed_rank" else "single"
    return matching_rows(ev.probe_rows(setting, kind, "full"), p), "full fine-tuning's update", method == "full"


def _equivalent(rows: list) -> tuple[bool, str, dict[str, Any]]:
    """Equivalence (TOST, α = 0.025 each side) of value and null mean over matrices: the 95% t interval of
    mean log(value / null mean) lies within ±log(1 + EQUIVALENCE_MARGIN)."""
    ratios = [r.value / r.null_mean for r in rows if r.null_mean and r.null_mean > 0 and r.value > 0]
    if len(ratios) < 3:
        return False, f"equivalence needs ≥ 3 matrices with a positive null mean (have {len(ratios)})", {}
    lr = np.log(np.asarray(ratios))
    se = float(lr.std(ddof=1) / np.sqrt(lr.size))
    q = float(_t_quantile(1 - ALPHA, lr.size - 1))
    lo, hi = float(lr.mean() - q * se), float(lr.mean() + q * se)
    bound = math.log(1 + EQUIVALENCE_MARGIN)
    ok = -bound < lo and hi < bound
    text = (f"value/null over {lr.size} matrices: {math.exp(lr.mean()):.3f} [95% CI {math.exp(lo):.3f}, "
            f"{math.exp(hi):.3f}], equivalence margin ±{EQUIVALENCE_MARGIN:.0%}")
    return ok, text, {"ratio": math.exp(lr.mean()), "ratio_low": math.exp(lo), "ratio_high": math.exp(hi)}


def _t_quantile(q: float, df: int) -> float:
    from scipy import stats as st

    return float(st.t.ppf(q, df))


def _censored_threshold(p: Prediction, rows: list) -> GeometryVerdict | None:
    """Threshold predictions on k*: censored values (every tested direction passed: k* ≥ value) stay
    censored — bounds on the median, no CV."""
    cens = [bool(r.detail.get("censored")) for r in rows]
    if not any(cens):
        return None
    vals = np.asarray([r.value / (_dim(r) or 1.0) if p.per_d else r.value for r in rows], dtype=float)
    what = f"{sum(cens)} of {len(rows)} matrices censored (k* ≥ the tested depth)"
    if p.aggregate == "cv":
        return GeometryVerdict(p, "not measured", f"{what}: a coefficient of variation of censored values is "
                               "undefined", {"censored": sum(cens)})
    low = float(np.median(vals))  # censored values are lower bounds, so this bounds the median from below
    high = float(np.median(np.where(cens, np.inf, vals)))
    text = (f"median{' / d' if p.per_d else ''} of {p.stat} in [{low:.3g}, {high:.3g}] ({what}; predicted "
            f"{p.op} {p.value:g})")
    nums = {"median_low": low, "median_high": high, "censored": sum(cens), "n": len(rows)}
    if p.op == "<=":
        status = "supported" if high <= p.value else "contradicted" if low > p.value else "not significant"
    else:
        status = "supported" if low >= p.value else "contradicted" if high < p.value else "not significant"
    return GeometryVerdict(p, status, text, nums)


def judge_prediction(ev: Evidence, setting: tuple[str, str], p: Prediction,
                     method: str | None = None) -> GeometryVerdict:
    """Judge one prediction; ``numbers["counts"]`` says whether it may move ``method``'s grade (only a
    judgement on the method's own update does; full fine-tuning's update is shown as prevalence)."""
    if p.kind == "magdir":
        own = method is not None and p.job_method == method
        pts = ev.magdir_points(setting, p.job_method)
        if len(pts) < 3:
            return GeometryVerdict(p, "not measured",
                                   f"needs ≥ 3 matrices of {p.job_method}'s update, have {len(pts)}", {"counts": own})
        c = magnitude_direction_correlation(pts)
        text = (f"on {p.job_method}'s update: Pearson r(ΔM, ΔD) = {c['r']:+.2f} [95% CI {c['ci_low']:+.2f}, "
                f"{c['ci_high']:+.2f}] over {c['n']} matrices")
        nums = {**c, "counts": own}
        if c["ci_low"] > 0 or c["ci_high"] < 0:
            sign = 1 if c["ci_low"] > 0 else -1
            return GeometryVerdict(p, "supported" if sign == p.direction else "contradicted", text, nums)
        return GeometryVerdict(p, "not significant", text + " (CI contains 0)", nums)
    rows, subject, own = _subject_rows(ev, setting, p, method)
    verdict = judge_rows(p, rows, subject, own)
    if not p.on_own_update and (control := _own_rows(ev, setting, p, method)):
        verdict.control = judge_rows(p, control, f"{method}'s own update (fixed by its parametrization: a "
                                     "positive control of the probe, not counted)", False)
    return verdict


def judge_rows(p: Prediction, rows: list, subject: str, own: bool) -> GeometryVerdict:
    """Judge a null or threshold prediction on the probe rows of one update (``subject`` names it; ``own``:
    the judgement may move the grade)."""
    if not rows:
        return GeometryVerdict(p, "not measured", f"no {p.probe}/{p.stat} probe results on {subject}",
                               {"counts": own})
    if p.kind == "null" and p.probe == "spectral" and p.null == "gauss":
        return GeometryVerdict(p, "not measured", "a spectral statistic against the iid Gaussian null is passed by "
                               "any decaying spectrum: low-rank claims are stated as thresholds", {"counts": own})
    if p.kind == "threshold":
        censored = _censored_threshold(p, rows)
        if censored is not None:
            censored.derivation = f"on {subject}: {censored.derivation}"
            censored.numbers["counts"] = own
            return censored
        vals = []
        for r in rows:
            d = _dim(r)
            vals.append(r.value / d if p.per_d and d else r.value)
        arr = np.asarray(vals, dtype=float)
        if p.aggregate == "cv":
            stat = float(arr.std() / arr.mean()) if arr.mean() > 0 else float("nan")
            what = "coefficient of variation" + (" of k*/d (each matrix's side width)" if p.per_d else "")
        else:
            stat, what = float(np.median(arr)), "median" + (" / d" if p.per_d else "")
        ok = stat <= p.value if p.op == "<=" else stat >= p.value
        text = f"on {subject}: {what} of {p.stat} over {len(rows)} matrices = {stat:.3g} (predicted {p.op} {p.value:g})"
        if not math.isfinite(stat):
            return GeometryVerdict(p, "not significant", text + ": undefined", {"value": stat, "counts": own})
        return GeometryVerdict(p, "supported" if ok else "contradicted", text,
                               {"value": stat, "n": len(rows), "counts": own})
    draws = min(r.n for r in rows)
    if draws < MIN_NULL_DRAWS:
        return GeometryVerdict(p, "not measured", f"on {subject}: {draws} null draws per matrix; a null test needs "
                               f"≥ {MIN_NULL_DRAWS}", {"draws": draws, "counts": own})
    zs = np.asarray([r.z for r in rows if r.z is not None], dtype=float)
    if zs.size == 0:
        inv = any(r.invariant for r in rows)
        return GeometryVerdict(p, "not measured", "the null cannot move this statistic (invariant)" if inv else
                               "no z-scores stored", {"counts": own})
    med = float(np.median(zs))
    frac = float(np.mean(np.abs(zs) >= Z_SIGNIFICANT))
    vals = np.asarray([r.value for r in rows], dtype=float)
    nulls = np.asarray([r.null_mean for r in rows if r.null_mean is not None], dtype=float)
    text = (f"on {subject}: median z = {med:+.1f} over {zs.size} matrices ({100 * frac:.0f}% with |z| ≥ "
            f"{Z_SIGNIFICANT:g}); median value {np.median(vals):.3g} vs null "
            f"{np.median(nulls) if nulls.size else float('nan'):.3g} ({p.null}, {draws} draws)")
    nums: dict[str, Any] = {"median_z": med, "fraction_significant": frac, "matrices": int(zs.size), "counts": own}
    ratio = float(np.median(vals) / np.median(nulls)) if nulls.size and np.median(nulls) > 0 else float("nan")
    if p.min_ratio is not None:
        text += f"; value/null = {ratio:.3g} (practical threshold ≥ {p.min_ratio:g})"
        nums["ratio"] = ratio
    if p.direction == 0:  # "no structure": only an equivalence test can support it
        if abs(med) >= Z_SIGNIFICANT:
            return GeometryVerdict(p, "contradicted", text, nums)
        ok, eq_text, eq = _equivalent(rows)
        nums.update(eq)
        return GeometryVerdict(p, "supported" if ok else "not significant", f"{text}; {eq_text}"
                               + ("" if ok else " — not shown equivalent"), nums)
    if med * p.direction >= Z_SIGNIFICANT:
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
    """+0.5 when every counted prediction is supported, −0.5 when one is contradicted; only judgements on
    the graded method's own update count (full fine-tuning's update is the hypothesis's prevalence: shown)."""
    judged = [v for v in verdicts if v.status != "not measured" and v.numbers.get("counts")]
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


def _wa(entry: Entry) -> Verdict:
    wa = entry.literature["WA"]
    return Verdict("WA", "literature", 0.0, f"literature mark {'earned' if wa.earned else 'not earned'} "
                   f"(shown beside the grade, not counted): {wa.why}", {"literature_mark": wa.earned})


def _curves(ev: Evidence, setting: tuple[str, str], arm: Arm, comparators: dict[str, Arm]
            ) -> tuple[Scores | None, dict[str, Scores | None], list[int]]:
    """The arm's and each comparator's learning-curve scores over the sizes all of them ran."""
    mine = ev.curve_seeds(setting, arm.method, arm.budget, arm.hp)
    theirs = {k: ev.curve_seeds(setting, a.method, a.budget, a.hp) for k, a in comparators.items()}
    sizes = sorted(set(mine).intersection(*[set(t) for t in theirs.values()])) if theirs else []
    if not sizes:
        return None, {}, []

    def scores(a: Arm, seeds_by_size: dict[int, set[int]]) -> Scores | None:
        seeds = sorted(set.intersection(*[seeds_by_size[n] for n in sizes]))
        return ev.curve_scores(setting, a.method, a.budget, sizes, seeds, a.hp) if len(seeds) >= 2 else None

    return scores(arm, mine), {k: scores(comparators[k], theirs[k]) for k in comparators}, sizes


def decide_all(ev: Evidence, setting: tuple[str, str], arm: Arm) -> dict[str, Verdict]:
    """Every measured dimension of one arm, Holm-corrected together."""
    full, head = ev.reference(setting, "full"), ev.reference(setting, "head_only")
    is_lora = arm.method == "lora"
    lora = None if is_lora else ev.matched_lora(setting, arm)
    s = arm.scores("test")
    fraction = arm.adapter_params / full.adapter_params if full and full.adapter_params > 0 else float("nan")
    lora_label = (f"LoRA @{lora.budget} ({lora.adapter_params:,.0f} params, targets {lora.targets_label})"
                  if lora else "")
    larger = None if (is_lora or lora is not None) else ev.larger_lora(setting, arm)
    larger_label = (f"LoRA @{larger.budget} ({larger.adapter_params:,.0f} params = "
                    f"{larger.adapter_params / max(arm.adapter_params, 1):.1f}×, targets {larger.targets_label})"
                    if larger else "")
    verdicts = {
        "PE": decide_pe(s, full.scores("test") if full else None, head.scores("test") if head else None, fraction),
        "BL": decide_bl(s, lora.scores("test") if lora else None, lora_label, is_lora,
                        larger.scores("test") if larger else None, larger_label),
        "BF": decide_bf(s, full.scores("test") if full else None),
    }
    comps: dict[str, Arm] = {"full fine-tuning": full} if full else {}
    if lora is not None:
        comps["matched LoRA"] = lora
    curve, comp_curves, sizes = _curves(ev, setting, arm, comps) if comps else (None, {}, [])
    verdicts["DE"] = decide_de(curve, comp_curves, arm.steps_to_target(),
                               {k: a.steps_to_target() for k, a in comps.items()}, sizes)
    comparator, name = (full, "full fine-tuning") if is_lora else (lora, "matched LoRA")
    er = effective_robustness(ev.arms(setting), arm)
    verdicts["OOD"] = decide_ood(arm.scores("ood"), comparator.scores("ood") if comparator else None, name,
                                 {"effective_robustness": er})
    return apply_holm(verdicts)


def _arena_skip(method: str | None) -> str | None:
    """Why the arena never runs ``method`` (its ``MethodPlan.skip``), or None when it does or is unregistered."""
    if not method:
        return None
    from ..core.method import registered_methods
    from ..evidence.profiles import method_plan

    return (method_plan(method).skip or None) if method in registered_methods() else None


def grade_method(ev: Evidence, entry: Entry, method: str | None, setting: tuple[str, str] | None) -> Grade:
    lit = entry.literature_points
    arm = ev.primary_arm(setting, method) if (setting and method) else None
    if arm is None:
        skip = _arena_skip(method)
        why = (f"does not apply: the arena does not run it ({skip})" if skip
               else "no finished runs of this method in the store")
        verdicts = {d: Verdict(d, "not measured", 0.0, why) for d in MEASURED}
        verdicts["WA"] = _wa(entry)
        geo = [judge_prediction(ev, setting, p, method) for p in entry.predictions] if setting else []
        return Grade(entry, method, setting, None, verdicts, geo, geometry_modifier(geo), None, lit,
                     [why if skip else "not measured yet: no finished runs"], [], not_applicable=skip)
    if not entry.graded:
        verdicts = {d: Verdict(d, "reference", 0.0, "reference method: measured numbers shown, not graded")
                    for d in SCALE}
        geo = [judge_prediction(ev, setting, p, method) for p in entry.predictions]
        return Grade(entry, method, setting, arm.budget, verdicts, geo, 0.0, None, lit,
                     ["reference method (ungraded)"], [], steps=arm.steps)
    verdicts = decide_all(ev, setting, arm)
    verdicts["WA"] = _wa(entry)
    geo = [judge_prediction(ev, setting, p, method) for p in entry.predictions]
    mod = geometry_modifier(geo)
    n_measured = sum(verdicts[d].measured for d in MEASURED)
    derivation = [f"{d} {verdicts[d].points:g}/{SCALE[d]:g} ({verdicts[d].status})" for d in MEASURED]
    derivation.append(f"geometry {mod:+g}")
    if n_measured == 0:
        derivation.append(f"= not measured (0 of 5 dimensions measurable; {arm.method} has {len(arm.records)} "
                          f"seed(s)); WA literature mark {'earned' if entry.literature['WA'].earned else 'not earned'}")
        return Grade(entry, arm.method, setting, arm.budget, verdicts, geo, mod, None, lit, derivation,
                     _disagreements(entry, verdicts), steps=arm.steps)
    total = min(max(sum(verdicts[d].points for d in MEASURED) + mod, 0.0), MEASURED_MAX)
    uncapped = None
    cap_note = ""
    if entry.override and entry.override.kind == "analytic" and total > entry.override.cap:
        uncapped = total
        cap_note = (f"{total:g}, capped at {entry.override.cap:g} by the analytic override "
                    f"({entry.override.finding}) → ")
        total = entry.override.cap
    grade = Grade(entry, arm.method, setting, arm.budget, verdicts, geo, mod, total, lit, derivation,
                  _disagreements(entry, verdicts), uncapped, arm.steps)
    derivation.append(f"= {cap_note}{total:g} / {MEASURED_MAX:g} ({n_measured} of 5 dimensions measured; "
                      f"WA literature mark {'earned' if grade.wa_literature else 'not earned'}, shown beside)")
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
    """Graded first (descending points, then more dimensions measured, then fewer failures), then the
    references, then the not-measured rows by literature grade: a 0 from failed tests ranks above, and
    apart from, a row nothing was measured for."""
    def key(g: Grade) -> tuple:
        if g.outcome == "graded":
            return (0, -(g.measured_points or 0.0), -g.measured_dims, g.failed_dims, -g.literature_points,
                    g.entry.id, g.method or "")
        if g.outcome == "reference":
            return (1, 0, 0, 0, 0, g.entry.id, g.method or "")
        return (2, 0, 0, 0, -g.literature_points, g.entry.id, g.method or "")
    return sorted(grades, key=key)


def grade_store(path: str) -> list[Grade]:
    """Grades of a results database's primary setting (model, task and profile: seeds of two profiles are
    never pooled; :func:`peftatlas.grading.settings.grades_by_setting` grades every setting)."""
    from .settings import primary_key, restrict

    ev = Evidence.from_store(path)
    key = primary_key(ev)
    return grade_all(restrict(ev, key) if key else ev)
