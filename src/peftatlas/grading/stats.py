"""Tests of accuracy contrasts with uncertainty over seeds AND test items (a crossed mixed model).

Every rubric dimension asks whether a linear contrast of arm accuracies exceeds a threshold, e.g.
``acc(method) − acc(LoRA) > 0`` (BL) or ``acc(method) − ρ·acc(FT) − (1−ρ)·acc(head) > 0`` (PE: the
recovered share of the gain exceeds ρ). Model for arm ``a``, seed ``s``, test item ``i``::

    Y_asi = μ_a + S_as + I_ai + E_asi          (Y ∈ {0, 1}: the item was classified correctly)

with seed effects ``S_as`` (variance σ²_S,a, independent across arms: every arm trains its own seeds),
item effects ``I_ai`` (items are a sample of the item population; arms evaluated on the same test set
share the items, so ``I_ai`` and ``I_bi`` are correlated — the pairing) and residuals ``E_asi``
(variance σ²_E,a). For a contrast ``C = Σ_a w_a Ȳ_a`` (Ȳ_a: mean over seeds and items)::

    Var(C) = Σ_a w_a² σ²_S,a / n_a  +  Var(Σ_a w_a I_ai) / n_I  +  Σ_a w_a² σ²_E,a / (n_a n_I)

estimated by moments (unbiased for every term)::

    seed part  Σ_a w_a² s²_a / n_a         s²_a: variance over seeds of the seed means  (→ σ²_S + σ²_E/n_I)
    item part  s²_d / n_I − Σ_a w_a² σ̂²_E,a / (n_a n_I),  clipped at 0
               d_i = Σ_a w_a c_ai,  c_ai: item i's mean over arm a's seeds           (→ item var + σ²_E/n)
    σ̂²_E,a     = Σ_si (Y_asi − m_as − c_ai + Ȳ_a)² / ((n_a − 1)(n_I − 1))        two-way residual

and the test uses Student's t with Satterthwaite's degrees of freedom (the seed parts have n_a − 1
each, the item part n_I − 1): with 5 seeds the seed part dominates and t has ≈ 8 df, not ∞.
One-sided p-value for ``C > threshold``; the two-sided ``1 − 2α`` interval is shown beside it.

When the arms carry no per-item correctness (or were not evaluated on the same items), the item
part is dropped and the test is Welch's t over seed accuracies: inference about *this* test set,
said so in :attr:`ContrastTest.paired`.

Holm's step-down correction (:func:`holm`) runs over the measured dimensions that decide one grade.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as _st

ALPHA = 0.025  # one-sided level of every dimension test (= a two-sided 95% interval's lower bound)
MIN_SEEDS = 5  # a graded arm needs this many finished seeds


@dataclasses.dataclass(frozen=True)
class Scores:
    """One arm's outcomes on one evaluation set.

    ``items``: (seeds × items) 0/1 correctness, the same item order for every arm evaluated on the set;
    ``None`` when the records hold only per-seed accuracies (``per_seed``).
    """

    per_seed: np.ndarray
    items: np.ndarray | None = None

    @classmethod
    def from_items(cls, items: np.ndarray) -> Scores:
        y = np.asarray(items, dtype=np.float64)
        if y.ndim != 2 or y.shape[0] == 0 or y.shape[1] == 0:
            raise ValueError(f"item correctness must be a non-empty seeds × items array, got shape {y.shape}")
        return cls(y.mean(axis=1), y)

    @classmethod
    def from_seeds(cls, accuracies: Sequence[float]) -> Scores:
        return cls(np.asarray(accuracies, dtype=np.float64), None)

    @property
    def n_seeds(self) -> int:
        return int(self.per_seed.size)

    @property
    def n_items(self) -> int | None:
        return None if self.items is None else int(self.items.shape[1])

    @functools.cached_property
    def mean(self) -> float:
        return float(self.per_seed.mean())

    @functools.cached_property
    def seed_var(self) -> float:
        """Variance over seeds of the seed means (ddof 1)."""
        return float(np.var(self.per_seed, ddof=1))

    @functools.cached_property
    def item_means(self) -> np.ndarray:
        """``c_i``: each item's mean correctness over the seeds."""
        assert self.items is not None
        return self.items.mean(axis=0)

    @functools.cached_property
    def residual_var(self) -> float:
        """``σ̂²_E``: the two-way (seed × item) residual variance."""
        y = self.items
        assert y is not None
        r = y - self.per_seed[:, None] - self.item_means[None, :] + self.mean
        return float(np.sum(r * r)) / ((y.shape[0] - 1) * (y.shape[1] - 1))


