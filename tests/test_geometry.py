"""Geometry probes on matrices with known answers: planted structure is found, its null is not."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from peftatlas.geometry import (
    GeometryError,
    effective_rank,
    fit_circulant,
    fit_col_gains,
    fit_fourier,
    fit_kronecker,
    fit_low_rank,
    fit_row_gains,
    fit_toeplitz,
    fit_vera,
    hyperspherical_energy,
    magnitude_direction,
    magnitude_direction_correlation,
    permuted,
    probe_matrix,
    probe_pair,
    rank_at_energy,
    rotation_summary,
    seed_consistent_rank,
    singular_values,
    spectrum_matched,
    stable_rank,
    w0_alignment,
)
from peftatlas.geometry.fits import budget_fitters, kron_rearrange, kronecker_shape, vera_bases
from peftatlas.geometry.nulls import null_test

D = 32


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def low_rank(m: int, n: int, k: int, r: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    return scale * r.standard_normal((m, k)) @ r.standard_normal((k, n)) / math.sqrt(k)


def row(rows, probe, stat, null=None):
    hits = [x for x in rows if x.probe == probe and x.stat == stat and x.null == null]
    assert len(hits) == 1, (probe, stat, null, hits)
    return hits[0]


def expm_skew(n: int, eps: float, r: np.random.Generator) -> np.ndarray:
    s = r.standard_normal((n, n)) * eps
    return torch.linalg.matrix_exp(torch.from_numpy(s - s.T)).numpy()


# --- spectra ----------------------------------------------------------------------------------------
def test_spectral_statistics_on_known_spectra():
    s = np.array([3.0, 3.0, 3.0, 0.0])
    assert stable_rank(s) == pytest.approx(3.0)
    assert effective_rank(s) == pytest.approx(3.0)
    assert rank_at_energy(s, 0.9) == 3
    assert rank_at_energy(np.array([10.0, 1.0, 1.0]), 0.9) == 1
    assert stable_rank(singular_values(np.eye(7))) == pytest.approx(7.0)
    with pytest.raises(GeometryError, match="energy fraction"):
        rank_at_energy(s, 1.5)


def test_planted_low_rank_beats_gaussian_null():
    r = rng(1)
    delta = low_rank(D, D, 3, r) + 0.02 * r.standard_normal((D, D))
    rows = probe_matrix(delta, draws=8, groups=("spectral",), seed=2)
    top4 = row(rows, "spectral", "energy_top4", "gauss")
    assert top4.value > 0.95 and top4.z > 3
    assert row(rows, "spectral", "r90", "gauss").value <= 3
    noise = r.standard_normal((D, D))
    top4n = row(probe_matrix(noise, draws=8, groups=("spectral",), seed=3), "spectral", "energy_top4", "gauss")
    assert abs(top4n.z) < 3


def test_seed_consistent_rank_counts_only_shared_directions():
    r = rng(2)
    d = 64
    u = np.linalg.qr(r.standard_normal((d, 4)))[0]
    v = np.linalg.qr(r.standard_normal((d, 4)))[0]
    signal = u @ np.diag([12.0, 10.0, 9.0, 8.0]) @ v.T
    a = signal + 0.3 * r.standard_normal((d, d))
    b = signal + 0.3 * r.standard_normal((d, d))
    res = seed_consistent_rank(a, b)
    assert res.k_star == 4
    assert res.overlap[3] > 0.8 and res.overlap_null[3] == pytest.approx(4 / d)
    # r90 of one noisy seed counts the noise too: far above the shared rank
    assert rank_at_energy(singular_values(a), 0.9) > 10
    assert seed_consistent_rank(r.standard_normal((d, d)), r.standard_normal((d, d))).k_star <= 1
    rows = probe_pair(a, b, name="m")
    assert row(rows, "seed_rank", "k_star_left", "analytic").value == 4
    assert row(rows, "seed_rank", "k_star_right", "analytic").value == 4


# --- structured fits ---------------------------------------------------------------------------------
def planted(family: str, r: np.random.Generator) -> np.ndarray:
    i, j = np.indices((D, D))
    if family == "circulant":
        return r.standard_normal(D)[(i - j) % D]
    if family == "toeplitz":
        return r.standard_normal(2 * D - 1)[i - j + D - 1]
    if family == "kronecker":
        m1, n1 = kronecker_shape((D, D))
        return np.kron(r.standard_normal((m1, n1)), r.standard_normal((D // m1, D // n1)))
    if family == "fourier":
        f = np.zeros((D, D), complex)
        for _ in range(6):
            a, b = r.integers(0, D, 2)
            c = complex(*r.standard_normal(2))
            f[a, b] += c
            f[-a % D, -b % D] += c.conjugate()
        return np.real(np.fft.ifft2(f))
    if family == "vera":
        a, b = vera_bases((D, D), D, seed=0)
        return (r.standard_normal(D)[:, None] * b * r.standard_normal(D)[None, :]) @ a
    raise AssertionError(family)


@pytest.mark.parametrize("family", ["circulant", "toeplitz", "kronecker", "fourier", "vera"])
def test_planted_structure_is_found_and_its_permutation_is_not(family):
    r = rng(3)
    target = planted(family, r)
    fitters = budget_fitters(target.shape)
    fit = fitters[family](target)
    assert fit.params <= 2 * D
    assert fit.captured > 0.999, fit
    stat = lambda x: fitters[family](x).captured  # noqa: E731
    null = "spec" if family == "vera" else "perm"
    test = null_test(stat, target, null, draws=10, rng=rng(4))
    assert test.z > 3 and test.null_mean < 0.6
    # The same structure with rows and columns scrambled is no longer structure: no signal vs the null.
    scrambled = permuted(target, rng(5))
    assert fitters[family](scrambled).captured < 0.6
    assert abs(null_test(stat, scrambled, "perm", draws=10, rng=rng(6)).z) < 3


def test_low_rank_fit_is_invariant_under_perm_and_spec_nulls():
    r = rng(7)
    rows = probe_matrix(low_rank(D, D, 2, r), draws=4, groups=("fit",), seed=1)
    for null in ("perm", "spec"):
        lr = row(rows, "fit", "low_rank", null)
        assert lr.invariant and lr.z is None
        assert lr.value == pytest.approx(fit_low_rank(low_rank(D, D, 2, rng(7)), 1).captured)


def test_fits_are_exact_projections():
    r = rng(8)
    x = r.standard_normal((12, 18))
    # circulant / Toeplitz: residual orthogonal to the family (projection property)
    for fit, basis in ((fit_circulant, "circ"), (fit_toeplitz, "toep")):
        f = fit(x)
        resid = x - f.approx
        assert abs(np.sum(resid * f.approx)) < 1e-9, basis
    # low rank: Eckart–Young, both code paths agree
    assert fit_low_rank(x, 3).residual == pytest.approx(fit_low_rank(x, 3, with_approx=False).residual)
    # Kronecker: two planted terms recovered with rank 2; the rearrangement is a bijection
    a1, b1, a2, b2 = (r.standard_normal(s) for s in ((3, 6), (4, 3), (3, 6), (4, 3)))
    k2 = np.kron(a1, b1) + np.kron(a2, b2)
    assert fit_kronecker(k2, 2, (3, 6)).residual < 1e-10
    assert np.linalg.matrix_rank(kron_rearrange(k2, 3, 6)) == 2
    # Fourier: Parseval — captured energy equals the kept coefficients' share, budget respected
    f = fit_fourier(x, 40)
    assert f.params <= 40 and np.allclose(np.imag(f.approx), 0)
    spec = np.abs(np.fft.fft2(x)) ** 2
    assert f.captured <= np.sort(spec.ravel())[::-1][:40].sum() / spec.sum() + 1e-9
    # VeRA ALS never beats the unconstrained rank-r optimum and is exact on its own family
    assert fit_vera(x, 6, iters=30).residual >= fit_low_rank(x, 6).residual - 1e-9


def test_gain_fits_find_planted_channel_gains():
    r = rng(9)
    w0 = r.standard_normal((D, 24))
    s = r.standard_normal(D)
    assert fit_row_gains(s[:, None] * w0, w0).captured == pytest.approx(1.0)
    assert fit_col_gains(w0 * r.standard_normal(24)[None, :], w0).captured == pytest.approx(1.0)
    rows = probe_matrix(s[:, None] * w0, w0, draws=6, groups=("fit",), seed=3)
    assert row(rows, "fit", "row_gains", "perm").z > 3
    assert row(rows, "fit", "row_gains", "spec").z > 3


# --- W0 alignment, rotation, magnitude/direction ----------------------------------------------------------
def test_alignment_separates_principal_from_minor_updates():
    r = rng(10)
    w0 = r.standard_normal((D, D))
    u, _, vt = np.linalg.svd(w0)
    k = 4
    principal = u[:, :k] @ r.standard_normal((k, k)) @ vt[:k]
    minor = u[:, -k:] @ r.standard_normal((k, k)) @ vt[-k:]
    a = w0_alignment(principal, w0, k)
    b = w0_alignment(minor, w0, k)
    assert a["block_pp"] == pytest.approx(1.0) and a["block_mm"] < 1e-12
    assert b["block_mm"] == pytest.approx(1.0) and b["block_pp"] < 1e-12
    assert a["angle_principal"] == pytest.approx(1.0) and b["angle_minor"] == pytest.approx(1.0)
    rows = probe_matrix(principal, w0, draws=8, groups=("align",), k=k, seed=1)
    assert row(rows, "align", "block_pp", "spec").z > 3
    assert row(rows, "align", "block_pp", "spec").null_mean < 0.2


def test_planted_rotation_is_found_and_gaussian_update_is_not():
    r = rng(11)
    w0 = r.standard_normal((48, D))  # more neurons than inputs: W0 has full column rank
    q = expm_skew(D, 0.005, r)  # small: the rotation fraction is a first-order statistic
    delta = w0 @ q - w0
    rot = rotation_summary(delta, w0)
    assert rot["procrustes_capture"] == pytest.approx(1.0, abs=1e-9)
    assert rot["rotation_fraction"] > 0.99
    assert rot["gram_change"] < 1e-12 and abs(rot["he_change"]) < 1e-12
    rows = probe_matrix(delta, w0, draws=8, groups=("rotation",), seed=2)
    assert row(rows, "rotation", "procrustes_capture", "spec").z > 3
    gauss = r.standard_normal(delta.shape) * np.linalg.norm(delta) / math.sqrt(delta.size)
    g = rotation_summary(gauss, w0)
    assert g["procrustes_capture"] < 0.8 and 0.3 < g["rotation_fraction"] < 0.7
    rows = probe_matrix(gauss, w0, draws=8, groups=("rotation",), seed=3)
    assert abs(row(rows, "rotation", "procrustes_capture", "spec").z) < 3


def test_hyperspherical_energy_is_rotation_invariant():
    r = rng(12)
    w = r.standard_normal((10, 6))
    q = expm_skew(6, 0.5, r)
    assert hyperspherical_energy(w @ q) == pytest.approx(hyperspherical_energy(w))
    assert hyperspherical_energy(w * 3.0) == pytest.approx(hyperspherical_energy(w))
    assert hyperspherical_energy(w + r.standard_normal(w.shape)) != pytest.approx(hyperspherical_energy(w))


def test_magnitude_direction_decomposition():
    r = rng(13)
    w0 = r.standard_normal((16, 8))
    dm, dd = magnitude_direction(w0, w0 * 1.5)
    assert dd == pytest.approx(0.0, abs=1e-12) and dm == pytest.approx(0.5 * np.linalg.norm(w0, axis=1).mean())
    dm, dd = magnitude_direction(w0, w0 @ expm_skew(8, 0.3, r))
    assert dm == pytest.approx(0.0, abs=1e-12) and dd > 0.01
    x = np.linspace(0, 1, 12)
    neg = magnitude_direction_correlation(list(zip(x, 1 - x + 0.01 * np.sin(7 * x))), n_boot=300)
    assert neg["r"] < -0.9 and neg["ci_high"] < 0
    with pytest.raises(GeometryError, match="at least 3"):
        magnitude_direction_correlation([(0.1, 0.2)])


# --- nulls and errors ---------------------------------------------------------------------------------
def test_nulls_keep_what_they_promise():
    r = rng(14)
    x = low_rank(20, 30, 3, r) + 0.1 * r.standard_normal((20, 30))
    p = permuted(x, rng(1))
    assert np.allclose(np.sort(p.ravel()), np.sort(x.ravel()))
    assert np.allclose(singular_values(p), singular_values(x))
    s = spectrum_matched(x, rng(2))
    assert np.allclose(singular_values(s), singular_values(x))
    assert not np.allclose(np.abs(s), np.abs(x))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(GeometryError, match="2-D"):
        probe_matrix(np.zeros(5))
    with pytest.raises(GeometryError, match="NaN"):
        probe_matrix(np.full((4, 4), np.nan))
    with pytest.raises(GeometryError, match="shapes differ"):
        probe_matrix(np.ones((4, 4)), np.ones((4, 5)))
    with pytest.raises(GeometryError, match="unknown null"):
        probe_matrix(np.ones((4, 4)), nulls=("shuffle",))
    with pytest.raises(GeometryError, match="draws"):
        probe_matrix(np.ones((4, 4)), draws=1)
    with pytest.raises(GeometryError, match="factor shape"):
        fit_kronecker(np.ones((6, 6)), 1, (4, 4))


def test_probe_accepts_torch_tensors_of_any_float_dtype():
    r = rng(15)
    x = low_rank(D, D, 2, r)
    a = probe_matrix(torch.from_numpy(x).to(torch.bfloat16), draws=0, groups=("spectral",))
    b = probe_matrix(x.astype(np.float32), draws=0, groups=("spectral",))
    assert row(a, "spectral", "r90").value == row(b, "spectral", "r90").value


# --- the store runner ---------------------------------------------------------------------------------
def test_probe_runner_reads_artifacts_stores_rows_and_resumes(tmp_path):
    import sqlite3

    from atlas_fixtures import base_loader, probe_records, put
    from peftatlas.geometry.runner import ProbeConfig, probe_store
    from peftatlas.geometry.store import ProbeStore

    db = put(tmp_path / "results.sqlite", probe_records(tmp_path))
    cfg = ProbeConfig(draws=4, max_matrices=4, methods=False)
    logs: list[str] = []
    jobs = probe_store(db, cfg, base_loader=base_loader, log=logs.append)
    assert sorted(j.kind for j in jobs) == ["pair", "single"]
    assert all(j.status == "done" and j.n_matrices == 4 for j in jobs), [(j.kind, j.error) for j in jobs]
    with ProbeStore(db) as ps:
        single = ps.rows(next(j for j in jobs if j.kind == "single").job_key)
        pair = ps.rows(next(j for j in jobs if j.kind == "pair").job_key)
    # planted: every ΔW = shared rank-2 signal + small seed-specific noise
    top4 = [r for r in single if r.stat == "energy_top4" and r.null == "gauss"]
    assert len(top4) == 4 and all(r.z > 3 for r in top4)
    kstar = [r.value for r in pair if r.stat == "k_star_left"]
    assert kstar and all(k == 2 for k in kstar)
    assert {r.probe for r in single} >= {"spectral", "fit", "align", "rotation", "magdir"}
    # a second run does nothing new
    logs.clear()
    probe_store(db, cfg, base_loader=base_loader, log=logs.append)
    assert sum("already done" in line for line in logs) == 2
    # an interrupted job resumes at the matrices without rows
    key = next(j for j in jobs if j.kind == "single").job_key
    victim = single[0].matrix
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE probe_jobs SET status='running' WHERE job_key=?", (key,))
        conn.execute("DELETE FROM probe_rows WHERE job_key=? AND matrix=?", (key, victim))
    logs.clear()
    probe_store(db, cfg, base_loader=base_loader, log=logs.append)
    probed = [line for line in logs if "rows," in line]
    assert len(probed) == 1 and victim in probed[0]
    with ProbeStore(db) as ps:
        assert ps.job(key).status == "done" and len(ps.rows(key)) == len(single)


def test_probe_runner_refuses_a_missing_database(tmp_path):
    from peftatlas.geometry.runner import probe_store

    with pytest.raises(FileNotFoundError, match="does not exist"):
        probe_store(tmp_path / "nope.sqlite")


def test_probe_cli_uses_the_arena_model_loader(tmp_path, capsys):
    from atlas_fixtures import probe_records, put
    from peftatlas.cli import main

    db = put(tmp_path / "results.sqlite", probe_records(tmp_path))
    assert main(["probe", "--store", str(db), "--draws", "2", "--max-matrices", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "2 job(s), 4 matrices, 0 failed" in out


def test_method_job_reads_a_mergeable_adapters_own_update(tmp_path):
    """ΔW of a saved LoRA (6-label head) is recovered through merged_params: rank ≤ r, magnitudes stored."""
    import peftatlas as pa
    from atlas_fixtures import base_loader, base_model, probe_records, put, record
    from peftatlas.geometry.runner import ProbeConfig, probe_store
    from peftatlas.geometry.store import ProbeStore

    model = pa.attach(base_model(num_labels=6), "lora", r=2, targets=["query", "value"])
    g = torch.Generator().manual_seed(0)
    for layer in model.adapted_layers().values():
        layer.adapters["default"].perturb_(g, 0.5)
    pa.save_adapter(model, tmp_path / "artifacts" / "lora")
    recs = [*probe_records(tmp_path, seeds=(0,)), record("lora", 0, 0.9, artifact="artifacts/lora")]
    db = put(tmp_path / "results.sqlite", recs)
    jobs = probe_store(db, ProbeConfig(draws=2, max_matrices=2), base_loader=base_loader, log=None)
    job = next(j for j in jobs if j.kind == "method")
    assert job.status == "done" and job.method == "lora" and job.n_matrices == 2, job.error
    with ProbeStore(db) as ps:
        rows = ps.rows(job.job_key)
    r90 = [r.value for r in rows if r.stat == "r90"]
    assert len(r90) == 2 and all(v <= 2 for v in r90)
    assert {r.stat for r in rows if r.probe == "magdir"} == {"delta_magnitude", "delta_direction"}
    assert all(r.null is None for r in rows)


def test_matrix_selection_spreads_over_kinds_and_depth():
    from peftatlas.geometry.runner import select_matrices

    kinds = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
             "intermediate.dense", "output.dense"]
    names = [f"encoder.encoder.layer.{i}.{k}" for i in range(6) for k in kinds]
    chosen = select_matrices(names, 12)
    assert len(chosen) == 12
    for k in kinds:
        layers = sorted(int(n.split(".")[3]) for n in chosen if n.endswith(k) and n.split(".", 4)[4] == k)
        assert layers == [0, 5], (k, layers)
    assert select_matrices(names, None) == sorted(names, key=lambda n: (int(n.split(".")[3]), n))


def test_probe_workers_store_the_same_rows_as_one_process(tmp_path):
    """`jobs=2` deals a job's matrices to two spawned processes; the stored rows equal a sequential probe's."""
    import dataclasses
    import shutil

    from peftatlas.evidence.arena import run_profile
    from peftatlas.evidence.profiles import PROFILES
    from peftatlas.geometry.runner import ProbeConfig, probe_store
    from peftatlas.geometry.store import ProbeStore

    profile = dataclasses.replace(PROFILES["smoke"], name="smoke-probe-jobs", methods=("full",), lr_factors=(1.0,),
                                  seeds=(0,), learning_curve_sizes=())
    one = tmp_path / "one" / "results.sqlite"
    run_profile(profile, one, progress=False)
    shutil.copytree(one.parent, tmp_path / "two")
    two = tmp_path / "two" / "results.sqlite"
    rows = {}
    for db, jobs in ((one, 1), (two, 2)):
        done = probe_store(db, ProbeConfig(draws=2, max_matrices=4, methods=False, jobs=jobs), log=None)
        assert [(j.kind, j.status, j.n_matrices) for j in done] == [("single", "done", 4)]
        with ProbeStore(db) as ps:
            rows[jobs] = sorted((r.matrix, r.probe, r.stat, r.null, r.value, r.z) for r in ps.rows(done[0].job_key))
    assert rows[1] and rows[1] == rows[2]


# --- fast null draws vs the straightforward reference -----------------------------------------------
def _planted(m: int, n: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((m, n)) / math.sqrt(n)
    d = 1e-3 * (rng.standard_normal((m, 3)) @ rng.standard_normal((3, n)) + 0.3 * rng.standard_normal((m, n)))
    return d, w


@pytest.mark.parametrize("shape", [(40, 24), (24, 40), (32, 32)])
def test_fast_probe_matches_reference(shape):
    """``fast=True`` (factored draws, eigenvalue-only Kronecker, float32 VeRA products, O(r0·m·n) rotation
    fraction, partial-sort Fourier) gives the reference's statistics on the same draws: observed values
    and null moments agree to 1e-9 absolute, VeRA's (float32 products) to 1e-6; z to 1e-4 relative."""
    d, w = _planted(*shape)
    fast = probe_matrix(d, w, draws=5, seed=3, k=4)
    ref = probe_matrix(d, w, draws=5, seed=3, k=4, fast=False)
    assert [(r.probe, r.stat, r.null) for r in fast] == [(r.probe, r.stat, r.null) for r in ref]
    for a, b in zip(fast, ref):
        tol = 1e-6 if a.stat == "vera" else 1e-9
        assert a.value == pytest.approx(b.value, abs=1e-12), (a.stat, a.null)
        assert a.invariant == b.invariant, (a.stat, a.null)
        for x, y in ((a.null_mean, b.null_mean), (a.null_sd, b.null_sd)):
            assert (x is None) == (y is None) and (x is None or x == pytest.approx(y, abs=tol)), (a.stat, a.null)
        if a.z is not None and b.z is not None and b.null_sd and b.null_sd > 1e-4:
            assert a.z == pytest.approx(b.z, rel=1e-4, abs=1e-4), (a.stat, a.null)


