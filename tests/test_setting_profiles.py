"""The settings' profiles: the fairness rules hold and the time estimate adds up."""

from __future__ import annotations

import pytest

from peftatlas.evidence.settings import profiles as sp


@pytest.mark.parametrize("name", ["lm_cpu", "vit_cpu"])
def test_cpu_profiles_grade_seed_methods_and_references_with_five_seeds(name):
    p = sp.SETTING_PROFILES[name]
    assert set(p.methods) >= {"full", "head_only", "lora", "vera", "surm_circulant", "goft", "dora", "oft", "ia3"}
    assert len(p.seeds) >= 5 and len(p.lr_factors) >= 3 and p.budgets
    assert p.learning_curve_sizes and p.learning_curve_seeds >= 5  # the rubric grades arms with ≥ 5 seeds
    # DE compares each curve with full fine-tuning's: every curved seed method needs full FT's curve too
    assert {"full", "lora", "vera", "surm_circulant", "goft"} <= set(p.learning_curve_methods)


@pytest.mark.parametrize("name", ["lm_gpu", "vit_gpu"])
def test_gpu_profiles_run_every_method_at_two_budgets(name):
    p = sp.SETTING_PROFILES[name]
    assert p.methods == () and len(p.budgets) == 2 and len(p.seeds) >= 5 and len(p.lr_factors) == 5


def test_estimate_counts_every_run_once():
    """Two methods (one of them the frozen model), 2 LRs, 3 seeds (LR chosen on 1), one curve size, 1 s per
    step and row."""
    p = sp.dataclasses.replace(sp.LM_CPU, methods=("lora", "head_only"), lr_factors=(1.0, 3.0), seeds=(0, 1, 2),
                               learning_curve_sizes=(10,), learning_curve_methods=("lora",), learning_curve_seeds=1,
                               sweep_seeds=1)
    costs = sp.Costs(step_s={"lora": 1.0, "head_only": 0.0}, val_row_s=1.0, test_row_s=1.0, val_rows=5,
                     heldout_rows=7, steps=10, evals=2, workers=1)
    run = 10 + 2 * 5
    est = sp.estimate(p, costs, curve_steps={10: 4})
    assert est["sweep_s"] == 2 * run
    assert est["main_s"] == 2 * run + 3 * 7 + (5 + 7)  # two more seeds, three held-out evaluations; frozen: one pass
    assert est["curves_s"] == (4 + 2 * 5) + 7
    halved = sp.estimate(p, sp.dataclasses.replace(costs, workers=2), curve_steps={10: 4})
    assert halved["total_s"] == pytest.approx(est["total_s"] / 2)
    assert sp.runs_in(p, methods=1) == 2 + 2 + 1
    two = sp.dataclasses.replace(p, sweep_seeds=2)
    assert sp.estimate(two, costs, curve_steps={10: 4})["sweep_s"] == 2 * 2 * run  # both sweep seeds per LR
    assert sp.estimate(two, costs, curve_steps={10: 4})["main_s"] == 1 * run + 3 * 7 + (5 + 7)
    matched = sp.estimate(p, costs, curve_steps={10: 4}, matched_arms=1)
    assert matched["total_s"] == est["total_s"] + 2 * run + 2 * run + 3 * 7  # a LoRA arm, no curve
    assert sp.runs_in(two, methods=1, matched_arms=1) == 2 * (2 * 2 + 1) + 1
