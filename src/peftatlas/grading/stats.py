"""Bootstrap confidence intervals over seeds (percentile method, fixed generator: reproducible)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

N_BOOT = 2000
LEVEL = 0.95


@dataclasses.dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile bootstrap interval."""

    estimate: float
    low: float
    high: float
    n: tuple[int, ...]  # samples per group

    def excludes(self, value: float = 0.0) -> bool:
        return self.low > value or self.high < value

    def fmt(self, digits: int = 3, pct: bool = False) -> str:
        f = (lambda v: f"{100 * v:+.{max(digits - 2, 1)}f} pt") if pct else (lambda v: f"{v:.{digits}f}")
        return f"{f(self.estimate)} [95% CI {f(self.low)}, {f(self.high)}]"


def bootstrap(groups: Sequence[Sequence[float]], stat: Callable[..., Any], n_boot: int = N_BOOT,
              level: float = LEVEL, seed: int = 0) -> Interval:
    """Resample each group of seeds independently (with replacement) and recompute ``stat(*means)``.

    ``stat`` receives the groups' resampled means as arrays of ``n_boot`` values (and once as plain
    means for the point estimate), so it must be written with numpy operations, e.g. ``lambda a, b: a − b``.
    """
    arrays = [np.asarray(g, dtype=np.float64) for g in groups]
    if any(a.size == 0 for a in arrays):
        raise ValueError("bootstrap needs at least one value per group")
    point = float(stat(*(np.float64(a.mean()) for a in arrays)))
    rng = np.random.default_rng(seed)
    means = [a[rng.integers(0, a.size, (n_boot, a.size))].mean(axis=1) for a in arrays]
    with np.errstate(divide="ignore", invalid="ignore"):
        draws = np.asarray(stat(*means), dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return Interval(point, float("nan"), float("nan"), tuple(a.size for a in arrays))
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return Interval(point, float(lo), float(hi), tuple(a.size for a in arrays))


def mean_difference(a: Sequence[float], b: Sequence[float], **kw) -> Interval:
    """``mean(a) − mean(b)`` with a bootstrap interval over both groups' seeds."""
    return bootstrap([a, b], lambda x, y: x - y, **kw)


def gain_recovered(method: Sequence[float], full: Sequence[float], base: Sequence[float], **kw) -> Interval:
    """``R = (s − s0) / (s_FT − s0)``: the fraction of full fine-tuning's gain over the head-only floor."""
    def ratio(s: Any, ft: Any, s0: Any) -> Any:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(ft - s0 != 0, (s - s0) / (ft - s0), np.nan)

    return bootstrap([method, full, base], ratio, **kw)
