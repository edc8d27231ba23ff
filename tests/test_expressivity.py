"""Expressivity experiments at reduced size: the fitters are right (positive controls), the
qualitative findings hold, and the CLI writes CSV/JSON/PNG."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from peftatlas.cli import main
from peftatlas.expressivity import run_experiment
from peftatlas.expressivity.goft import make_target_rotation, tree_family_dim
from peftatlas.expressivity.vera import lora_optimal_error, vera_fit
from peftatlas.methods.vera import VeRAProjections

F64 = torch.float64


def _mean(res, **where) -> float:
    hits = [r for r in res.summary if all(r[k] == v for k, v in where.items())]
    assert len(hits) == 1, where
    return next(v for k, v in hits[0].items() if k.endswith("_mean"))


def test_lora_optimum_is_the_svd_tail():
    T = np.random.default_rng(0).standard_normal((10, 10))
    s = np.linalg.svd(T, compute_uv=False)
    assert lora_optimal_error(torch.tensor(T), 3) == pytest.approx((s[3:] ** 2).sum() / (s**2).sum(), rel=1e-12)


def test_vera_als_recovers_an_exact_vera_target():
    proj = VeRAProjections(6, 10, 10, seed=3)
    A, B = proj.A.to(F64), proj.B.to(F64)
    g = torch.Generator().manual_seed(1)
    b, d = torch.randn(10, dtype=F64, generator=g), torch.randn(6, dtype=F64, generator=g)
    T = b[:, None] * ((B * d) @ A)
    err, _, _ = vera_fit(T, A, B, iters=300, restarts=2, generator=g)
    assert err < 1e-10


def test_vera_experiment_error_falls_with_parameters():
    res = run_experiment("vera", quick=True)
    v = [_mean(res, method="vera", rank=r) for r in (1, 10, 90)]
    assert v[0] > v[1] > v[2] and v[2] < 0.1, v  # r = 90 (100 params) nearly spans R^{10×10}
    assert _mean(res, method="lora", rank=1) == pytest.approx(0.69, abs=0.1)


def test_goft_tree_is_d_minus_1_dimensional_and_misses_generic_rotations():
    g = torch.Generator().manual_seed(0)
    assert tree_family_dim(8, g) == 7 and tree_family_dim(6, g) == 5
    R = make_target_rotation("haar", 5, g)
    torch.testing.assert_close(R @ R.T, torch.eye(5, dtype=F64))
    assert torch.linalg.det(R).item() == pytest.approx(1.0)
    res = run_experiment("goft", quick=True)
    for d in (4, 8):
        assert _mean(res, d=d, target="haar", method="procrustes") < 1e-8  # the closed-form optimum is exact
        assert _mean(res, d=d, target="tree", method="qgoft") < 1e-5  # the tree wiring holds the target
    assert _mean(res, d=8, target="haar", method="goft") > 0.3  # 7 angles cannot reach SO(8)
    assert res.settings["family_dim"]["8"] == {"tree": 7, "SO(d)": 28}


def test_surm_advantage_on_psd_is_the_diagonal_and_vanishes_under_permutation():
    res = run_experiment("surm", quick=True, d=32, trials=3)
    psd_circ = _mean(res, target="psd", method="circulant")
    assert abs(psd_circ - _mean(res, target="psd", method="diagonal")) < 0.05
    assert psd_circ < _mean(res, target="psd", method="rank1") - 0.1  # the paper's Fig. 1 effect
    assert _mean(res, target="psd_permuted", method="circulant") > psd_circ + 0.2  # gone when permuted
    assert _mean(res, target="psd_permuted", method="rank1") == pytest.approx(
        _mean(res, target="psd", method="rank1"), abs=0.05)  # low rank does not care about order
    assert _mean(res, target="lowrank_noise", method="rank2") < _mean(res, target="lowrank_noise", method="toeplitz")


def test_cli_writes_tables_and_plot(tmp_path, capsys):
    assert main(["expressivity", "surm", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "surm" in out and "circulant" in out
    rows = list(csv.DictReader((tmp_path / "surm_approximation.csv").read_text().splitlines()))
    assert len(rows) == 5 * 2 * 7  # targets × trials × approximations
    data = json.loads((tmp_path / "surm_approximation.json").read_text())
    assert data["settings"]["d"] == 16 and len(data["summary"]) == 5 * 7
    assert (tmp_path / "surm_approximation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_experiment_is_rejected():
    with pytest.raises(ValueError, match="unknown expressivity experiment 'lora'"):
        run_experiment("lora")
    with pytest.raises(SystemExit):
        main(["expressivity", "lora"])
