"""The rubric on stored results with known outcomes: each verdict, the geometry modifier, overrides, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from atlas_fixtures import add_probe_job, comparison_records, put
from peftatlas.cli import main
from peftatlas.geometry.probe import ProbeRow
from peftatlas.grading import Evidence, bootstrap, gain_recovered, grade_all, mean_difference


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return put(tmp_path_factory.mktemp("rubric") / "results.sqlite", comparison_records())


@pytest.fixture(scope="module")
def grades(db):
    return {g.method: g for g in grade_all(Evidence.from_store(db)) if g.method}


def test_bootstrap_intervals():
    d = mean_difference([1.0, 1.1, 0.9], [0.0, 0.1, -0.1])
    assert d.estimate == pytest.approx(1.0) and 0.7 < d.low < 1.0 < d.high < 1.3 and d.excludes(0)
    same = mean_difference([0.5, 0.6, 0.4], [0.55, 0.45, 0.5])
    assert not same.excludes(0)
    r = gain_recovered([0.9], [1.0], [0.5])
    assert r.estimate == pytest.approx(0.8) and r.low == r.high == pytest.approx(0.8)
    assert bootstrap([[1.0, 2.0]], lambda a: a, seed=3) == bootstrap([[1.0, 2.0]], lambda a: a, seed=3)


def test_every_dimension_of_a_clear_winner_passes(grades):
    v = grades["vera"]
    status = {d: x.status for d, x in v.verdicts.items()}
    assert status == {"PE": "pass", "BL": "pass", "BF": "pass", "DE": "pass", "OOD": "pass", "WA": "literature"}
    assert v.measured_points == pytest.approx(1 + 1 + 1.5 + 1.5 + 2)  # WA not earned in the literature
    assert v.measured_dims == 5
    assert "CI above 0" in v.verdicts["BL"].derivation and "R = " in v.verdicts["PE"].derivation
    assert v.verdicts["DE"].numbers["sizes"] == [64, 256]
    assert any(line.startswith("BL: measured PASS") for line in v.disagreements)  # the literature said no


def test_lora_is_its_own_comparator_and_recovers_the_gain(grades):
    g = grades["lora"]
    assert g.verdicts["BL"].status == "n/a"
    pe = g.verdicts["PE"]
    assert pe.status == "pass" and pe.numbers["R"] == pytest.approx(0.975, abs=1e-6)
    assert pe.numbers["fraction_params"] == pytest.approx(0.005)
    ood = g.verdicts["OOD"]  # LoRA's retention 0.80 vs full fine-tuning's 0.85
    assert ood.status == "fail" and ood.numbers["comparator"] == "full fine-tuning"
    assert g.verdicts["DE"].status == "not measured"


def test_size_and_ties_are_judged_honestly(grades):
    assert grades["bitfit"].verdicts["PE"].status == "fail"
    assert "≥ 1% of the parameters" in grades["bitfit"].verdicts["PE"].derivation
    assert grades["bitfit"].verdicts["BF"].status == "inconclusive"  # equal to full fine-tuning
    assert grades["surm_circulant"].verdicts["BL"].status == "inconclusive"  # ties LoRA
    # fixed-size methods are compared with the LoRA arm closest in parameters
    assert grades["surm_circulant"].verdicts["BL"].numbers["lora_budget"] == "0.1%"


def test_analytic_override_caps_the_measured_grade(grades):
    g = grades["goft"]
    assert sum(v.points for v in g.verdicts.values()) >= 5.5  # it wins every measured comparison …
    assert g.measured_points == 1.0  # … but the stated claim is false
    assert any("capped at 1" in line for line in g.derivation)


def test_one_seed_is_never_enough_for_a_ci(tmp_path):
    db = put(tmp_path / "one.sqlite", comparison_records(seeds=(0,)))
    g = {x.method: x for x in grade_all(Evidence.from_store(db)) if x.method}["vera"]
    assert g.verdicts["BL"].status == "inconclusive" and "needs ≥ 2 seeds" in g.verdicts["BL"].derivation


def test_unmeasured_entries_say_so(grades, db):
    every = grade_all(Evidence.from_store(db))
    dora = next(g for g in every if g.entry.id == "dora")
    assert dora.measured_points is None
    assert all(v.status in ("not measured", "literature") for v in dora.verdicts.values())
    assert dora.literature_points == dora.entry.literature_points
    # sorted: measured grades first, descending
    measured = [g.measured_points for g in every if g.measured_points is not None]
    assert measured == sorted(measured, reverse=True) and every[0].method == "vera"


def test_geometry_predictions_move_the_grade(tmp_path):
    db = put(tmp_path / "geo.sqlite", comparison_records())
    mats = [f"encoder.layer.{i}.attention.self.query" for i in range(4)]
    single = []
    for i, m in enumerate(mats):
        single += [ProbeRow(m, "spectral", "energy_top8", 0.9, "gauss", 0.2, 0.01, 70.0 + i, 10, False,
                            {"shape": [64, 64]}),
                   ProbeRow(m, "fit", "circulant", 0.3, "perm", 0.05, 0.01, 25.0, 10),
                   ProbeRow(m, "fit", "toeplitz", 0.06, "perm", 0.05, 0.01, 1.0, 10),
                   ProbeRow(m, "magdir", "delta_magnitude", 0.1 * (i + 1)),
                   ProbeRow(m, "magdir", "delta_direction", 0.05 / (i + 1))]
    add_probe_job(db, "single", "full", single)
    add_probe_job(db, "pair", "full", [ProbeRow(m, "seed_rank", "k_star_left", 2.0, "analytic", 0.1,
                                                  detail={"d": 64}) for m in mats])
    lora_rows = []
    for i, m in enumerate(mats):
        lora_rows += [ProbeRow(m, "magdir", "delta_magnitude", 0.1 * (i + 1)),
                      ProbeRow(m, "magdir", "delta_direction", 0.02 * (i + 1) + 0.001 * (i % 2))]
    add_probe_job(db, "method", "lora", lora_rows)
    every = {g.entry.id: g for g in grade_all(Evidence.from_store(db))}
    lora = every["lora"]
    assert [v.status for v in lora.geometry] == ["supported", "supported"]  # energy z ≫ 3; k*/d = 2/64 ≤ 0.05
    assert lora.geometry_modifier == 0.5
    surm = every["surm"]
    assert [v.status for v in surm.geometry] == ["supported", "not significant", "not measured"]
    assert surm.geometry_modifier == 0.0
    dora = every["dora"]  # full FT: ΔM up while ΔD down (negative); LoRA: both up (positive)
    assert [v.status for v in dora.geometry] == ["supported", "supported"]
    assert dora.geometry[0].numbers["r"] < -0.5 < 0.5 < dora.geometry[1].numbers["r"]
    vera = every["vera"]
    assert vera.geometry[0].status == "not measured"


def test_grade_cli(db, capsys):
    assert main(["grade", "--store", str(db)]) == 0
    out = capsys.readouterr().out
    first = next(line for line in out.splitlines() if line.startswith("vera"))
    assert "6.5" not in first and "7" in first.split()[2]
    assert main(["grade", "--store", str(db), "--explain", "goft"]) == 0
    assert "capped at 1" in capsys.readouterr().out
    assert main(["grade", "--store", str(db), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {d["entry"] for d in data} >= {"vera", "lora", "goft", "dora"}
    assert np.isclose(next(d for d in data if d["method"] == "vera")["measured_points"], 7.0)
    assert main(["grade", "--store", str(db.parent / "missing.sqlite")]) == 2


def test_practical_threshold_guards_against_tiny_significant_effects(tmp_path):
    """z ≥ 3 alone is not support when a stated effect size (value/null ≥ 3 for PiSSA) is missed."""
    db = put(tmp_path / "ratio.sqlite", comparison_records(seeds=(0, 1)))
    small = [ProbeRow(f"m{i}", "align", "block_pp", 0.02, "spec", 0.015, 0.0005, 10.0, 10) for i in range(3)]
    big = [ProbeRow(f"m{i}", "align", "block_mm", 0.09, "spec", 0.015, 0.0005, 150.0, 10) for i in range(3)]
    add_probe_job(db, "single", "full", small + big)
    every = {g.entry.id: g for g in grade_all(Evidence.from_store(db))}
    pissa, milora = every["pissa"].geometry[0], every["milora"].geometry[0]
    assert pissa.status == "not significant" and "value/null = 1.33" in pissa.derivation
    assert milora.status == "supported" and milora.numbers["ratio"] == pytest.approx(6.0)
