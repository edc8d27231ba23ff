"""The rubric on stored results with known outcomes: each verdict, the geometry modifier, overrides, CLI."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest

from atlas_fixtures import SEEDS, add_probe_job, comparison_records, ood, put, record
from peftatlas.cli import main
from peftatlas.evidence.store import encode_items
from peftatlas.geometry.probe import ProbeRow
from peftatlas.grading import Evidence, Scores, contrast_test, difference_test, gain_recovered, grade_all, holm
from peftatlas.grading.evidence import item_correctness
from peftatlas.grading.rubric import geometry_modifier, judge_prediction


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return put(tmp_path_factory.mktemp("rubric") / "results.sqlite", comparison_records())


@pytest.fixture(scope="module")
def grades(db):
    return {g.method: g for g in grade_all(Evidence.from_store(db)) if g.method}


def test_contrast_test_pairs_items_and_needs_two_seeds():
    rng = np.random.default_rng(0)
    base = rng.random(300) < 0.8
    a = Scores.from_items(np.stack([base] * 5).astype(float))
    worse = base.copy()
    worse[:30] = False  # the same items, 30 of them now wrong
    b = Scores.from_items(np.stack([worse] * 5).astype(float))
    t = difference_test(a, b)
    assert t.paired and t.estimate == pytest.approx(np.mean(base) - np.mean(worse)) and t.low > 0
    assert not difference_test(b, a).p < 0.5
    seeds_only = difference_test(Scores.from_seeds([0.8, 0.81, 0.79]), Scores.from_seeds([0.7, 0.71, 0.69]))
    assert not seeds_only.paired and seeds_only.n_items is None
    with pytest.raises(ValueError):
        contrast_test([Scores.from_seeds([0.8])], [1.0])
    r = gain_recovered(a, a, b, 0.95)
    assert r.estimate == pytest.approx(1.0) and r.low <= 1.0 <= r.high


def test_holm_adjusts_in_step_down_order():
    adj = holm({"a": 0.01, "b": 0.04, "c": 0.03})
    assert adj == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})


def test_every_dimension_of_a_clear_winner_passes(grades):
    v = grades["vera"]
    status = {d: x.status for d, x in v.verdicts.items()}
    assert status == {"PE": "pass", "BL": "pass", "BF": "pass", "DE": "pass", "OOD": "pass", "WA": "literature"}
    assert v.measured_points == pytest.approx(1 + 1 + 1.5 + 1.5 + 2)  # WA is never inside the grade
    assert v.measured_dims == 5 and v.verdicts["WA"].points == 0
    assert "CI above" in v.verdicts["BL"].derivation and "R = " in v.verdicts["PE"].derivation
    assert "Holm" in v.verdicts["BL"].derivation and v.verdicts["BL"].p_holm >= v.verdicts["BL"].p
    assert v.verdicts["DE"].numbers["sizes"] == [64, 256, 1024]
    assert set(v.verdicts["DE"].numbers["curve"]) == {"full fine-tuning", "matched LoRA"}
    assert v.verdicts["OOD"].numbers["comparator"] == "matched LoRA"
    assert any(line.startswith("BL: measured PASS") for line in v.disagreements)  # the literature said no


def test_grade_carries_its_setting_and_dimension_count(grades):
    v = grades["vera"]
    where = v.measured_in
    assert (where.model, where.task, where.budget, where.steps) == ("tiny-bert", "mr", "0.1%", 10)
    assert where.label == "tiny-bert · mr · budget 0.1% · 10 steps"
    d = v.as_dict()
    assert d["measured_in"]["label"] == where.label and d["measured_dimensions"] == 5 and d["measured_max"] == 7


def test_lora_is_its_own_comparator_and_ood_is_absolute_accuracy(grades):
    g = grades["lora"]
    assert g.verdicts["BL"].status == "n/a"
    pe = g.verdicts["PE"]  # R ≈ 0.97 but its interval reaches below 0.95: not shown
    assert pe.status == "inconclusive" and pe.numbers["R_low"] < 0.95 < pe.numbers["R"]
    assert pe.numbers["fraction_params"] == pytest.approx(0.005)
    ood = g.verdicts["OOD"]  # LoRA's OOD accuracy ≈ 0.716 vs full fine-tuning's ≈ 0.765
    assert ood.status == "fail" and ood.numbers["comparator"] == "full fine-tuning"
    assert ood.numbers["estimate"] < 0 and "effective_robustness" in ood.numbers
    assert g.verdicts["DE"].status == "fail" and set(g.verdicts["DE"].numbers["curve"]) == {"full fine-tuning"}


def test_bl_needs_lora_with_the_same_size_and_targets(grades):
    goft = grades["goft"]  # 200 parameters: no LoRA arm within ±10%, so the smallest larger one on its targets
    assert goft.verdicts["BL"].status == "pass" and "×, targets" in goft.verdicts["BL"].derivation
    assert goft.verdicts["OOD"].status == "not measured"  # OOD needs the equal-budget arm
    surm = grades["surm_circulant"]  # 900 parameters: compared with the 880-parameter LoRA arm, a tie
    assert surm.verdicts["BL"].status == "inconclusive" and "880 params" in surm.verdicts["BL"].derivation


def test_other_targets_are_not_a_match(tmp_path):
    recs = [r for r in comparison_records() if r.method != "vera"]
    recs += [record("vera", s, 0.95, params=500, targets=["query", "key", "value"]) for s in SEEDS]
    g = {x.method: x for x in grade_all(Evidence.from_store(put(tmp_path / "t.sqlite", recs))) if x.method}
    assert g["vera"].verdicts["BL"].status == "not measured"


def test_size_and_non_inferiority_are_judged_honestly(grades):
    assert grades["bitfit"].verdicts["PE"].status == "fail"
    assert "≥ 1% of the parameters" in grades["bitfit"].verdicts["PE"].derivation
    bf = grades["bitfit"].verdicts["BF"]  # equal to full fine-tuning: within the 1-point margin
    assert bf.status == "pass" and "non-inferiority margin 1 pt" in bf.derivation


def test_analytic_override_caps_the_measured_grade_and_keeps_the_sum(grades):
    g = grades["goft"]
    # PE and BF pass; BL passes against the smallest larger LoRA on GOFT's targets (no rank within ±10 %) …
    assert g.uncapped_points == pytest.approx(1 + 1 + 1.5)
    assert "stricter comparator" in g.verdicts["BL"].derivation
    assert g.measured_points == 1.0  # … but the stated claim is false
    assert any("capped at 1" in line for line in g.derivation) and g.as_dict()["uncapped_points"] == 3.5


def test_fewer_than_five_seeds_is_not_measured(tmp_path):
    db = put(tmp_path / "three.sqlite", comparison_records(seeds=(0, 1, 2)))
    g = {x.method: x for x in grade_all(Evidence.from_store(db)) if x.method}["vera"]
    assert g.verdicts["BL"].status == "not measured" and "needs ≥ 5 seeds" in g.verdicts["BL"].derivation
    assert g.measured_points is None and g.outcome == "not measured"


def test_seed_accuracies_without_items_are_not_measured(tmp_path):
    recs = [dataclasses.replace(r, items={}) for r in comparison_records()]
    g = {x.method: x for x in grade_all(Evidence.from_store(put(tmp_path / "n.sqlite", recs))) if x.method}
    assert g["vera"].verdicts["BF"].status == "not measured"
    assert "per-item correctness" in g["vera"].verdicts["BF"].derivation


def test_item_results_decode_from_the_stored_forms():
    bits = [1, 0, 1, 1, 0, 0, 0, 1, 1]
    rec = SimpleNamespace(items={"test": [1, 0], "ood/b": encode_items(bits)})
    out = item_correctness(rec)
    assert out["test"].tolist() == [1, 0] and out["ood/b"].tolist() == bits


def test_matched_lora_arms_are_told_apart_and_found_by_their_record(tmp_path):
    """Two LoRA arms labelled "matched" (different ranks) stay separate arms; GOFT (200 parameters) finds the
    one whose record says it was added for GOFT within ±10%."""
    recs = comparison_records()
    for s in SEEDS:
        for r_, params, meth in ((1, 196, "goft"), (2, 392, "other")):
            rec = record("lora", s, 0.93, budget="matched", params=params, ood=ood(0.93, 0.9))
            recs.append(dataclasses.replace(rec, key=rec.key + str(r_), hyperparameters={"r": r_},
                                            arm={"matches": {meth: {"params": params, "budget_met": True}}}))
    ev = Evidence.from_store(put(tmp_path / "m.sqlite", recs))
    loras = ev.arms(ev.primary_setting(), "lora")
    assert len([a for a in loras if a.budget == "matched"]) == 2
    g = {x.method: x for x in grade_all(ev) if x.method}["goft"]
    bl = g.verdicts["BL"]
    assert bl.status == "pass" and "196 params" in bl.derivation  # GOFT 0.96 vs its matched LoRA 0.93


def test_a_lora_arm_on_its_default_targets_matches_an_all_linear_arm(tmp_path):
    """A LoRA arm planned with ``targets=None`` (LoRA's default, every linear layer) is the same target set as
    a VeRA arm planned as ``"all-linear"``: within ±10% it is VeRA's matched LoRA (on the ViT this was missed)."""
    recs = [r for r in comparison_records() if r.method != "lora"]
    for s in SEEDS:
        rec = record("lora", s, 0.93, budget="matched", params=480, ood=ood(0.93, 0.9))
        recs.append(dataclasses.replace(rec, key=rec.key + "default", arm={"targets": None}))
        v = record("vera", s, 0.96, params=500, ood=ood(0.96, 0.9))
        recs = [r for r in recs if r.key != v.key] + [dataclasses.replace(v, arm={"targets": "all-linear"})]
    ev = Evidence.from_store(put(tmp_path / "t.sqlite", recs))
    setting = ev.primary_setting()
    vera = next(a for a in ev.arms(setting, "vera"))
    lora = next(a for a in ev.arms(setting, "lora"))
    assert lora.targets == "all-linear" == vera.targets
    matched = ev.matched_lora(setting, vera)
    assert matched is not None and (matched.budget, matched.adapter_params) == ("matched", 480)


def test_unmeasured_entries_say_so_and_rank_below_failures(grades, db):
    every = grade_all(Evidence.from_store(db))
    dora = next(g for g in every if g.entry.id == "dora")
    assert dora.measured_points is None and dora.outcome == "not measured"
    assert all(v.status in ("not measured", "literature") for v in dora.verdicts.values())
    assert dora.literature_points == dora.entry.literature_points
    outcomes = [g.outcome for g in every]
    assert outcomes == sorted(outcomes, key=["graded", "reference", "not measured"].index)
    measured = [g.measured_points for g in every if g.outcome == "graded"]
    assert measured == sorted(measured, reverse=True) and every[0].method == "vera"
    lora = next(g for g in every if g.method == "lora")  # 0 points from failed tests: graded, not "not measured"
    assert lora.measured_points == 0 and lora.failed_dims == 2 and lora.outcome == "graded"


def _geometry_db(tmp_path, draws=100):
    db = put(tmp_path / "geo.sqlite", comparison_records())
    mats = [f"encoder.layer.{i}.attention.self.query" for i in range(4)]
    single = []
    for i, m in enumerate(mats):
        single += [ProbeRow(m, "spectral", "energy_top8", 0.9, detail={"shape": [64, 64]}),
                   ProbeRow(m, "fit", "circulant", 0.3, "perm", 0.05, 0.01, 25.0, draws),
                   ProbeRow(m, "fit", "toeplitz", 0.06, "perm", 0.05, 0.01, 1.0, draws),
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
    return db, mats


def test_geometry_on_full_ft_is_shown_but_only_the_methods_own_update_counts(tmp_path):
    db, mats = _geometry_db(tmp_path)
    every = {g.entry.id: g for g in grade_all(Evidence.from_store(db))}
    lora = every["lora"]  # top-8 energy 0.9 ≥ 0.5; k*/d = 2/64 ≤ 0.05 — both on full FT's update
    assert [v.status for v in lora.geometry] == ["supported", "supported"]
    assert all("full fine-tuning's update" in v.derivation for v in lora.geometry)
    assert lora.geometry_modifier == 0.0  # prevalence: shown, not counted
    surm = every["surm"]
    assert [v.status for v in surm.geometry] == ["supported", "not significant", "not measured"]
    dora = every["dora"]  # full FT: ΔM up while ΔD down (negative); LoRA: both up (positive)
    assert [v.status for v in dora.geometry] == ["supported", "supported", "not measured"]  # no DoRA update
    assert dora.geometry[0].numbers["r"] < -0.5 < 0.5 < dora.geometry[1].numbers["r"]
    assert every["vera"].geometry[0].status == "not measured"
    # LoRA's own update is low-rank by construction: its top-8 energy is no evidence and is not used …
    add_probe_job(db, "method", "lora", [ProbeRow(m, "spectral", "energy_top8", 0.95) for m in mats])
    ev = Evidence.from_store(db)
    lora = {g.entry.id: g for g in grade_all(ev)}["lora"]
    assert "full fine-tuning's update" in lora.geometry[0].derivation and lora.geometry_modifier == 0.0
    control = lora.geometry[0].control  # shown beside, as a positive control of the probe
    assert control is not None and control.status == "supported" and "positive control" in control.derivation
    # … while a prediction meaningful on the method's own update is judged there and counts
    own = dataclasses.replace(lora.geometry[0].prediction, on_own_update=True)
    v = judge_prediction(ev, ev.primary_setting(), own, "lora")
    assert "lora's own update" in v.derivation and v.status == "supported" and geometry_modifier([v]) == 0.5


def test_null_predictions_need_a_hundred_draws(tmp_path):
    db, _ = _geometry_db(tmp_path, draws=20)
    surm = {g.entry.id: g for g in grade_all(Evidence.from_store(db))}["surm"]
    assert surm.geometry[0].status == "not measured" and "≥ 100" in surm.geometry[0].derivation


@pytest.mark.parametrize(("values", "expected"), [((0.101, 0.099, 0.1, 0.1), "supported"),
                                                   ((0.07, 0.14, 0.1, 0.06), "not significant")])
def test_no_structure_needs_an_equivalence_test(tmp_path, values, expected):
    """VeRA predicts its fit of ΔW_FT is no better than on a spectrum-matched matrix: |z| < 3 alone is not
    evidence; the value must be shown within ±10% of the null mean."""
    db = put(tmp_path / "eq.sqlite", comparison_records())
    add_probe_job(db, "single", "full", [ProbeRow(f"m{i}", "fit", "vera", v, "spec", 0.1, 0.05, (v - 0.1) / 0.05, 100)
                                         for i, v in enumerate(values)])
    vera = {g.entry.id: g for g in grade_all(Evidence.from_store(db))}["vera"]
    assert vera.geometry[0].status == expected and "equivalence margin ±10%" in vera.geometry[0].derivation


def test_censored_k_star_stays_censored(tmp_path):
    db = put(tmp_path / "cens.sqlite", comparison_records())
    rows = [ProbeRow(f"m{i}", "seed_rank", "k_star_left", k, "analytic", 0.1, detail={"d": 384, "censored": c})
            for i, (k, c) in enumerate([(96.0, True), (96.0, True), (10.0, False), (96.0, True)])]
    add_probe_job(db, "pair", "full", rows)
    every = {g.entry.id: g for g in grade_all(Evidence.from_store(db))}
    k = every["lora"].geometry[1]  # k*/d ≤ 0.05 predicted; the median is at least 0.25
    assert k.status == "contradicted" and k.numbers["median_high"] == float("inf") and "3 of 4" in k.derivation
    assert every["adalora"].geometry[0].status == "not measured"  # a CV of censored values is undefined


def test_adalora_cv_divides_k_star_by_the_side_width(tmp_path):
    """k* = 24 on a 384-wide side and 96 on a 1,536-wide side are the same share: CV 0, not 0.6."""
    db = put(tmp_path / "cv.sqlite", comparison_records())
    rows = [ProbeRow(f"m{i}", "seed_rank", "k_star_left", k, "analytic", 0.1, detail={"d": d})
            for i, (k, d) in enumerate([(24.0, 384), (96.0, 1536), (24.0, 384), (96.0, 1536)])]
    add_probe_job(db, "pair", "full", rows)
    ada = {g.entry.id: g for g in grade_all(Evidence.from_store(db))}["adalora"].geometry[0]
    assert ada.status == "contradicted" and ada.numbers["value"] == pytest.approx(0.0)


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
    small = [ProbeRow(f"m{i}", "align", "block_pp", 0.02, "spec", 0.015, 0.0005, 10.0, 100) for i in range(3)]
    big = [ProbeRow(f"m{i}", "align", "block_mm", 0.09, "spec", 0.015, 0.0005, 150.0, 100) for i in range(3)]
    add_probe_job(db, "single", "full", small + big)
    every = {g.entry.id: g for g in grade_all(Evidence.from_store(db))}
    pissa, milora = every["pissa"].geometry[0], every["milora"].geometry[0]
    assert pissa.status == "not significant" and "value/null = 1.33" in pissa.derivation
    assert milora.status == "supported" and milora.numbers["ratio"] == pytest.approx(6.0)
