"""VeRA appendix E: how well can ``diag(b) B diag(d) A`` fit a random matrix, against LoRA, per parameter?

Targets ``T ∈ R^{m×n}`` (10×10 by default) have iid N(0, 1) entries. Error = relative squared error
``‖T − T̂‖² / ‖T‖²`` (the paper's MSE, normalised).

* LoRA at rank k (``k(m + n)`` params): the optimum is the truncated SVD (Eckart–Young), so the error
  is exactly ``Σ_{i>k} σᵢ² / Σ σᵢ²``.
* VeRA at rank r (``m + r`` params; A, B frozen, drawn by the library's VeRA bases from a seed):
  ``T̂ = diag(b) B diag(d) A`` is bilinear in (b, d); alternating least squares solves each half
  exactly (b row by row given d; d by linear least squares given b). The reported error is the best
  of several restarts, i.e. an upper bound on VeRA's true optimum.
"""

from __future__ import annotations

from typing import Any

import torch
from matplotlib.figure import Figure
from torch import Tensor

from ..methods.vera import VeRAProjections
from .common import ExperimentResult, summarize, timed

F64 = torch.float64


def lora_optimal_error(T: Tensor, k: int) -> float:
    """Relative squared error of the best rank-``k`` approximation."""
    s2 = torch.linalg.svdvals(T).pow(2)
    return float(s2[k:].sum() / s2.sum())


def vera_fit(T: Tensor, A: Tensor, B: Tensor, iters: int = 300, restarts: int = 4,
             generator: torch.Generator | None = None) -> tuple[float, Tensor, Tensor]:
    """Best ALS fit of ``diag(b) B diag(d) A`` to ``T``; returns (relative squared error, b, d)."""
    m = T.shape[0]
    r = A.shape[0]
    norm2 = T.pow(2).sum()
    AAt = A @ A.t()
    best: tuple[float, Tensor, Tensor] = (float("inf"), torch.zeros(m, dtype=F64), torch.zeros(r, dtype=F64))
    for restart in range(restarts):
        d = torch.full((r,), 0.1, dtype=F64) if restart == 0 else torch.randn(r, dtype=F64, generator=generator)
        err_prev = float("inf")
        for _ in range(iters):
            M = (B * d) @ A
            b = (T * M).sum(1) / M.pow(2).sum(1).clamp_min(1e-300)
            # normal equations of min_d ‖T − Σ_k d_k (b ⊙ B_k) A_kᵀ‖²: Gram = (Bᵀ diag(b²) B) ⊙ (A Aᵀ)
            Bb = B * b[:, None]
            d = torch.linalg.lstsq(Bb.t() @ Bb * AAt, ((Bb.t() @ T) * A).sum(1, keepdim=True)).solution.reshape(r)
            err = float((T - b[:, None] * ((B * d) @ A)).pow(2).sum() / norm2)
            if err_prev - err < 1e-12 * max(err, 1e-12):
                break
            err_prev = err
        if err < best[0]:
            best = (err, b, d)
    return best


def run_vera(m: int = 10, n: int = 10, targets: int = 10,
             vera_ranks: tuple[int, ...] = (1, 2, 5, 10, 20, 30, 40, 60, 90),
             lora_ranks: tuple[int, ...] = (1, 2, 3, 4, 5), restarts: int = 4, iters: int = 300,
             seed: int = 0) -> ExperimentResult:
    """Fit ``targets`` random ``m × n`` matrices by LoRA (optimal) and VeRA (ALS) at several sizes."""
    settings: dict[str, Any] = {"m": m, "n": n, "targets": targets, "vera_ranks": list(vera_ranks),
                                "lora_ranks": list(lora_ranks), "restarts": restarts, "iters": iters, "seed": seed,
                                "error": "relative squared error ‖T − T̂‖² / ‖T‖²"}
    rows: list[dict[str, Any]] = []
    g = torch.Generator().manual_seed(seed)
    with timed(settings):
        bases = {}
        for r in vera_ranks:
            proj = VeRAProjections(r, n, m, seed)
            bases[r] = (proj.A.to(F64), proj.B.to(F64))
        for t in range(targets):
            T = torch.randn(m, n, dtype=F64, generator=g)
            for k in lora_ranks:
                rows.append({"method": "lora", "rank": k, "params": k * (m + n), "target": t,
                             "rel_sq_error": lora_optimal_error(T, k)})
            for r in vera_ranks:
                A, B = bases[r]
                err, _, _ = vera_fit(T, A, B, iters, restarts, g)
                rows.append({"method": "vera", "rank": r, "params": m + r, "target": t, "rel_sq_error": err})
    summary = summarize(rows, ["method", "rank", "params"], "rel_sq_error")
    return ExperimentResult("vera_appendix_e", rows, summary, settings, _plot)


def _plot(fig: Figure, res: ExperimentResult) -> None:
    ax = fig.add_subplot(1, 1, 1)
    for method, style in (("lora", "o-"), ("vera", "s-")):
        pts = sorted((r["params"], r["rel_sq_error_mean"], r["rel_sq_error_std"])
                     for r in res.summary if r["method"] == method)
        if pts:
            x, y, s = zip(*pts)
            ax.errorbar(x, y, yerr=s, fmt=style, capsize=3,
                        label={"lora": "LoRA (optimal SVD truncation)", "vera": "VeRA (best ALS fit)"}[method])
    st = res.settings
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel("relative squared error ‖T − T̂‖² / ‖T‖²")
    ax.set_title(f"Fitting random {st['m']}×{st['n']} matrices ({st['targets']} targets): VeRA vs LoRA")
    ax.grid(alpha=0.3)
    ax.legend()
