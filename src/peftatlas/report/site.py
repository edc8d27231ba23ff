"""``peftatlas report``: the atlas as a static HTML site plus the same pages in Markdown.

Everything comes from the results database (runs and probe tables) and the packaged catalog::

    index.html / index.md      scorecard sorted by measured grade, plots, theme synthesis,
                               literature-vs-measurement disagreements, the rubric, the run table
    methods/<id>.html / .md    per entry: hypothesis, pseudocode, grade with derivation, geometry
                               predictions vs nulls, evidence tables and plots, literature claims
    plots/*.png                matplotlib (Agg)
    grades.json                every grade with its derivation
    style.css

Missing data is said as such ("not measured yet"), never filled in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .. import __version__
from ..catalog import DIMENSION_NAMES, ENTRIES, FAMILIES, MAX_POINTS, SCALE, Entry, registration
from ..grading import RULES, Evidence, GeometryVerdict, Grade, grade_all
from ..grading.evidence import Arm, hp_key
from ..grading.rubric import MEASURED_MAX, Z_SIGNIFICANT, effective_robustness, matching_rows, sort_grades
from ..grading.settings import SettingKey, claim_rows, entry_grades, grades_by_setting, overview, primary_key, restrict
from . import plots
from .doc import UL, Badge, Block, Code, H, Img, Inline, Link, Mono, Note, P, Strong, Table, page_html, page_md

DIMS = ("PE", "BL", "BF", "DE", "OOD")
STATUS_BADGE = {"pass": ("✓ pass", "pass"), "fail": ("✗ fail", "fail"),
                "inconclusive": ("? inconclusive", "inconclusive"), "not measured": ("· not measured", "missing"),
                "n/a": ("n/a", "info"), "reference": ("reference", "info"),
                "literature": ("literature", "info"), "supported": ("supported", "pass"),
                "contradicted": ("contradicted", "fail"), "not significant": ("not significant", "inconclusive")}
AGREEMENT_BADGE = {"agree: holds": "pass", "agree: fails": "fail", "disagree": "warn", "undecided": "inconclusive",
                   "not measured": "missing"}
GEO_SYMBOL = {"supported": "+", "contradicted": "−", "not significant": "0", "not measured": "·"}
SHORT_BADGE = {"pass": ("✓", "pass"), "fail": ("✗", "fail"), "inconclusive": ("?", "inconclusive"),
               "not measured": ("·", "missing"), "n/a": ("n/a", "info"), "reference": ("ref", "info"),
               "literature": ("lit", "info")}

CSS = """
body { font-family: -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif; margin: 0; color: #1d2329;
       background: #fafbfc; line-height: 1.45; }
nav { background: #24292f; padding: 0.6em 1.2em; } nav a { color: #f0f3f6; margin-right: 0.6em; }
main { max-width: 1180px; margin: 0 auto; padding: 0.5em 1.5em 3em; }
h1 { font-size: 1.7em; margin-top: 0.6em; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: 0.2em; margin-top: 1.6em; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; background: #fff; }
th, td { border: 1px solid #d0d7de; padding: 0.3em 0.55em; text-align: left; vertical-align: top; }
th { background: #f0f3f6; } tbody tr:nth-child(even) { background: #f8f9fa; }
pre { background: #f0f3f6; padding: 0.8em; overflow-x: auto; border-radius: 4px; }
code { font-family: 'SFMono-Regular', Consolas, monospace; font-size: 0.92em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #d0d7de; background: #fff; }
figcaption { font-size: 0.85em; color: #57606a; }
.badge { display: inline-block; padding: 0 0.45em; border-radius: 0.8em; font-size: 0.85em; white-space: nowrap; }
.badge.pass { background: #dafbe1; color: #116329; } .badge.fail { background: #ffebe9; color: #a40e26; }
.badge.inconclusive { background: #fff8c5; color: #7d4e00; } .badge.missing { background: #eaeef2; color: #57606a; }
.badge.info { background: #ddf4ff; color: #0a3069; } .badge.warn { background: #ffebe9; color: #a40e26; }
.note { border-left: 4px solid #8c959f; background: #f6f8fa; padding: 0.5em 0.9em; margin: 0.8em 0; }
.note.missing { border-color: #8c959f; } .note.warn { border-color: #cf222e; background: #fff5f5; }
.note.info { border-color: #0969da; }
"""


def sweep_rows(sweep: Sequence, arms: Sequence[Arm]) -> list[list[str]]:
    """One row per (method, budget, hyperparameters, lr) of the LR sweep: validation accuracy per seed (seed
    order), their mean, and ✓ where the arm's main runs use that rate."""
    chosen = {(a.method, a.budget, a.hp, r.lr) for a in arms for r in a.records}
    groups: dict[tuple, list] = {}
    for r in sweep:
        groups.setdefault((r.method, r.budget, hp_key(r), r.lr), []).append(r)
    rows = []
    for (method, budget, hp, lr), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], str(kv[0][1]),
                                                                                   kv[0][2], kv[0][3])):
        runs = sorted(runs, key=lambda r: r.seed)
        vals = [float(r.metrics.get("val_acc", float("nan"))) for r in runs]
        size = ", ".join(f"{k}={v}" for k, v in sorted(json.loads(hp).items()) if k != "targets") or "—"
        rows.append([method, budget or "—", size, f"{lr:.3g}",
                     " / ".join(f"{v:.3f}" for v in vals) + f" (seeds {', '.join(str(r.seed) for r in runs)})",
                     f"{float(np.mean(vals)):.3f}", "✓" if (method, budget, hp, lr) in chosen else ""])
    return rows


@dataclasses.dataclass
class ReportResult:
    out: Path
    index_html: Path
    index_md: Path
    pages: list[Path]
    plots: list[Path]


def _fmt(x: float | None, spec: str = "g") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _badge(status: str, short: bool = False) -> Badge:
    text, kind = (SHORT_BADGE if short else STATUS_BADGE).get(status, (status, "info"))
    return Badge(text, kind)


def _arm_label(a: Arm) -> str:
    """``lora @0.2%``; a matched-LoRA arm adds its size and targets, since several share the label
    (``lora @matched (r=1; query, value on 3 of 6 blocks)``)."""
    if a.budget == "matched":
        size = ", ".join(f"{k}={v}" for k, v in sorted(json.loads(a.hp or "{}").items()) if k != "targets")
        return f"{a.method} @matched ({size}; {a.targets_label})"
    return f"{a.method} @{a.budget}" if a.budget not in (None, "fixed") else a.method


OUTCOME_LABEL = {"graded": "graded", "not measured": "not measured", "reference": "reference"}


def grade_cell(g: Grade) -> Inline:
    """Measured points out of 7, with the uncapped sum beside an analytic cap."""
    if not g.entry.graded:
        return Badge("reference", "info")
    if g.not_applicable:
        return Badge("does not apply", "info")
    if g.measured_points is None:
        return Badge("not measured yet", "missing")
    cap = f" (uncapped {g.uncapped_points:g})" if g.uncapped_points is not None else ""
    return Strong(f"{_fmt(g.measured_points)} / {MEASURED_MAX:g}{cap}")


def wa_cell(g: Grade) -> Inline:
    return Badge("lit ✓", "pass") if g.wa_literature else Badge("lit —", "missing")


def geo_cell(g: Grade) -> str:
    return " ".join(GEO_SYMBOL[v.status] for v in g.geometry) or "·"


def own_update_cells(v: GeometryVerdict) -> list:
    """The prediction on the graded method's own update: judged there (counts), or a positive control
    (the statistic is fixed by the parametrization: shown, not counted), or no method probe job."""
    if v.numbers.get("counts"):
        return ["judged there (above)", Badge("counts", "info")]
    if v.control is not None:
        return [[_badge(v.control.status), " ", v.control.derivation], "no (positive control)"]
    return ["—", "no (prevalence on full fine-tuning's update)"]


def flags_cell(g: Grade) -> list[Inline] | str:
    flags: list[Inline] = []
    if g.entry.override:
        flags.append(Badge(g.entry.override.kind, "warn"))
    if g.disagreements:
        flags.append(Badge(f"{len(g.disagreements)} disagreement(s)", "inconclusive"))
    return flags or "—"


def _mean_sd(vals: list[float]) -> str:
    if not vals:
        return "—"
    return f"{np.mean(vals):.3f} ± {np.std(vals, ddof=1):.3f}" if len(vals) > 1 else f"{vals[0]:.3f}"


def _agreement_label(row) -> str:
    """A claim's cross-setting reading, with how many measuring settings decided it where it agrees."""
    decided, measured = row.decided
    if row.agreement.startswith("agree"):
        return f"{row.agreement} ({decided} of {measured} decided)"
    return row.agreement


class Site:
    def __init__(self, ev: Evidence, out: Path, source: str | None = None) -> None:
        self.all = ev
        self.source = source or (ev.path.name if ev.path else "memory")
        self.by_setting = grades_by_setting(ev)
        self.key = primary_key(ev, self.by_setting)
        self.ev = restrict(ev, self.key) if self.key else ev
        self.out = out
        self.setting = self.ev.primary_setting()
        self.home: dict[str, SettingKey] = {}  # entry id → the setting its headline grade comes from
        self.grades = self._headline_grades() if self.key else grade_all(ev)
        self.by_entry: dict[str, list[Grade]] = {}
        for g in self.grades:
            self.by_entry.setdefault(g.entry.id, []).append(g)
        self.arms = self.ev.arms(self.setting) if self.setting else []
        self.plots: list[Path] = []
        self.pages: list[Path] = []

    def _headline_grades(self) -> list[Grade]:
        """Each entry's grade in the primary setting; an entry with nothing measured there takes its grades
        from the setting that measures the most of its dimensions (then the first by name), and its page
        and scorecard row say which setting that is."""
        assert self.key is not None
        out: list[Grade] = []
        primary = self.by_setting[self.key]
        for entry_id in dict.fromkeys(g.entry.id for g in primary):
            mine = [g for g in primary if g.entry.id == entry_id]
            if any(g.outcome != "not measured" for g in mine):
                out += mine
                continue
            elsewhere = {k: [g for g in gs if g.entry.id == entry_id and g.outcome == "graded"]
                         for k, gs in self.by_setting.items() if k != self.key}
            best = min((k for k, gs in elsewhere.items() if gs), default=None,
                       key=lambda k: (-max(g.measured_dims for g in elsewhere[k]), k))
            if best is None:
                out += mine
            else:
                self.home[entry_id] = best
                out += elsewhere[best]
        return sort_grades(out)

    @contextlib.contextmanager
    def _in_setting(self, key: SettingKey | None) -> Iterator[None]:
        """Render with ``key``'s records, arms and probes in place of the primary setting's (an entry page
        whose headline grade comes from another setting shows that setting's evidence beside it)."""
        if key is None or key == self.key:
            yield
            return
        saved = self.ev, self.setting, self.arms
        self.ev = restrict(self.all, key)
        self.setting = self.ev.primary_setting()
        self.arms = self.ev.arms(self.setting) if self.setting else []
        try:
            yield
        finally:
            self.ev, self.setting, self.arms = saved

    # --- helpers --------------------------------------------------------------------------------------
    def _plot(self, path: Path | None, alt: str, caption: str, rel: str) -> Block:
        if path is None:
            return Note("missing", f"{alt}: not measured yet (no data in the store for this plot).")
        self.plots.append(path)
        return Img(f"{rel}plots/{path.name}", alt, caption)

    def _write(self, stem: str, title: str, blocks: list[Block], depth: int) -> Path:
        rel = "../" * depth
        nav = [Link("Atlas", f"{rel}index.html"), Link("Scorecard", f"{rel}index.html#scorecard"),
               Link("Themes", f"{rel}index.html#themes"), Link("Rubric", f"{rel}index.html#rubric")]
        html_path = self.out / f"{stem}.html"
        html_path.parent.mkdir(parents=True, exist_ok=True)
        html_path.write_text(page_html(title, blocks, f"{rel}style.css", nav), encoding="utf-8")
        (self.out / f"{stem}.md").write_text(page_md(title, blocks), encoding="utf-8")
        self.pages.append(html_path)
        return html_path

    # --- index ----------------------------------------------------------------------------------------
    def index(self) -> Path:
        ev = self.ev
        done = [r for r in self.all.records if r.status == "done"]
        failed = [r for r in self.all.records if r.status == "failed"]
        blocks: list[Block] = [H(1, "peftatlas — PEFT methods as measured hypotheses")]
        setting = ([Strong("Primary setting: "), "model ", Mono(self.setting[0]), ", task ", Mono(self.setting[1]),
                    ", profile ", Mono(self.key.profile or "—"), ". "] if self.setting and self.key
                   else ["No finished runs yet. "])
        blocks.append(P([f"Built from {self.source} ({_latest(self.all.records)}) by peftatlas {__version__}: "
                         f"{len(done)} finished runs, {len(failed)} failed, "
                         + (f"{self.all.superseded} older-code runs ignored (superseded), " if self.all.superseded
                            else "")
                         + f"{len(self.all.jobs)} probe jobs, "
                         f"{len(self.by_setting)} setting(s). ", *setting,
                         f"{len(ENTRIES)} catalog entries. Grades use the seed catalog's point scale (PE 1, BL 1, "
                         f"BF 1.5, DE 1.5, OOD 2, WA 1; max {MAX_POINTS:g}): the measured grade comes from the rubric "
                         f"on this store's runs and probes (at most {MEASURED_MAX:g}: WA is a literature mark shown "
                         "beside it, never inside), the literature grade from the papers alone (provisional)."]))
        if not done:
            blocks.append(Note("missing", "No finished runs in this store: every measured grade below is 'not "
                                          "measured yet'. Run `peftatlas run --profile quick` or `peftatlas atlas`."))
        blocks += [H(2, "Scorecard", "scorecard"), self._scorecard()]
        blocks.append(P("Columns PE…OOD: ✓ pass, ✗ fail, ? inconclusive (the interval contains the threshold, or a "
                        "pass did not survive Holm's correction), · not measured (no comparator, < 5 seeds, no "
                        "per-item results, no learning curves). Geometry: + supported, − contradicted, 0 not "
                        "significant, · no probe data. Rows: graded entries by measured grade (a 0 from failed tests "
                        "is graded), then references, then entries with nothing measured, by literature grade. "
                        "Under an analytic cap the uncapped sum is shown beside the grade."))
        blocks += [H(2, "Grades by setting", "settings"), *self._settings_overview()]
        blocks += [H(2, "Accuracy, parameters and shifted sets", "plots")]
        blocks.append(self._plot(plots.pareto(self.arms, self.out / "plots" / "pareto.png"),
                                 "Accuracy vs trainable parameters", "Test accuracy (mean ± sd over seeds) against "
                                 "adapter parameters; dashed: full fine-tuning and head-only.", ""))
        blocks.append(self._plot(plots.ood_bars(self._main_arms(), self.out / "plots" / "ood.png"),
                                 "OOD accuracy", "In-distribution test accuracy beside each shifted set.", ""))
        blocks.append(self._plot(plots.ood_vs_id(self._main_arms(), self.out / "plots" / "ood_vs_id.png"),
                                 "OOD vs ID accuracy", "Mean shifted-set accuracy against test accuracy per arm; "
                                 "dashed: the ID→OOD line over all arms (height above it = effective robustness). "
                                 "The OOD dimension compares absolute OOD accuracy with the matched LoRA, paired by "
                                 "item.", ""))
        blocks.append(self._plot(plots.learning_curves(ev, self.setting, sorted({r.method for r in ev.done(
            "learning_curve")}), self.out / "plots" / "learning_curves.png") if self.setting else None,
            "Learning curves", "Test accuracy against the number of training examples.", ""))
        blocks += [H(2, "Geometry of full fine-tuning's update", "geometry"), *self._geometry_by_setting()]
        blocks += [H(2, "Themes", "themes"), *self._themes()]
        blocks += [H(2, "Literature vs measurement", "disagreements"), *self._disagreements()]
        blocks += [H(2, "How grades are computed", "rubric"), *self._rubric()]
        blocks += [H(2, "Runs of the main comparison", "runs"), self._arms_table(self._main_arms())]
        return self._write("index", "peftatlas atlas", blocks, 0)

    def _main_arms(self) -> list[Arm]:
        return self.arms

    def _scorecard(self) -> Table:
        """One row per grade, grouped by outcome (graded, reference, not measured): a 0 earned by failed
        tests is ranked, and shown, apart from a row nothing could be measured for."""
        rows = []
        for i, g in enumerate(self.grades, 1):
            reg = g.method if g.method else "not registered yet"
            rows.append([str(i), [Link(g.label, f"methods/{g.entry.id}.html")], g.entry.family, reg,
                         grade_cell(g), OUTCOME_LABEL[g.outcome] if g.entry.graded else "reference",
                         f"{g.measured_dims} of 5" + (f" ({g.failed_dims} failed)" if g.failed_dims else ""),
                         g.where,
                         f"{g.literature_points:g}", wa_cell(g),
                         *[_badge(g.verdicts[d].status, short=True) for d in DIMS], geo_cell(g), flags_cell(g)])
        return Table(["#", "method", "family", "registered", "measured", "outcome", "dimensions measured",
                      "setting (model · task · budget · steps)", "literature", "WA (literature, beside)", *DIMS,
                      "geometry", "flags"], rows, "scorecard")

    def _geometry_by_setting(self) -> list[Block]:
        """The probes of full fine-tuning's update in every setting that has them (the primary one first, each
        under its own heading and with its own plots); one note when no setting has any."""
        keys = [self.key] if self.key else [None]
        keys += [k for k in self.by_setting if k != self.key]
        probed = {}  # key → (single rows, pair rows), read once per setting
        for key in keys:
            with self._in_setting(key):
                if self.setting:
                    rows = self.ev.probe_rows(self.setting, "single"), self.ev.probe_rows(self.setting, "pair")
                    if rows[0] or rows[1]:
                        probed[key] = rows
        if not probed:
            return self._probe_summary([], [])
        blocks: list[Block] = []
        for key, (single, pair) in probed.items():
            suffix = "" if key == self.key else f"_{key.model}_{key.task}_{key.profile}"
            with self._in_setting(key):
                if key is not None:
                    blocks.append(H(3, key.label, f"geometry-{key.model}"))
                blocks.append(self._plot(plots.z_overview(single, self.out / "plots" / f"probe_overview{suffix}.png"),
                                         "Probe z-scores", "Median z over matrices of each statistic against its "
                                         "null model; |z| < 3 (grey band) means the update shows no more of the "
                                         "structure than the null.", ""))
                blocks.append(self._plot(plots.seed_overlap(pair, self.out / "plots" / f"seed_overlap{suffix}.png"),
                                         "Seed overlap", "Overlap of the top-k update directions of two full "
                                         "fine-tuning seeds, against random subspaces (k/d).", ""))
                blocks += self._probe_summary(single, pair)
        missing = [k.label for k in keys if k is not None and k not in probed]
        if missing:
            blocks.append(Note("missing", "Probes not measured yet in: " + "; ".join(missing) + "."))
        return blocks

    def _probe_summary(self, single: list, pair: list) -> list[Block]:
        if not single and not pair:
            return [Note("missing", "No probe results: run `peftatlas probe --store PATH` after the full fine-tuning "
                                    "runs.")]
        job = self.ev.probe_job(self.setting, "single")
        blocks: list[Block] = []
        if job:
            budget = job.config.get("budget")
            blocks.append(P(f"Probed {job.n_matrices} matrices of full fine-tuning seed {job.config.get('seeds')} "
                            f"with {job.config.get('draws')} null draws per null model (equal-budget fits at "
                            f"{'d_out + d_in' if budget is None else budget} parameters)."))
        stats: dict[tuple[str, str, str], list] = {}
        for r in single:
            if r.null:
                stats.setdefault((r.probe, r.stat, r.null), []).append(r)
        rows = []
        for (probe, stat, null), rs in sorted(stats.items()):
            zs = [r.z for r in rs if r.z is not None]
            rows.append([f"{probe}/{stat}", null, f"{np.median([r.value for r in rs]):.4g}",
                         f"{np.median([r.null_mean for r in rs if r.null_mean is not None]):.4g}",
                         f"{np.median(zs):+.1f}" if zs else ("invariant" if any(r.invariant for r in rs) else "—"),
                         f"{sum(abs(z) >= Z_SIGNIFICANT for z in zs)}/{len(rs)}"])
        if rows:
            blocks.append(Table(["statistic", "null", "median value", "median null mean", "median z",
                                 "matrices |z| ≥ 3"], rows))
        ks = [r for r in pair if r.stat.startswith("k_star")]
        if ks:
            rows = [[r.matrix, r.stat.replace("k_star_", ""),
                     ("≥ " if r.detail.get("censored") else "") + f"{r.value:g}",
                     f"{r.detail.get('tested', '—')}", f"{r.detail.get('d', '—')}",
                     f"{r.null_mean:.2f}" if r.null_mean is not None else "—"] for r in ks]
            blocks += [P("Seed-consistent rank k* (directions shared by two full fine-tuning seeds beyond chance; "
                         "'≥' when every tested direction was shared):"),
                       Table(["matrix", "side", "k*", "directions tested", "d", "expected by chance"], rows)]
        return blocks

    def _themes(self) -> list[Block]:
        blocks: list[Block] = []
        for fam in FAMILIES:
            entries = [e for e in ENTRIES if e.family == fam.id]
            grades = [g for e in entries for g in self.by_entry.get(e.id, [])]
            measured = [g for g in grades if g.measured_points is not None]
            geo = [v for e in entries for v in (self.by_entry[e.id][0].geometry if self.by_entry.get(e.id) else [])]
            blocks.append(H(3, fam.title))
            parts: list = [Strong("Claim: "), fam.claim + " "]
            if measured:
                best = max(measured, key=lambda g: g.measured_points or 0)
                parts += [f"Measured: {len(measured)} of {len(entries)} entries graded from runs; best ",
                          Link(best.label, f"methods/{best.entry.id}.html"),
                          f" ({best.measured_points:g}/{MEASURED_MAX:g}). "]
                mean_lit = np.mean([g.literature_points for g in measured])
                mean_meas = np.mean([g.measured_points for g in measured])
                parts.append(f"Mean measured {mean_meas:.1f} vs literature {mean_lit:.1f} for the same entries. ")
            elif any(not e.graded for e in entries):
                parts.append("References: shown with their numbers, not graded. ")
            else:
                parts.append("Measured: not measured yet (no runs of this family in the store). ")
            judged = [v for v in geo if v.status != "not measured"]
            if judged:
                sup = sum(v.status == "supported" for v in judged)
                con = sum(v.status == "contradicted" for v in judged)
                parts.append(f"Geometry predictions: {sup} of {len(judged)} supported, "
                             f"{con} contradicted, {len(judged) - sup - con} not significant against their nulls.")
            else:
                parts.append("Geometry: no probe prediction measured for this family yet.")
            blocks.append(P(parts))
            blocks.append(UL([[Link(e.name, f"methods/{e.id}.html"), f" — literature {e.literature_points:g}",
                               *(f", measured {g.measured_points:g}" + (f" [{g.method}]" if len(e.methods) > 1 else "")
                                 for g in self.by_entry.get(e.id, []) if g.measured_points is not None)]
                              for e in entries]))
        return blocks

    def _disagreements(self) -> list[Block]:
        items = [[Link(g.label, f"methods/{g.entry.id}.html"), ": ", d] for g in self.grades for d in g.disagreements]
        if not items:
            return [Note("info", "No disagreement between a measured dimension and the literature mark yet "
                                 "(dimensions that are not measured cannot disagree).")]
        return [P(f"{len(items)} dimension(s) where the measurement and the papers disagree:"), UL(items)]

    def _rubric(self) -> list[Block]:
        rows = [[d, DIMENSION_NAMES[d], f"{SCALE[d]:g}", RULES[d]] for d in SCALE]
        return [Table(["dim", "meaning", "points", "test on stored results"], rows),
                UL(["Primary setting: the (model, task, profile) that grades the most entries (then the most full "
                    "fine-tuning seeds); every other setting's grades are under 'Grades by setting'; a method's "
                    "primary budget is its budget label with the most seeds (ties: the smallest).",
                    "Statistics: each dimension is a one-sided test (α = 0.025) of a contrast of accuracies in a "
                    "crossed seeds × test-items model (items shared by the arms are paired; Student t with "
                    "Satterthwaite df), then Holm's correction over a grade's measured dimensions. Every arm needs "
                    "≥ 5 seeds and per-item results, else the dimension is 'not measured'. The calibration test "
                    "checks the false-pass rates on simulated arms with no true difference.",
                    "Geometry: a prediction is judged on the graded method's own update when its statistic is not "
                    "fixed by the method's parametrization (only those count: all supported +0.5, any contradicted "
                    "−0.5), otherwise on full fine-tuning's update (the hypothesis's prevalence: shown, not counted) "
                    "with the method's own update beside it as a positive control of the probe. Supported when the "
                    f"median z over matrices is ≥ {Z_SIGNIFICANT:g} in the predicted direction with ≥ 100 null draws "
                    "(a 'no structure' prediction only by an equivalence test), when a threshold is met (censored "
                    "k* stays censored), or when a magnitude/direction correlation has the predicted sign with a CI "
                    "excluding 0.",
                    "Overrides: an analytic refutation of the stated claim caps both grades at 1; a failed independent "
                    "replication caps the literature grade at 4.",
                    "The literature grade awards a dimension when the paper (or an independent study) shows it and no "
                    "independent comparison we know of contradicts it; 'widely adopted' is our judgement."])]

    def _arms_table(self, arms: list[Arm]) -> Block:
        if not arms:
            return Note("missing", "No finished runs of the main comparison yet.")
        full = self.ev.reference(self.setting, "full") if self.setting else None
        head = self.ev.reference(self.setting, "head_only") if self.setting else None
        rows = []
        for a in arms:
            acc = a.metric("test_acc")
            r = "—"
            if full and head and acc and full.metric("test_acc") and head.metric("test_acc"):
                gap = np.mean(full.metric("test_acc")) - np.mean(head.metric("test_acc"))
                if gap > 0:
                    r = f"{(np.mean(acc) - np.mean(head.metric('test_acc'))) / gap:.2f}"
            ood, er = a.ood_accuracy(), effective_robustness(self.arms, a)
            rows.append([_arm_label(a), f"{a.adapter_params:,.0f}", ", ".join(map(str, a.seeds)),
                         f"{np.median([x.lr for x in a.records]):.3g}", _mean_sd(a.metric("val_acc")), _mean_sd(acc),
                         r, _mean_sd(ood) if ood else "—", f"{100 * er:+.1f} pt" if er is not None else "—"])
        return Table(["method @budget", "adapter params", "seeds", "lr", "val acc", "test acc (mean ± sd)",
                      "FT gain recovered", "OOD acc (mean ± sd)", "effective robustness"], rows)

    # --- method pages ---------------------------------------------------------------------------------
    def method_page(self, entry: Entry) -> Path:
        grades = self.by_entry.get(entry.id, [])
        reg = registration(entry)
        blocks: list[Block] = [H(1, entry.name)]
        regs = [f"{name} → registered" if r else f"{name} → not registered yet" for name, r in reg.items()]
        paper = entry.paper
        blocks.append(P([Strong("Family: "), f"{entry.family}. ", Strong("Paper: "),
                         Link(paper.cite(), paper.url) if paper.url else paper.cite(), " ",
                         Strong("Methods: "), "; ".join(regs) + "."]))
        blocks += [H(2, "Hypothesis"), P(entry.hypothesis), H(2, "Pseudocode"), Code(entry.pseudocode)]
        blocks += [H(2, "What tests it"), UL(list(entry.measurements))]
        blocks += [H(2, "Grade", "grade")]
        if entry.override:
            o = entry.override
            blocks.append(Note("warn", [Strong(f"{o.kind.capitalize()} override: "), f"claim “{o.claim}”: {o.finding}. "
                                        f"Check: {o.check}. Grade capped at {o.cap:g}."]))
        home = self.home.get(entry.id)
        if home is not None and self.key is not None:
            blocks.append(Note("info", f"Nothing of this entry is measured in the primary setting ({self.key.label}): "
                                       f"the grade, geometry and evidence below come from {home.label}."))
        with self._in_setting(home):
            for g in grades or []:
                blocks += self._grade_blocks(g)
            blocks += [H(2, "Grade by setting", "settings"), *self._entry_settings(entry)]
            blocks += [H(2, "Geometry: full fine-tuning's and the method's own update", "geometry"),
                       *self._geometry_blocks(entry, grades)]
            blocks += [H(2, "Evidence", "evidence"), *self._evidence_blocks(entry, grades)]
        blocks += [H(2, "Literature", "literature"), *self._literature_blocks(entry)]
        dis = [d for g in grades for d in g.disagreements]
        blocks += [H(2, "Literature vs measurement"),
                   UL(dis) if dis else Note("info", "No disagreement on the measured dimensions.")]
        if entry.notes:
            blocks += [H(2, "Notes"), P(entry.notes)]
        return self._write(f"methods/{entry.id}", entry.name, blocks, 1)

    def _grade_blocks(self, g: Grade) -> list[Block]:
        if g.measured_points is not None:
            cap = f" (uncapped sum {g.uncapped_points:g})" if g.uncapped_points is not None else ""
            title = (f"Measured grade: {_fmt(g.measured_points)} / {MEASURED_MAX:g}{cap}, "
                     f"{g.measured_dims} of 5 measured")
        elif not g.entry.graded:
            title = "Measured grade: reference (not graded)"
        elif g.not_applicable:
            title = "Measured grade: does not apply (the arena does not run this method)"
        else:
            title = "Measured grade: not measured yet"
        wa = "earned" if g.wa_literature else "not earned"
        blocks: list[Block] = [H(3, f"{title} · WA (literature, beside): {wa} · literature grade: "
                                 f"{g.literature_points:g} / {MAX_POINTS:g}"
                                 + (f" · method {g.method}" if g.method and len(g.entry.methods) > 1 else ""))]
        blocks.append(P([Strong("Measured in: "), g.where]))
        if g.not_applicable:
            blocks.append(Note("info", f"The arena does not run {g.method}: {g.not_applicable}. The literature grade "
                                       "stands alone."))
        elif g.measured_points is None and g.entry.graded:
            why = ("No finished runs of " + (g.method or "this entry") + " in the store"
                   if g.budget is None and not any(v.derivation.startswith("needs") for v in g.verdicts.values())
                   else "No dimension could be measured (see the derivations)")
            blocks.append(Note("missing", f"{why}: the literature grade stands alone."))
        rows = []
        for d in SCALE:
            v = g.verdicts[d]
            m = g.entry.literature[d]
            rows.append([d, _badge(v.status), f"{v.points:g}/{SCALE[d]:g}" if d != "WA" else "beside", v.derivation,
                         Badge("earned" if m.earned else "not earned", "pass" if m.earned else "missing"), m.why])
        blocks.append(Table(["dim", "measured", "points", "derivation (measured)", "literature", "why (literature)"],
                            rows))
        if g.measured_points is not None:
            blocks.append(P([Strong("Derivation: "), " + ".join(g.derivation[:-1]) + " " + g.derivation[-1]]))
        return blocks

    def _geometry_blocks(self, entry: Entry, grades: list[Grade]) -> list[Block]:
        if not entry.predictions:
            return [Note("info", "This hypothesis makes no prediction the weight probes can check "
                                 "(it acts on activations, inputs, training dynamics, or several tasks).")]
        geo = grades[0].geometry if grades else []
        rows = [[v.prediction.meaning, _badge(v.status), v.derivation, *own_update_cells(v)] for v in geo]
        blocks: list[Block] = [Table(["prediction", "verdict", "derivation", "on the method's own update",
                                      "counts in the grade"], rows)]
        single = self.ev.probe_rows(self.setting, "single") if self.setting else []
        for i, p in enumerate(entry.predictions):
            if p.kind == "null":
                rows_p = matching_rows(single, p)
                path = plots.probe_vs_null(rows_p, self.out / "plots" / f"probe_{entry.id}_{i}.png",
                                           f"{p.probe}/{p.stat} vs {p.null} null")
                blocks.append(self._plot(path, f"{p.stat} vs null", p.meaning, "../"))
            elif p.kind == "magdir":
                series = {m: pts for m in ("full", "lora", *entry.methods)
                          if self.setting and (pts := self.ev.magdir_points(self.setting, m))}
                if i == next(j for j, q in enumerate(entry.predictions) if q.kind == "magdir"):
                    path = plots.magdir_scatter(series, self.out / "plots" / f"magdir_{entry.id}.png")
                    blocks.append(self._plot(path, "Magnitude vs direction",
                                             "ΔM against ΔD per matrix (DoRA's analysis).", "../"))
            elif p.probe == "seed_rank" and i == next(j for j, q in enumerate(entry.predictions)
                                                      if q.probe == "seed_rank"):
                pair = self.ev.probe_rows(self.setting, "pair") if self.setting else []
                blocks.append(self._plot(plots.seed_overlap(pair, self.out / "plots" / f"seed_{entry.id}.png"),
                                         "Seed overlap", "Seed-to-seed overlap of the top-k directions vs chance.",
                                         "../"))
        return blocks

    def _evidence_blocks(self, entry: Entry, grades: list[Grade]) -> list[Block]:
        names = [n for n in registration(entry).values() if n]
        if not self.setting:
            return [Note("missing", "No finished runs in the store.")]
        mine = [a for a in self.arms if a.method in names]
        refs = [a for a in self.arms if a.method in ("full", "head_only", "lora") and a.method not in names]
        blocks: list[Block] = []
        if not mine:
            blocks.append(Note("missing", f"{', '.join(names) or entry.id} has no finished runs in the store."))
        blocks.append(self._arms_table(mine + refs))
        sweep = [r for r in self.ev.done("lr_sweep") if r.method in names and (r.model, r.task) == self.setting]
        if sweep:
            blocks += [P("Learning-rate sweep (every sweep seed; the rate is chosen on the mean validation "
                         "accuracy over these seeds, and test data is never evaluated for the rates not chosen):"),
                       Table(["method", "budget", "arm", "lr", "val acc by seed", "mean", "chosen"],
                             sweep_rows(sweep, self.arms))]
        hl = names[0] if names else None
        blocks.append(self._plot(plots.pareto(self.arms, self.out / "plots" / f"pareto_{entry.id}.png", hl,
                                              f"{entry.name} among all methods") if mine else None,
                                 "Accuracy vs parameters", "This method highlighted in red.", "../"))
        blocks.append(self._plot(plots.learning_curves(self.ev, self.setting, [*names, "lora", "full"],
                                                       self.out / "plots" / f"curve_{entry.id}.png", hl)
                                 if any(self.ev.curve_points(self.setting, n) for n in names) else None,
                                 "Learning curve", "Test accuracy vs training examples, beside LoRA and full FT.",
                                 "../"))
        blocks.append(self._plot(plots.ood_bars(mine + refs, self.out / "plots" / f"ood_{entry.id}.png", hl)
                                 if any(a.ood_sets() for a in mine) else None,
                                 "OOD accuracy", "In-distribution and shifted-set accuracy beside LoRA and full FT.",
                                 "../"))
        blocks.append(self._plot(plots.ood_vs_id(self.arms, self.out / "plots" / f"ood_vs_id_{entry.id}.png",
                                                 hl) if any(a.ood_accuracy() for a in mine) else None,
                                 "OOD vs ID accuracy", "Mean shifted-set accuracy against test accuracy (± sd over "
                                 "seeds); dashed: the ID→OOD line over all arms.", "../"))
        return blocks

    def _literature_blocks(self, entry: Entry) -> list[Block]:
        h = entry.headline
        blocks: list[Block] = [P([Strong("Headline claim: "), f"{h.text} ", f"({h.source}; verification: {h.tag})"])]
        if entry.counter:
            blocks += [P(Strong("Counter-evidence and caveats:")),
                       UL([f"{c.text} ({c.source}; {c.tag})" for c in entry.counter])]
        blocks.append(P("Verification tags: FT full text read, ABS abstract, CODE code, CALC checked numerically, "
                        "MEM from memory (provisional)."))
        return blocks

    # --- settings -------------------------------------------------------------------------------------
    def _setting_row(self, key: SettingKey, g: Grade) -> list:
        """One setting's grade of an entry: measured points, n of 5, the setting label, each dimension."""
        return [key.label, grade_cell(g), f"{g.measured_dims} of 5", g.where,
                *[_badge(g.verdicts[d].status, short=True) for d in DIMS], geo_cell(g)]

    def _entry_settings(self, entry: Entry) -> list[Block]:
        """Per method of the entry: its grade in every setting with records, then each claim across settings."""
        if not self.by_setting:
            return [Note("missing", "No finished runs in any setting: not measured yet.")]
        blocks: list[Block] = []
        methods = sorted({g.method for gs in self.by_setting.values() for g in gs
                          if g.entry.id == entry.id and g.method}) or [None]
        for method in methods:
            per = entry_grades(self.by_setting, entry.id, method)
            if len(methods) > 1:
                blocks.append(H(3, f"method {method}"))
            blocks.append(Table(["setting (model · task · profile)", "measured", "dimensions measured",
                                 "measured in (model · task · budget · steps)", *DIMS, "geometry"],
                                [self._setting_row(k, g) for k, g in per.items()]))
            if not entry.graded:
                continue
            keys = list(per)
            rows = [[c.claim, *[_badge(c.statuses.get(k, "not measured"), short=True) for k in keys],
                     Badge(_agreement_label(c), AGREEMENT_BADGE[c.agreement])] for c in claim_rows(per)]
            blocks.append(Table(["claim", *[k.label for k in keys], "across settings"], rows))
        blocks.append(P("Across settings: agree = every setting that decided the claim decided it the same way "
                        "(\"n of m decided\": how many of the settings that measured it decided it); disagree = it "
                        "passed in one setting and failed in another; undecided = measured but never decided; not "
                        "measured = measured nowhere."))
        return blocks

    def _settings_overview(self) -> list[Block]:
        """Entries × settings: each grade, and how the entry's claims read across settings."""
        if not self.by_setting:
            return [Note("missing", "No finished runs in any setting yet.")]
        keys = list(self.by_setting)
        rows = []
        for item in overview(self.by_setting):
            entry, per, counts = item["entry"], item["grades"], item["counts"]
            tallies = ([str(counts["agree: holds"]), str(counts["agree: fails"]),
                        Badge(str(counts["disagree"]), "fail" if counts["disagree"] else "missing"),
                        str(counts["undecided"]), str(counts["not measured"])] if entry.graded else ["—"] * 5)
            rows.append([[Link(entry.name, f"methods/{entry.id}.html")],
                         *[grade_cell(per[k]) if k in per else "—" for k in keys], *tallies])
        return [Table(["entry", *[k.label for k in keys], "claims agree: hold", "agree: fail", "disagree",
                       "undecided", "not measured"], rows, "settings-overview"),
                P("Claims are the five measured dimensions and the entry's geometry predictions; each entry's page "
                  "shows them setting by setting.")]

    # --- build ---------------------------------------------------------------------------------------
    def build(self) -> ReportResult:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "style.css").write_text(CSS, encoding="utf-8")
        for e in ENTRIES:
            self.method_page(e)
        index = self.index()
        (self.out / "grades.json").write_text(json.dumps([g.as_dict() for g in self.grades], indent=2, default=str),
                                              encoding="utf-8")
        return ReportResult(self.out, index, self.out / "index.md", self.pages, self.plots)


def _latest(records: list) -> str:
    """When the newest record was made (UTC): the report's date, so a rebuild from the same records is
    byte-identical."""
    if not records:
        return "no records"
    stamp = max(r.created for r in records)
    return "latest run " + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(stamp))


def build_report(store_path: str | Path | Sequence[str | Path], out_dir: str | Path,
                 source: str | None = None) -> ReportResult:
    """Render the atlas of a results database, or of shipped results folders (``records.jsonl``; several,
    e.g. one per profile, are loaded together into a temporary store), into ``out_dir`` (HTML + Markdown +
    PNG + grades.json). Deterministic: the same records give byte-identical files."""
    from ..evidence.shipped import ShippedError, as_store, is_shipped

    folders = [store_path] if isinstance(store_path, (str, Path)) else list(store_path)
    if len(folders) > 1 or is_shipped(folders[0]):
        not_shipped = [str(f) for f in folders if not is_shipped(f)]
        if not_shipped:
            raise ShippedError(f"not a shipped results folder (no records.jsonl): {', '.join(not_shipped)}")
        with as_store(*folders) as db:
            return build_report(db, out_dir, source or " + ".join(Path(f).name for f in folders))
    return Site(Evidence.from_store(folders[0]), Path(out_dir), source).build()
