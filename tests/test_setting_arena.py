"""The causal-LM and vision settings in the arena: planning (no training), and ``run_profile`` end to end on the
real weights (a few steps each), resumed without training, with a geometry probe on the ViT's full fine-tuning."""

from __future__ import annotations

import dataclasses

import pytest

from peftatlas.evidence.arena import run_profile
from peftatlas.evidence.execute import RunContext, load_run, setting_for
from peftatlas.evidence.executors import SequentialExecutor, drive
from peftatlas.evidence.plan import CURVE, MAIN, SWEEP, build_plan, data_sizes, profile_tasks, run_counts
from peftatlas.evidence.profiles import LM_CPU, PROFILES, VIT_CPU
from peftatlas.evidence.settings import vision as vi
from peftatlas.evidence.store import ResultsStore, decode_items

LM_TINY = dataclasses.replace(
    LM_CPU, name="lm-tiny", methods=("full", "lora", "head_only"), lr_factors=(1.0,), seeds=(0,), sweep_seeds=1,
    lr_extend=0, matched_lora=False, train={**LM_CPU.train, "eval_batch_size": 16, "evals_per_epoch": 1},
    train_size=16, val_size=4, test_size=4, ood_size=4, learning_curve_sizes=(8,), learning_curve_methods=("lora",),
    learning_curve_seeds=1)
VIT_TINY = dataclasses.replace(
    VIT_CPU, name="vit-tiny", methods=("full", "lora", "head_only"), lr_factors=(1.0,), seeds=(0,), sweep_seeds=1,
    lr_extend=0, matched_lora=False, train={"epochs": 1, "batch_size": 10, "eval_batch_size": 50,
                                            "evals_per_epoch": 1},
    train_size=2, val_size=2, test_size=2, ood_size=10, learning_curve_sizes=(1,), learning_curve_methods=("lora",),
    learning_curve_seeds=1, setting={"image_size": 28})


def test_setting_profiles_are_registered_for_the_cli():
    from peftatlas.evidence.settings import profiles as sp

    assert {"lm_cpu", "vit_cpu", "lm_gpu", "vit_gpu"} <= set(PROFILES)
    assert all(PROFILES[name] is p for name, p in sp.SETTING_PROFILES.items())
    assert PROFILES["vit_cpu"].setting == {"image_size": 56} and PROFILES["vit_gpu"].setting == {"image_size": 224}


def test_setting_targets_rename_the_encoder_plans_attention_names():
    from peftatlas.evidence.plan import arena_plan

    assert arena_plan("smollm2", "qgoft").targets == (("q_proj", "v_proj"),)  # the encoder's ("query", "value")
    assert arena_plan("dinov2_s14", "lora").targets[0] == ("q_proj", "v_proj")
    assert arena_plan("minilm", "qgoft").targets == (("query", "value"),)


def test_fewshot_subset_is_the_fewer_shot_task_at_the_same_resolution():
    task = dataclasses.replace(vi.load_fewshot_task(shots=5, n_val=2, n_test=2, n_ood=4), image_size=28)
    two = task.subset(train=2)
    assert two.fingerprint() == dataclasses.replace(vi.load_fewshot_task(shots=2, n_val=2, n_test=2, n_ood=4),
                                                    image_size=28).fingerprint()
    assert task.subset(train=5) is task and task.subset(train=None) is task
    assert task.fingerprint() != dataclasses.replace(task, image_size=56).fingerprint()  # resolution is keyed


def test_vision_plan_counts_in_shots_and_keys_the_resolution():
    """Learning-curve sizes are shots (a curve point at the profile's shots is the main run); the image size
    travels in the run spec's data and enters the key through the task's fingerprint."""
    tasks = profile_tasks(VIT_TINY)
    assert tasks["mnist_fewshot"].image_size == 28 and len(tasks["mnist_fewshot"].train) == 20
    assert data_sizes(VIT_TINY, "mnist_fewshot")["image_size"] == 28
    plan = build_plan(dataclasses.replace(VIT_TINY, methods=("lora",), learning_curve_sizes=(1, 2)))
    arm = plan.arms[0]
    assert plan.spec(arm, CURVE, 1e-3, 0, 2).train_size is None  # 2 shots = the whole training set
    assert plan.spec(arm, CURVE, 1e-3, 0, 1).data["curve"] == 1
    assert run_counts(plan)["curve"] == 1
    other = build_plan(dataclasses.replace(VIT_TINY, methods=("lora",), setting={"image_size": 56}))
    assert other.spec(other.arms[0], SWEEP, 1e-3, 0).key != plan.spec(arm, SWEEP, 1e-3, 0).key


