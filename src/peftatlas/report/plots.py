"""The atlas plots (matplotlib, Agg backend, PNG). Each function returns the file it wrote, or None
when the store has no data for it (the page then says "not measured yet").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ..geometry.probe import ProbeRow
from ..grading.evidence import OOD_PREFIX, Arm, Evidence

COLORS = {"highlight": "#d62728", "full": "#1f77b4", "lora": "#2ca02c", "head_only": "#7f7f7f", "other": "#9aa5b1",
          "null": "#bbbbbb"}
DPI = 110


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def short_matrix(name: str) -> str:
    """``encoder.encoder.layer.3.attention.self.query`` → ``L3.query``."""
    m = re.search(r"\.(\d+)\.", name)
    tail = name.rsplit(".", 2)
    leaf = tail[-1] if tail[-1] != "dense" else ".".join(tail[-2:])
    return f"L{m.group(1)}.{leaf}" if m else leaf


def pareto(arms: Sequence[Arm], path: Path, highlight: str | None = None, title: str = "") -> Path | None:
    """Test accuracy (mean ± sd over seeds) vs adapter parameters, log x; full FT and head-only as lines."""
    pts = [a for a in arms if a.metric("test_acc") and a.method not in ("full", "head_only")]
    refs = {a.method: a for a in arms if a.method in ("full", "head_only") and a.metric("test_acc")}
    if not pts:  # nothing to place on the parameter axis (references alone are lines)
        return None
    fig, ax = plt.subplots(figsize=(7.2, 4.4))
    for name, arm in refs.items():
        acc = np.mean(arm.metric("test_acc"))
        ax.axhline(acc, color=COLORS[name], ls="--", lw=1)
        ax.text(0.01, acc, f" {name} {acc:.3f}", color=COLORS[name], va="bottom", fontsize=8,
                transform=ax.get_yaxis_transform())
    for a in pts:
        acc = a.metric("test_acc")
        x = max(a.adapter_params, 1.0)
        hl = highlight is not None and a.method == highlight
        color = COLORS["highlight"] if hl else COLORS["lora"] if a.method == "lora" else COLORS["other"]
        ax.errorbar(x, np.mean(acc), yerr=np.std(acc) if len(acc) > 1 else 0, fmt="o", color=color,
                    ms=7 if hl else 5, zorder=3 if hl else 2, capsize=2)
        ax.annotate(f"{a.method}@{a.budget}" if a.budget not in (None, "fixed") else a.method, (x, np.mean(acc)),
                    fontsize=7 if not hl else 8, color=color, xytext=(4, 3), textcoords="offset points")
    if pts:
        ax.set_xscale("log")
        xs = [max(a.adapter_params, 1.0) for a in pts]
        lo, hi = min(xs), max(xs)
        if hi / lo < 100:  # a narrow range: widen to whole decades so the log axis reads
            ax.set_xlim(10 ** np.floor(np.log10(lo) - 0.5), 10 ** np.ceil(np.log10(hi) + 0.5))
    ax.set_xlabel("trainable adapter parameters (log)")
    ax.set_ylabel("test accuracy (mean ± sd over seeds)")
    ax.set_title(title or "Accuracy vs trainable parameters")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def learning_curves(ev: Evidence, setting: tuple[str, str], methods: Sequence[str], path: Path,
                    highlight: str | None = None) -> Path | None:
    """Test accuracy vs training-set size (log x) for the given methods."""
    series = {m: ev.curve_points(setting, m) for m in methods}
    series = {m: s for m, s in series.items() if s}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for m, pts in series.items():
        sizes = sorted(pts)
        mean = [np.mean(pts[s]) for s in sizes]
        sd = [np.std(pts[s]) if len(pts[s]) > 1 else 0 for s in sizes]
        color = COLORS["highlight"] if m == highlight else COLORS.get(m, COLORS["other"])
        ax.errorbar(sizes, mean, yerr=sd, marker="o", label=m, color=color, capsize=2)
    ax.set_xscale("log")
    ax.set_xlabel("training examples (log)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Learning curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def ood_bars(arms: Sequence[Arm], path: Path, highlight: str | None = None) -> Path | None:
    """Per arm: in-distribution test accuracy and each shifted set's accuracy (grouped bars)."""
    arms = [a for a in arms if a.ood_sets() and a.metric("test_acc")]
    if not arms:
        return None
    sets = sorted({s for a in arms for s in a.ood_sets()})
    cols = ["test_acc", *(OOD_PREFIX + s for s in sets)]
    width = 0.8 / len(cols)
    fig, ax = plt.subplots(figsize=(max(6.4, 0.9 * len(arms) + 2), 4.0))
    x = np.arange(len(arms))
    cmap = plt.get_cmap("tab10")
    for j, c in enumerate(cols):
        vals = [np.mean(a.metric(c)) if a.metric(c) else np.nan for a in arms]
        ax.bar(x + (j - (len(cols) - 1) / 2) * width, vals, width, label=c.replace(OOD_PREFIX, "OOD: "),
               color=cmap(j))
    labels = [f"{a.method}@{a.budget}" if a.budget not in (None, "fixed") else a.method for a in arms]
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    for t, a in zip(ax.get_xticklabels(), arms):
        if a.method == highlight:
            t.set_color(COLORS["highlight"])
            t.set_fontweight("bold")
    ax.set_ylabel("accuracy (mean over seeds)")
    ax.set_title("In-distribution vs shifted sets")
    ax.legend(fontsize=7, ncol=len(cols))
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def probe_vs_null(rows: Sequence[ProbeRow], path: Path, title: str) -> Path | None:
    """One statistic per matrix (dots) beside its null mean ± 2 sd (grey bars)."""
    rows = [r for r in rows if r.null_mean is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(max(6.4, 0.35 * len(rows) + 2), 3.8))
    x = np.arange(len(rows))
    nm = np.array([r.null_mean for r in rows], dtype=float)
    sd = np.array([r.null_sd or 0.0 for r in rows], dtype=float)
    ax.errorbar(x, nm, yerr=2 * sd, fmt="s", color=COLORS["null"], label=f"null ({rows[0].null}) mean ± 2 sd",
                capsize=2, ms=4)
    ax.plot(x, [r.value for r in rows], "o", color=COLORS["highlight"], label="full fine-tuning ΔW", ms=5)
    ax.set_xticks(x, [short_matrix(r.matrix) for r in rows], rotation=60, ha="right", fontsize=7)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def z_overview(rows: Sequence[ProbeRow], path: Path) -> Path | None:
    """Median z-score (and inter-quartile range) over matrices of every probe statistic vs its null."""
    groups: dict[str, list[float]] = {}
    for r in rows:
        if r.z is not None and r.null:
            groups.setdefault(f"{r.probe}/{r.stat} vs {r.null}", []).append(float(np.clip(r.z, -50, 50)))
    if not groups:
        return None
    names = sorted(groups, key=lambda k: np.median(groups[k]))
    med = [np.median(groups[k]) for k in names]
    lo = [med[i] - np.percentile(groups[k], 25) for i, k in enumerate(names)]
    hi = [np.percentile(groups[k], 75) - med[i] for i, k in enumerate(names)]
    fig, ax = plt.subplots(figsize=(7.2, max(3.0, 0.22 * len(names) + 1)))
    y = np.arange(len(names))
    colors = [COLORS["highlight"] if abs(m) >= 3 else COLORS["other"] for m in med]
    ax.barh(y, med, xerr=[lo, hi], color=colors, capsize=2)
    ax.axvspan(-3, 3, color="#eeeeee", zorder=0, label="|z| < 3: indistinguishable from the null")
    ax.set_yticks(y, names, fontsize=7)
    ax.set_xlabel("median z over matrices (clipped to ±50); bars: inter-quartile range")
    ax.set_title("Full fine-tuning's update vs null models")
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def seed_overlap(rows: Sequence[ProbeRow], path: Path, max_curves: int = 4) -> Path | None:
    """Seed-to-seed subspace overlap φ(k) of the full-FT update vs the random-subspace null k/d."""
    rows = [r for r in rows if r.stat == "k_star_left" and r.detail.get("overlap")][:max_curves]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for i, r in enumerate(rows):
        ov = r.detail["overlap"]
        k = np.arange(1, len(ov) + 1)
        ax.plot(k, ov, marker=".", color=plt.get_cmap("tab10")(i), label=f"{short_matrix(r.matrix)} (k* = {r.value:g})")
    ax.plot(k, r.detail["overlap_null"], "--", color=COLORS["null"], label="random subspaces: k/d")
    ax.set_xlabel("k (top singular directions)")
    ax.set_ylabel("overlap φ(k) between two seeds")
    ax.set_title("Do the update's directions replicate across seeds?")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def magdir_scatter(series: dict[str, list[tuple[float, float]]], path: Path) -> Path | None:
    """DoRA's analysis: ΔM vs ΔD per matrix, one colour per method."""
    series = {m: p for m, p in series.items() if len(p) >= 2}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for m, pts in series.items():
        a = np.asarray(pts)
        r = np.corrcoef(a[:, 0], a[:, 1])[0, 1] if len(a) > 2 else float("nan")
        ax.scatter(a[:, 1], a[:, 0], label=f"{m} (r = {r:+.2f})", color=COLORS.get(m, COLORS["highlight"]), s=18)
    ax.set_xlabel("ΔD: mean (1 − cos) of neuron direction change")
    ax.set_ylabel("ΔM: mean |neuron norm change|")
    ax.set_title("Magnitude vs direction change per matrix")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def ood_vs_id(arms: Sequence[Arm], path: Path, highlight: str | None = None) -> Path | None:
    """Mean OOD accuracy against test accuracy per arm (± sd over seeds) with the least-squares ID→OOD line
    over all arms: an arm's height above the line is its effective robustness. (Not the OOD/ID ratio,
    which rewards under-fitting.)"""
    arms = [a for a in arms if a.ood_accuracy() and a.metric("test_acc")]
    if not arms:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    xs = np.array([np.mean(a.metric("test_acc")) for a in arms])
    ys = np.array([np.mean(a.ood_accuracy()) for a in arms])
    for a, x, y in zip(arms, xs, ys):
        color = COLORS["highlight"] if a.method == highlight else COLORS.get(a.method, COLORS["other"])
        ax.errorbar(x, y, xerr=np.std(a.metric("test_acc")), yerr=np.std(a.ood_accuracy()), fmt="o", color=color,
                    ms=5, capsize=2)
        ax.annotate(f"{a.method}@{a.budget}" if a.budget not in (None, "fixed") else a.method, (x, y), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    if len(arms) >= 3 and np.ptp(xs) > 0:
        slope, intercept = np.polyfit(xs, ys, 1)
        grid = np.linspace(xs.min(), xs.max(), 20)
        ax.plot(grid, intercept + slope * grid, ls="--", color="grey", lw=1, label="ID→OOD fit over all arms")
        ax.legend(fontsize=7)
    ax.set_xlabel("test accuracy (in distribution)")
    ax.set_ylabel("mean accuracy on the shifted sets")
    ax.set_title("OOD vs ID accuracy (effective robustness = height above the line)")
    ax.grid(alpha=0.3)
    return _save(fig, path)
