"""The probe suite: every geometric statistic of one update against its null models, as flat rows.

``probe_matrix(ΔW, W0)`` runs, for one adapted matrix::

    spectral   stable/effective rank, r90, energy in the top 1/4/8/16 directions   vs gauss
    fit        captured energy of the equal-budget fit in each family                vs perm, spec
    align      energy and principal angles in W0's principal / minor subspaces      vs perm, spec
    rotation   Procrustes capture, rotation fraction, Gram and HE change             vs perm, spec
    magdir     DoRA's ΔM and ΔD (no null; correlated across matrices by the caller)

``probe_pair(ΔW_a, ΔW_b)`` gives the seed-consistent rank of two fine-tuning seeds. Every row is a
:class:`ProbeRow` (JSON-able), stored by :mod:`peftatlas.geometry.store`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ._linalg import GeometryError, as_matrix, rng_of, same_shape, svdvals
from .alignment import W0Basis, alignment_stats
from .fits import budget_captured, budget_fitters
from .nulls import NULL_KINDS, null_tests_many
from .rotation import RotationBasis, magnitude_direction, rotation_stats
from .spectra import effective_rank, energy_top_k, rank_at_energy, seed_consistent_rank, stable_rank

PROBE_VERSION = 2
SPECTRAL_KS = (1, 4, 8, 16)


@dataclasses.dataclass
class ProbeRow:
    """One statistic of one matrix, beside one null model (``null=None``: no null applies)."""

    matrix: str
    probe: str
    stat: str
    value: float
    null: str | None = None
    null_mean: float | None = None
    null_sd: float | None = None
    z: float | None = None
    n: int = 0
    invariant: bool = False
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _rows(matrix: str, probe: str, stats: Callable[[np.ndarray], dict[str, float]], d: np.ndarray,
          nulls: Sequence[str], draws: int, rng: np.random.Generator,
          detail: dict[str, dict] | None = None, null_stats: Callable[[np.ndarray], dict[str, float]] | None = None,
          fast: bool = True) -> list[ProbeRow]:
    """Rows of ``stats(d)`` against each null (``draws == 0``: values only, ``null=None``).

    ``fast``: null draws carry their SVD and ``null_stats`` (same statistics, cheaper) runs on them;
    otherwise every draw is a plain matrix and ``stats`` runs on it (the reference path).
    """
    if draws == 0:
        return [ProbeRow(matrix, probe, stat, v, detail=dict((detail or {}).get(stat, {})))
                for stat, v in stats(d).items()]
    out = []
    tests = null_tests_many(stats, d, list(nulls), draws, rng, null_stats if fast else None, factors=fast)
    for (stat, kind), t in tests.items():
        out.append(ProbeRow(matrix, probe, stat, t.value, kind, t.null_mean, t.null_sd, t.z, t.n, t.invariant,
                            dict((detail or {}).get(stat, {}))))
    return out


def spectral_stats(x: np.ndarray) -> dict[str, float]:
    """Spectral statistics of one matrix (one SVD)."""
    s = svdvals(x)
    out = {"stable_rank": stable_rank(s), "effective_rank": effective_rank(s), "r90": float(rank_at_energy(s, 0.9))}
    out.update({f"energy_top{k}": energy_top_k(s, k) for k in SPECTRAL_KS if k < s.size})
    return out


def probe_matrix(delta: Any, w0: Any | None = None, *, name: str = "matrix", draws: int = 20,
                 seed: int | np.random.Generator = 0, budget: int | None = None, k: int = 8,
                 nulls: Sequence[str] = ("perm", "spec"), groups: Sequence[str] | None = None,
                 fast: bool = True) -> list[ProbeRow]:
    """Run the probe suite on one update ``delta`` (and its base weight ``w0`` when known).

    ``fast`` (default) makes the null draws cheap without changing what is measured beyond rounding:
    ``perm``/``spec`` draws carry their exact SVD (no eigendecomposition per draw for low-rank energy
    or ΔW's top-k directions), Kronecker captures come from singular values only, and VeRA's ALS has
    its bases prepared once and runs its products in float32 (see :class:`~.fits.VeraCapture`).
    ``fast=False`` is the straightforward reference: every draw is factored and fitted from scratch.
    The random stream, hence the draws, is the same either way.
    """
    d = as_matrix(delta, f"{name} ΔW")
    if w0 is not None:
        w = as_matrix(w0, f"{name} W0")
        same_shape(d, w, name)
    else:
        w = None
    for kind in nulls:
        if kind not in NULL_KINDS:
            raise GeometryError(f"unknown null model {kind!r}; choose from {', '.join(NULL_KINDS)}")
    wanted = set(groups or ("spectral", "fit", "align", "rotation", "magdir"))
    if draws < 0 or draws == 1:
        raise GeometryError(f"draws must be 0 (no nulls) or ≥ 2, got {draws}")
    rng = rng_of(seed)
    rows: list[ProbeRow] = []
    if "spectral" in wanted:
        rows += _rows(name, "spectral", spectral_stats, d, ["gauss"], draws, rng)
    if "fit" in wanted:
        fitters = budget_fitters(d.shape, budget, w, seed=0)
        fits = {fam: f(d) for fam, f in fitters.items()}
        detail = {fam: {"params": f.params, "residual": f.residual, **f.detail} for fam, f in fits.items()}

        quick = budget_captured(d.shape, budget, w, seed=0)

        def captured(x: np.ndarray) -> dict[str, float]:
            return {fam: f(x).captured for fam, f in fitters.items()}

        def captured_fast(x: np.ndarray) -> dict[str, float]:
            return {fam: f(x) for fam, f in quick.items()}

        rows += _rows(name, "fit", captured, d, nulls, draws, rng, detail, captured_fast, fast)
    if w is not None and min(d.shape) >= 2 * k and "align" in wanted:
        align = _rows(name, "align", alignment_stats(W0Basis(w, k)), d, nulls, draws, rng, fast=fast)
        for r in align:
            r.detail["k"] = k
        rows += align
    if w is not None and "rotation" in wanted:
        rows += _rows(name, "rotation", rotation_stats(RotationBasis(w)), d, nulls, draws, rng, fast=fast)
    if w is not None and "magdir" in wanted:
        dm, dd = magnitude_direction(w, w + d)
        rows += [ProbeRow(name, "magdir", "delta_magnitude", dm), ProbeRow(name, "magdir", "delta_direction", dd)]
    for r in rows:
        r.detail.setdefault("shape", list(d.shape))
    return rows


def probe_pair(delta_a: Any, delta_b: Any, *, name: str = "matrix", z: float = 3.0,
               max_k: int | None = None) -> list[ProbeRow]:
    """Seed-consistent rank ``k*`` of two seeds' updates of the same matrix (left and right sides).

    The null for ``k*`` is analytic: each direction passes by chance with probability about
    ``P(N(0,1) ≥ z)``, so ``null_mean`` is the expected number of chance passes. Directions are tested
    up to ``max_k`` (default d/4); ``detail["censored"]`` is true when every tested direction passed,
    i.e. the shared rank is at least the value.
    """
    rows = []
    for side in ("left", "right"):
        res = seed_consistent_rank(delta_a, delta_b, max_k=max_k, z=z, side=side)
        n_dir = len(res.direction_overlap)
        detail = {"overlap": res.overlap, "overlap_null": res.overlap_null,
                  "direction_overlap": res.direction_overlap, "threshold": res.direction_threshold, "d": res.d,
                  "tested": n_dir, "censored": res.k_star == n_dir}
        rows.append(ProbeRow(name, "seed_rank", f"k_star_{side}", float(res.k_star), "analytic",
                             n_dir * 0.5 * math.erfc(z / math.sqrt(2.0)), None, None, n_dir, False, detail))
        k8 = min(8, n_dir)
        rows.append(ProbeRow(name, "seed_rank", f"overlap_top{k8}_{side}", res.overlap[k8 - 1], "analytic",
                             k8 / res.d, None, None, 0, False, {}))
    return rows
