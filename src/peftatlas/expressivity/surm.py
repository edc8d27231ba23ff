"""SURM Fig. 1 re-examined: optimal approximation at equal budget, with a permutation control.

Targets (``d × d``, ``d = 64`` by default, fresh draws per trial):

* ``gaussian`` — iid N(0, 1);
* ``psd`` — ``G Gᵀ / d`` with ``G`` iid N(0, 1) (the paper's Fig. 1 target);
* ``psd_sym_permuted`` — ``P T Pᵀ``: one permutation on both sides (a relabelling of hidden units; the
  diagonal stays on the diagonal);
* ``psd_permuted`` — the same PSD matrix with rows and columns permuted independently (same singular
  values, so every low-rank error is unchanged; only the alignment with the coordinate order is lost);
* ``lowrank_noise`` — ``U Vᵀ + E``, ``U, V ∈ R^{d×4}``, all entries iid N(0, 1) (rank 4 + noise,
  ≈ 80 % of the energy in the rank-4 part).

Approximations, each the exact optimum in its family (:mod:`peftatlas.ops.projections`):
rank-k (truncated SVD, ``2dk`` params), diagonal (``d``, the control for an identity-like
component), circulant (``d``), Toeplitz (``2d − 1``), Kronecker
``B ⊗ A`` with square ``√d × √d`` factors and its 2-term sum (``2d`` and ``4d``; Van Loan–Pitsianis).
Error = relative Frobenius error ``‖T − T̂‖ / ‖T‖``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import Tensor

from ..ops import (
    circulant_dense,
    kron_dense,
    nearest_circulant,
    nearest_kronecker,
    nearest_low_rank,
    nearest_toeplitz,
    toeplitz_dense,
)
from .common import ExperimentResult, summarize, timed

F64 = torch.float64
TARGETS = ("gaussian", "psd", "psd_sym_permuted", "psd_permuted", "lowrank_noise")


def make_target(kind: str, d: int, generator: torch.Generator) -> Tensor:
    if kind == "gaussian":
        return torch.randn(d, d, dtype=F64, generator=generator)
    if kind in ("psd", "psd_sym_permuted", "psd_permuted"):
        G = torch.randn(d, d, dtype=F64, generator=generator)
        T = G @ G.t() / d
        if kind == "psd_sym_permuted":
            p = torch.randperm(d, generator=generator)
            T = T[p][:, p]
        if kind == "psd_permuted":
            T = T[torch.randperm(d, generator=generator)][:, torch.randperm(d, generator=generator)]
        return T
    if kind == "lowrank_noise":
        U, V = torch.randn(2, d, 4, dtype=F64, generator=generator)
        return U @ V.t() + torch.randn(d, d, dtype=F64, generator=generator)
    raise ValueError(f"unknown target kind {kind!r}; choose from {', '.join(TARGETS)}")


def _kron_fit(T: Tensor, terms: int) -> Tensor:
    d = T.shape[0]
    a = math.isqrt(d)
    while d % a:
        a -= 1
    B, A = nearest_kronecker(T, (d // a, d // a), (a, a), terms)
    return sum(kron_dense(B[i], A[i]) for i in range(terms))


def approximators(d: int) -> dict[str, tuple[int, Callable[[Tensor], Tensor]]]:
    """Name → (parameter count, optimal-approximation function) for a ``d × d`` target."""
    a = math.isqrt(d)
    while d % a:
        a -= 1
    kron_params = (d // a) ** 2 + a * a
    return {
        "rank1": (2 * d, lambda T: nearest_low_rank(T, 1)),
        "rank2": (4 * d, lambda T: nearest_low_rank(T, 2)),
        "diagonal": (d, lambda T: torch.diag(torch.diagonal(T))),
        "circulant": (d, lambda T: circulant_dense(nearest_circulant(T))),
        "toeplitz": (2 * d - 1, lambda T: toeplitz_dense(nearest_toeplitz(T), d, d)),
        "kronecker": (kron_params, lambda T: _kron_fit(T, 1)),
        "kronecker2": (2 * kron_params, lambda T: _kron_fit(T, 2)),
    }


def run_surm(d: int = 64, trials: int = 10, seed: int = 0) -> ExperimentResult:
    settings: dict[str, Any] = {"d": d, "trials": trials, "seed": seed, "error": "‖T − T̂‖_F / ‖T‖_F"}
    rows: list[dict[str, Any]] = []
    g = torch.Generator().manual_seed(seed)
    fits = approximators(d)
    with timed(settings):
        for kind in TARGETS:
            for t in range(trials):
                T = make_target(kind, d, g)
                for method, (params, fit) in fits.items():
                    rows.append({"target": kind, "trial": t, "method": method, "params": params,
                                 "rel_error": float((T - fit(T)).norm() / T.norm())})
    summary = summarize(rows, ["target", "method", "params"], "rel_error")
    return ExperimentResult("surm_approximation", rows, summary, settings, _plot)


def _plot(fig: Figure, res: ExperimentResult) -> None:
    ax = fig.add_subplot(1, 1, 1)
    methods = list(dict.fromkeys(r["method"] for r in res.summary))
    params = {r["method"]: r["params"] for r in res.summary}
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        vals = [next(r for r in res.summary if r["target"] == k and r["method"] == m) for k in TARGETS]
        ax.bar([j + i * width for j in range(len(TARGETS))], [v["rel_error_mean"] for v in vals], width,
               yerr=[v["rel_error_std"] for v in vals], capsize=2, label=f"{m} ({params[m]} params)")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(TARGETS))], list(TARGETS))
    ax.set_ylabel("relative Frobenius error (optimal fit)")
    ax.set_title(f"Structured vs low-rank approximation of {res.settings['d']}×{res.settings['d']} targets "
                 f"({res.settings['trials']} trials)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=3)
