"""Quick vs shipped: per method, does a fresh run reproduce the shipped catalog result within its interval?"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from scipy import stats as st
from scipy.special import expit

from atlas_fixtures import SEEDS, comparison_records, ood, put, record
from peftatlas.cli import main
from peftatlas.commands.atlas import reproduction
from peftatlas.evidence import shipped
from peftatlas.evidence.store import ResultsStore
from peftatlas.grading import ALPHA, Evidence, Scores
from peftatlas.grading import reproduce as rp


def _profile(recs: list, profile: str) -> list:
    return [dataclasses.replace(r, profile=profile, key=f"{r.key}-{profile}") for r in recs]


def _shipped_folder(tmp_path: Path) -> Path:
    """Catalog records: LoRA and full FT as in the fixture (they reproduce), VeRA 5 points lower (differs),
    GOFT absent (not reached yet), SURM trained for other steps."""
    recs = [r for r in comparison_records() if r.method not in ("vera", "goft")]
    recs += [record("vera", s, 0.90 + 0.002 * s, params=520, ood=ood(0.90, 0.9)) for s in SEEDS]
    recs = [dataclasses.replace(r, curve=[{"epoch": 1, "step": 20}]) if r.method == "surm_circulant" else r
            for r in recs]
    db = put(tmp_path / "catalog.sqlite", _profile(recs, "catalog"))
    with ResultsStore(db) as store:
        shipped.export(store, tmp_path / "catalog")
    return tmp_path / "catalog"


def test_each_method_reproduces_differs_or_has_no_shipped_result(tmp_path):
    fresh = Evidence.from_store(put(tmp_path / "quick.sqlite", _profile(comparison_records(), "quick")))
    with shipped.as_store(_shipped_folder(tmp_path)) as db:
        results = {(r.method, r.budget): r for r in rp.compare(fresh, Evidence.from_store(db))}
    assert results[("lora", "0.1%")].status == "reproduces"
    assert results[("full", None)].status == "reproduces"
    vera = results[("vera", "0.1%")]
    assert vera.status == "differs" and vera.test is not None and vera.test.low > 0
    assert results[("goft", "fixed")].status == "no shipped result"
    assert results[("surm_circulant", "fixed")].status == "other schedule"
    text = rp.table(list(results.values()))
    assert "vera @0.1%" in text and "differs: fresh − shipped = +" in text


def test_atlas_quick_compares_with_the_shipped_folder(tmp_path):
    folder = _shipped_folder(tmp_path)
    store = put(tmp_path / "q.sqlite", _profile(comparison_records(), "quick"))
    text = reproduction(store, str(folder), tmp_path)
    assert "lora @0.1%" in text and "reproduces" in text and str(folder) in text
    assert "no shipped result" in (tmp_path / "reproduction.md").read_text()


def test_without_shipped_results_the_message_says_where_to_get_them(tmp_path, monkeypatch):
    monkeypatch.delenv(rp.ENV, raising=False)
    monkeypatch.setattr(rp, "REPO_FOLDER", Path("no") / "such")
    assert rp.find_shipped() is None
    store = put(tmp_path / "q.sqlite", comparison_records())
    assert "pass --shipped FOLDER" in reproduction(store, None, tmp_path)
    monkeypatch.setenv(rp.ENV, str(tmp_path / "x"))
    assert rp.find_shipped() == tmp_path / "x" and rp.find_shipped("y") == Path("y")
    assert "not a shipped results folder" in reproduction(store, None, tmp_path)


def test_atlas_cli_runs_the_comparison_for_quick(tmp_path, monkeypatch, capsys):
    import peftatlas.evidence.arena as arena

    def fake_run_profile(profile, store_path, methods=None, progress=True, jobs=1):
        return put(Path(store_path), _profile(comparison_records(), "quick"))

    monkeypatch.setattr(arena, "run_profile", fake_run_profile)
    folder = _shipped_folder(tmp_path)
    assert main(["atlas", "--out", str(tmp_path / "a"), "--shipped", str(folder), "--draws", "0", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "reproduction of the shipped catalog results" in out and "differs" in out


# --- calibration: identical distributions must read "differs" at most at the nominal 5% -----------------
N_SIM, N_ITEMS, N_SEEDS = 1000, 1000, 5


def _two_runs(rng: np.random.Generator, sd_arm_item: float, shared: bool) -> tuple[np.ndarray, np.ndarray]:
    """Two sets of 5 seeds of one method on one test set (logit = μ + b_i + a_i + s): item difficulty b
    shared; the method's own item effects a shared (same code) or drawn anew (population-equal)."""
    b = rng.standard_normal((N_SIM, 1, N_ITEMS)) * 1.5
    a1 = rng.standard_normal((N_SIM, 1, N_ITEMS)) * sd_arm_item
    a2 = a1 if shared else rng.standard_normal((N_SIM, 1, N_ITEMS)) * sd_arm_item
    runs = []
    for a in (a1, a2):
        s = rng.standard_normal((N_SIM, N_SEEDS, 1)) * 0.05
        runs.append(rng.random((N_SIM, N_SEEDS, N_ITEMS)) < expit(1.4 + b + a + s))
    return runs[0], runs[1]


def test_reproduction_interval_is_calibrated():
    """1,000 null pairs per scenario; false "differs" ≤ the 99th percentile of Binomial(1000, 2α)."""
    rng = np.random.default_rng(20261203)
    bound = int(st.binom.ppf(0.99, N_SIM, 2 * ALPHA))
    for sd, shared in ((0.6, True), (0.6, False)):
        x, y = _two_runs(rng, sd, shared)
        differs = sum(rp.decide(Scores.from_items(x[k]), Scores.from_items(y[k]))[0] == "differs"
                      for k in range(N_SIM))
        assert differs <= bound, (sd, shared, differs, bound)