def test_catalog_skips_trainable_tokens_with_its_reason_and_plans_clover_with_the_head_size():
    from peftatlas.evidence.plan import solve_arms

    smoke = PROFILES["smoke"]
    [arm] = solve_arms(smoke, smoke.task, "clover", 2)
    assert arm.hyperparameters["head_dim"] == 8 and arm.budget == "fixed" and arm.adapter_params > 0  # 32 / 4 heads
    plan = build_plan(dataclasses.replace(smoke, name="skips", methods=("trainable_tokens",)))
    assert not plan.arms and "trainable_tokens: skipped, the arena does not run it: it trains the embedding rows" \
        in plan.skipped[0]


def check_records(store_path, records, ood: set[str]) -> None:
    """Every run done; main and curve records carry test and OOD metrics and per-item results of each set."""
    assert records and all(r.status == "done" for r in records), [(r.method, r.error) for r in records]
    for r in records:
        assert "val_acc" in r.metrics
        if r.experiment in (MAIN, CURVE):
            assert {"test_acc", *(f"ood_acc/{n}" for n in ood)} <= set(r.metrics)
            assert set(r.items) == {"test", *(f"ood/{n}" for n in ood)}
            test = decode_items(r.items["test"])
            assert sum(test) / len(test) == pytest.approx(r.metrics["test_acc"])
    with ResultsStore(store_path) as store:
        assert {r.key for r in store.records()} == {r.key for r in records}


def resume_trains_nothing(profile, store_path) -> None:
    plan = build_plan(profile, artifacts="artifacts", cache=store_path.parent / "plans")  # arms solved once
    with ResultsStore(store_path) as store:
        counts = drive(plan, store, SequentialExecutor(RunContext(store_path.parent)))
    assert counts["trained"] == 0 and counts["failed"] == 0 and counts["cached"] > 0


@pytest.mark.realmodel
@pytest.mark.timeout(1500)  # ≈ 3 min of CPU at most; niced on the loaded machine its wall was 463–660 s (w/o full FT)
def test_lm_profile_runs_end_to_end_resumes_and_probes_full_fine_tuning(tmp_path):
    """Full FT, LoRA (LR sweep → main completed from its adapter → a learning-curve point) and the frozen LM
    (head-only's place: nothing trains) on 16 questions; exact match and held-out loss on test and both shifted
    formats; the full-FT update of the probed matrices (the artifact keeps only those) is probed against nulls."""
    from peftatlas.geometry.runner import ProbeConfig, probe_store

    path = tmp_path / "lm.sqlite"
    records = run_profile(LM_TINY, path, progress=False, executor="sequential")
    check_records(path, records, {"lowercase", "reworded"})
    by = {(r.method, r.experiment): r for r in records}
    assert by["head_only", MAIN].metrics["adapter_params"] == 0 and by["head_only", MAIN].trainable_params == 0
    assert by["lora", MAIN].metrics["adapter_params"] == 288_000  # r = 5 on q, v: the 0.2 % budget
    assert by["lora", MAIN].metrics["test_loss"] < by["head_only", MAIN].metrics["test_loss"]
    assert by["lora", CURVE].train_size == 8 and by["lora", CURVE].metrics["steps"] == 1
    with ResultsStore(path) as store:
        model, tokenizer = load_run(store, by["lora", MAIN])  # rebuilt from its saved adapter
    assert tokenizer is not None and not model.count_parameters().head
    resume_trains_nothing(LM_TINY, path)
    jobs = probe_store(path, ProbeConfig(draws=2, max_matrices=2), log=None)
    single = [j for j in jobs if j.kind == "single"]
    assert len(single) == 1 and single[0].status == "done" and single[0].n_matrices == 2, [j.error for j in jobs]
    assert any(j.kind == "method" and j.method == "lora" and j.status == "done" for j in jobs)


@pytest.mark.realmodel
def test_vit_profile_runs_end_to_end_resumes_and_probes_full_fine_tuning(tmp_path):
    """Full FT, LoRA and head-only on 2 shots per class at 28 px (2 steps each); the full-FT update is probed."""
    from peftatlas.geometry.runner import ProbeConfig, probe_store

    path = tmp_path / "vit.sqlite"
    records = run_profile(VIT_TINY, path, progress=False, executor="sequential")
    check_records(path, records, {"digits", "rotated"})
    by = {(r.method, r.experiment): r for r in records}
    assert by["lora", CURVE].train_size == 1 and by["lora", CURVE].metrics["steps"] == 1  # 10 images, batch 10
    assert by["head_only", MAIN].metrics["head_params"] == 384 * 10 + 10
    assert setting_for("dinov2_s14").num_labels({"fingerprint": {"head": {"classifier.weight": [10, 384]}}}) == 10
    resume_trains_nothing(VIT_TINY, path)
    jobs = probe_store(path, ProbeConfig(draws=2, max_matrices=2), log=None)
    single = [j for j in jobs if j.kind == "single"]
    assert len(single) == 1 and single[0].status == "done" and single[0].n_matrices == 2, [j.error for j in jobs]
    assert any(j.kind == "method" and j.method == "lora" and j.status == "done" for j in jobs)