def test_factored_draws_carry_their_svd():
    from peftatlas.geometry._linalg import known_svd, svdvals, top_svd
    from peftatlas.geometry.nulls import NullSampler

    d, _ = _planted(30, 20)
    for kind in ("perm", "spec"):
        x = NullSampler(d, kind, np.random.default_rng(1)).draw()
        assert known_svd(x) is not None and known_svd(x.T) is None and known_svd(x @ np.eye(20)) is None
        plain = np.asarray(x)
        assert known_svd(plain) is None
        np.testing.assert_allclose(svdvals(x), svdvals(plain), atol=1e-12)
        (u, s, vt), (u0, s0, vt0) = top_svd(x, 3), top_svd(plain, 3)
        np.testing.assert_allclose(s, s0, rtol=1e-9)
        np.testing.assert_allclose(np.abs(u.T @ u0), np.eye(3), atol=1e-7)
        np.testing.assert_allclose(np.abs(vt @ vt0.T), np.eye(3), atol=1e-7)
    # the permutation null is the same matrix with or without factors (same random stream)
    a = NullSampler(d, "perm", np.random.default_rng(2)).draw()
    b = NullSampler(d, "perm", np.random.default_rng(2), factors=False).draw()
    np.testing.assert_array_equal(np.asarray(a), b)


def test_budget_captured_matches_fitters():
    from peftatlas.geometry.fits import budget_captured

    d, w = _planted(48, 32)
    fitters, quick = budget_fitters(d.shape, None, w), budget_captured(d.shape, None, w)
    assert set(fitters) == set(quick)
    for fam, f in fitters.items():
        assert quick[fam](d) == pytest.approx(f(d).captured, abs=1e-6 if fam == "vera" else 1e-12), fam