@dataclasses.dataclass(frozen=True)
class ContrastTest:
    """``estimate = Σ w_a mean_a`` against ``threshold``: one-sided p-value, two-sided interval, df."""

    estimate: float
    threshold: float
    se: float
    df: float
    p: float  # one-sided, H0: contrast ≤ threshold
    low: float
    high: float
    n_seeds: tuple[int, ...]
    n_items: int | None
    paired: bool  # True: items resampled in the model (shared test set); False: seeds only

    def fmt(self, pct: bool = True) -> str:
        f = (lambda v: f"{100 * v:+.2f} pt") if pct else (lambda v: f"{v:.3f}")
        level = 100 * (1 - 2 * ALPHA)
        basis = f"seeds {'/'.join(map(str, self.n_seeds))}" + (
            f" × {self.n_items} paired items" if self.paired else ", items not resampled")
        return f"{f(self.estimate)} [{level:.0f}% CI {f(self.low)}, {f(self.high)}] ({basis}, p = {self.p:.3g})"


def _variance_parts(groups: Sequence[Scores], weights: Sequence[float]) -> tuple[list[float], float, bool]:
    """Per-group seed parts and the item part of ``Var(Σ w_a Ȳ_a)`` (see the module docstring)."""
    seed_parts = [w * w * g.seed_var / g.n_seeds for g, w in zip(groups, weights)]
    widths = {g.n_items for g in groups}
    if None in widths or len(widths) != 1:
        return seed_parts, 0.0, False
    n_items = widths.pop()
    if n_items is None or n_items < 2:
        return seed_parts, 0.0, False
    d = np.zeros(n_items)
    resid = 0.0
    for g, w in zip(groups, weights):
        d += w * g.item_means
        resid += w * w * g.residual_var / (g.n_seeds * n_items)
    item_part = max(float(np.var(d, ddof=1)) / n_items - resid, 0.0)
    return seed_parts, item_part, True


def contrast_test(groups: Sequence[Scores], weights: Sequence[float], threshold: float = 0.0,
                  alpha: float = ALPHA) -> ContrastTest:
    """Test ``Σ_a w_a acc_a > threshold`` (each arm ≥ 2 seeds); see the module docstring for the model."""
    if len(groups) != len(weights) or not groups:
        raise ValueError("contrast_test needs one weight per group")
    if min(g.n_seeds for g in groups) < 2:
        raise ValueError("contrast_test needs ≥ 2 seeds per group")
    est = float(sum(w * g.mean for g, w in zip(groups, weights)))
    seed_parts, item_part, paired = _variance_parts(groups, weights)
    var = sum(seed_parts) + item_part
    n_items = groups[0].n_items if paired else None
    denom = sum(p * p / (g.n_seeds - 1) for p, g in zip(seed_parts, groups))
    if paired and n_items:
        denom += item_part * item_part / (n_items - 1)
    df = var * var / denom if denom > 0 else float("inf")
    seeds = tuple(g.n_seeds for g in groups)
    if var <= 0:  # no spread at all: the contrast is known exactly
        p = 0.0 if est > threshold else 1.0
        return ContrastTest(est, threshold, 0.0, df, p, est, est, seeds, n_items, paired)
    se = math.sqrt(var)
    p = float(_st.t.sf((est - threshold) / se, df))
    q = float(_st.t.ppf(1 - alpha, df))
    return ContrastTest(est, threshold, se, df, p, est - q * se, est + q * se, seeds, n_items, paired)


def difference_test(a: Scores, b: Scores, margin: float = 0.0, alpha: float = ALPHA) -> ContrastTest:
    """``acc(a) − acc(b) > −margin`` (margin 0: superiority; > 0: non-inferiority within the margin)."""
    return contrast_test([a, b], [1.0, -1.0], -margin, alpha)


@dataclasses.dataclass(frozen=True)
class RatioTest:
    """``R = (s − s0)/(s_FT − s0)`` with a Fieller interval, and the contrast test of ``R > rho``."""

    estimate: float
    low: float
    high: float
    rho: float
    test: ContrastTest  # s − rho·s_FT − (1 − rho)·s0 > 0


