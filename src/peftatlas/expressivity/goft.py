"""GOFT: can the (d−1)-angle Givens tree express a rotation? Fits against the Procrustes optimum.

Setup: a layer ``W0 ∈ R^{d×d}`` (iid N(0, 1/d)) and a rotated target ``T = W0 R*ᵀ`` with ``R*`` from

* ``haar`` — a uniformly random rotation in SO(d) (what "any orthogonal transformation" means);
* ``tree`` — the GOFT family itself (angles uniform in (−π, π)), a positive control;
* ``near_identity`` — a small generic rotation ``expm(0.2·K)``, ``K = (G − Gᵀ)/√(2d)``, ``G`` iid N(0, 1).

Fits of ``T`` (error = ``‖T̂ − T‖_F / ‖T − W0‖_F``: 0 = exact, 1 = no better than leaving ``W0``):

* ``goft`` — ``W0 R(θ)ᵀ`` over the tree's d − 1 angles, L-BFGS from θ = 0 plus random restarts
  (a local method: its error is an upper bound on the family's optimum — the ``tree`` control
  shows how often it misses a target that the family contains exactly);
* ``qgoft`` — the same tree with free 2×2 blocks (4(d − 1) params, no penalty), L-BFGS from I;
* ``procrustes`` — the best rotation (closed form; full OFT, d(d−1)/2 params): the ceiling;
* ``oft_block2`` / ``oft_block4`` — best block-diagonal rotation (block-OFT Procrustes) with
  d/2 and 3d/2 params, the same budget range as GOFT;
* ``lora_r1`` — the best additive rank-1 update (2d params).

``family_dim`` is the numerical rank of the Jacobian of θ ↦ R(θ) at a random θ (the dimension of the
tree family) against ``dim SO(d) = d(d−1)/2``.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import Tensor

from ..ops import (
    block_procrustes,
    givens_rotation_apply,
    givens_tree_apply,
    givens_tree_dense,
    nearest_low_rank,
    procrustes,
    rotation_blocks,
)
from .common import ExperimentResult, summarize, timed

F64 = torch.float64
TARGETS = ("haar", "tree", "near_identity")


def random_rotation(d: int, generator: torch.Generator) -> Tensor:
    """Haar-distributed rotation: QR of a Gaussian matrix with the sign fix, then det +1."""
    Q, Rr = torch.linalg.qr(torch.randn(d, d, dtype=F64, generator=generator))
    Q = Q * torch.sign(torch.diagonal(Rr))
    if torch.linalg.det(Q) < 0:
        Q[:, 0] = -Q[:, 0]
    return Q


def make_target_rotation(kind: str, d: int, generator: torch.Generator) -> Tensor:
    if kind == "haar":
        return random_rotation(d, generator)
    if kind == "tree":
        theta = (torch.rand(d - 1, dtype=F64, generator=generator) * 2 - 1) * torch.pi
        return givens_tree_dense(rotation_blocks(theta), d)
    if kind == "near_identity":
        G = torch.randn(d, d, dtype=F64, generator=generator)
        return torch.linalg.matrix_exp(0.2 * (G - G.t()) / (2 * d) ** 0.5)
    raise ValueError(f"unknown target kind {kind!r}; choose from {', '.join(TARGETS)}")


def _lbfgs(params: Tensor, loss_fn, iters: int) -> float:
    params.requires_grad_(True)
    opt = torch.optim.LBFGS([params], lr=1, max_iter=iters, tolerance_grad=1e-12, tolerance_change=1e-14,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = loss_fn(params)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(loss_fn(params))


def fit_tree(W0: Tensor, T: Tensor, quasi: bool, restarts: int, iters: int, generator: torch.Generator) -> float:
    """Smallest ``‖W0 R(θ)ᵀ − T‖²`` found over restarts (rows of ``W0 Rᵀ`` are ``R w_o``)."""
    d = W0.shape[1]
    best = float("inf")
    for k in range(restarts):
        if quasi:
            init = torch.eye(2, dtype=F64).repeat(d - 1, 1, 1)
            if k:
                init = init + 0.5 * torch.randn(d - 1, 2, 2, dtype=F64, generator=generator)

            def loss(p: Tensor) -> Tensor:
                return (givens_tree_apply(W0, p) - T).pow(2).sum()
        else:
            init = torch.zeros(d - 1, dtype=F64)
            if k:
                init = (torch.rand(d - 1, dtype=F64, generator=generator) * 2 - 1) * torch.pi

            def loss(p: Tensor) -> Tensor:
                return (givens_rotation_apply(W0, p) - T).pow(2).sum()
        best = min(best, _lbfgs(init.clone(), loss, iters))
    return best


def tree_family_dim(d: int, generator: torch.Generator) -> int:
    """Numerical rank of the Jacobian of θ ↦ vec R(θ) at a random point."""
    theta = (torch.rand(d - 1, dtype=F64, generator=generator) * 2 - 1) * torch.pi
    with warnings.catch_warnings():  # torch's forward-mode AD loads jit decompositions and warns about jit
        warnings.simplefilter("ignore", DeprecationWarning)
        J = torch.autograd.functional.jacobian(lambda t: givens_tree_dense(rotation_blocks(t), d).reshape(-1),
                                               theta, strategy="forward-mode", vectorize=True)
    return int(torch.linalg.matrix_rank(J))


def run_goft(dims: tuple[int, ...] = (8, 16, 64), targets: int = 3, restarts: int = 3, iters: int = 200,
             seed: int = 0) -> ExperimentResult:
    settings: dict[str, Any] = {"dims": list(dims), "targets": targets, "restarts": restarts, "iters": iters,
                                "seed": seed, "error": "‖T̂ − T‖_F / ‖T − W0‖_F", "family_dim": {}}
    rows: list[dict[str, Any]] = []
    g = torch.Generator().manual_seed(seed)
    with timed(settings):
        for d in dims:
            settings["family_dim"][str(d)] = {"tree": tree_family_dim(d, g), "SO(d)": d * (d - 1) // 2}
            for kind in TARGETS:
                for t in range(targets):
                    W0 = torch.randn(d, d, dtype=F64, generator=g) / d**0.5
                    T = W0 @ make_target_rotation(kind, d, g).t()
                    scale = (T - W0).norm()
                    fits = {
                        "goft": (d - 1, fit_tree(W0, T, False, restarts, iters, g) ** 0.5),
                        "qgoft": (4 * (d - 1), fit_tree(W0, T, True, 1, iters, g) ** 0.5),
                        "procrustes": (d * (d - 1) // 2, (W0 @ procrustes(W0, T, special=True) - T).norm()),
                        "oft_block2": (d // 2, (W0 @ block_procrustes(W0, T, 2, special=True) - T).norm()),
                        "oft_block4": (3 * d // 2, (W0 @ block_procrustes(W0, T, 4, special=True) - T).norm()),
                        "lora_r1": (2 * d, (W0 + nearest_low_rank(T - W0, 1) - T).norm()),
                    }
                    for method, (params, resid) in fits.items():
                        rows.append({"d": d, "target": kind, "index": t, "method": method, "params": params,
                                     "rel_error": float(resid / scale)})
    summary = summarize(rows, ["d", "target", "method", "params"], "rel_error")
    return ExperimentResult("goft_rotations", rows, summary, settings, _plot)


def _plot(fig: Figure, res: ExperimentResult) -> None:
    methods = list(dict.fromkeys(r["method"] for r in res.summary))
    dims = res.settings["dims"]
    axes = fig.subplots(1, len(TARGETS), sharey=True)
    for ax, kind in zip(axes, TARGETS):
        for m in methods:
            pts = sorted((r["d"], r["rel_error_mean"], r["rel_error_std"]) for r in res.summary
                         if r["target"] == kind and r["method"] == m)
            if pts:
                x, y, s = zip(*pts)
                ax.errorbar(x, y, yerr=s, fmt="o-", capsize=3, label=m)
        ax.set_xscale("log", base=2)
        ax.set_xticks(dims, [str(d) for d in dims])
        ax.set_title(f"target: {kind}")
        ax.set_xlabel("d")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("‖T̂ − T‖ / ‖T − W0‖")
    axes[-1].legend(fontsize=8)
    fig.suptitle("GOFT tree (d−1 angles) vs rotations: Procrustes = best rotation (full OFT)")