def gain_recovered(method: Scores, full: Scores, head: Scores, rho: float, alpha: float = ALPHA) -> RatioTest:
    """Recovered share of full fine-tuning's gain over head-only, tested against ``rho``.

    ``R > rho`` ⟺ ``(s − s0) − rho (s_FT − s0) > 0`` when ``s_FT > s0``, a linear contrast, so the test
    is exact in the same model as every other dimension. The interval is Fieller's: every ρ with
    ``(a − ρ b)² ≤ q² V(ρ)``, where ``a = s − s0``, ``b = s_FT − s0``, ``V(ρ)`` the (unclipped) variance of
    ``a − ρ b`` — a quadratic in ρ — and ``q`` the t quantile at the threshold test's df. A bound is
    ±inf when the gain itself is not distinguishable from 0.
    """
    groups = [method, full, head]
    test = contrast_test(groups, [1.0, -rho, rho - 1.0], 0.0, alpha)
    a, b = method.mean - head.mean, full.mean - head.mean
    r = a / b if b != 0 else float("nan")
    cov = _covariance(groups)
    u, v = np.array([1.0, 0.0, -1.0]), np.array([0.0, -1.0, 1.0])  # a − ρ b has weights u + ρ v
    q2 = float(_st.t.ppf(1 - alpha, test.df)) ** 2 if math.isfinite(test.df) else float(_st.norm.ppf(1 - alpha)) ** 2
    c2 = b * b - q2 * float(v @ cov @ v)
    c1 = -2.0 * (a * b + q2 * float(u @ cov @ v))
    c0 = a * a - q2 * float(u @ cov @ u)
    disc = c1 * c1 - 4 * c2 * c0
    if c2 > 0 and disc >= 0:
        root = math.sqrt(disc)
        low, high = (-c1 - root) / (2 * c2), (-c1 + root) / (2 * c2)
    else:
        low, high = -math.inf, math.inf
    return RatioTest(r, low, high, rho, test)


def _covariance(groups: Sequence[Scores]) -> np.ndarray:
    """The bilinear form of the variance estimate: ``Var(Σ w_a Ȳ_a) ≈ wᵀ Σ̂ w`` before the item part's clip."""
    cov = np.diag([g.seed_var / g.n_seeds for g in groups])
    widths = {g.n_items for g in groups}
    if None in widths or len(widths) != 1:
        return cov
    n_items = widths.pop()
    if n_items is None or n_items < 2:
        return cov
    means = np.stack([g.item_means for g in groups])
    cov = cov + np.atleast_2d(np.cov(means, ddof=1)) / n_items
    return cov - np.diag([g.residual_var / (g.n_seeds * n_items) for g in groups])


def permutation_p_less(a: Sequence[float], b: Sequence[float]) -> float:
    """Exact one-sided permutation p-value that ``a`` tends to be smaller than ``b`` (mean ranks).

    For steps-to-target, where a run that never reached the target is +inf (ranks handle it; no
    arithmetic on the censored values). Enumerates every split when C(n_a+n_b, n_a) ≤ 20,000.
    """
    from itertools import combinations

    x = np.concatenate([np.asarray(a, float), np.asarray(b, float)])
    ranks = _st.rankdata(x)
    n_a, n = len(a), len(x)
    observed = ranks[:n_a].sum()
    if math.comb(n, n_a) > 20_000:
        rng = np.random.default_rng(0)
        sums = np.array([ranks[rng.permutation(n)[:n_a]].sum() for _ in range(20_000)])
    else:
        sums = np.array([ranks[list(c)].sum() for c in combinations(range(n), n_a)])
    return float(np.mean(sums <= observed + 1e-9))


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjusted p-values: reject ``k`` at level α iff ``adjusted[k] ≤ α``.

    Sorted ascending ``p_(1) ≤ … ≤ p_(m)``: ``adj_(j) = max_{i ≤ j} min(1, (m − i + 1) p_(i))``. Controls
    the family-wise error rate at α under any dependence between the tests.
    """
    order = sorted(pvalues, key=lambda k: pvalues[k])
    m, running, out = len(order), 0.0, {}
    for i, k in enumerate(order):
        running = max(running, min(1.0, (m - i) * pvalues[k]))
        out[k] = running
    return out


def binomial_upper(successes: int, trials: int, confidence: float = 0.99) -> float:
    """One-sided Clopper–Pearson upper bound of a binomial rate."""
    if successes >= trials:
        return 1.0
    return float(_st.beta.ppf(confidence, successes + 1, trials - successes))
