"""The arena end to end on the smoke profile: killed mid-sweep, resumed, nothing redone or lost.

One module-scoped store serves every test: a ``peftatlas run --profile smoke`` subprocess is killed
(SIGKILL) after its first records land, then the sweep is resumed in-process and checked.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
import torch

import peftatlas as pa
from peftatlas.cli import main as cli_main
from peftatlas.evidence import execute as execute_mod
from peftatlas.evidence.arena import format_table, load_run, run_profile, summarize
from peftatlas.evidence.execute import RUNNING, RunContext, execute
from peftatlas.evidence.executors import SequentialExecutor, drive
from peftatlas.evidence.models import load_classifier
from peftatlas.evidence.plan import build_plan
from peftatlas.evidence.profiles import PROFILES, Profile, get_profile
from peftatlas.evidence.store import ResultsStore
from peftatlas.evidence.train import evaluate
from record_checks import kill_first_run, unchanged

SMOKE = PROFILES["smoke"]


def expected_counts(profile: Profile) -> Counter:
    """(experiment, method) → number of records the smoke profile must produce."""
    c: Counter = Counter()
    for m in profile.methods:
        c["lr_sweep", m] += len(profile.lr_factors) * profile.sweep_seeds
        c["main", m] += len(profile.seeds)
        if m in profile.learning_curve_methods:
            c["learning_curve", m] += len(profile.learning_curve_sizes) * profile.learning_curve_seeds
    return c




def done_count(path) -> int:
    if not path.exists():
        return 0
    try:
        with ResultsStore(path) as store:
            return len(store.records(status="done"))
    except Exception:  # the writer may be creating the file right now
        return 0


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    path = tmp_path_factory.mktemp("arena") / "smoke.sqlite"
    proc = subprocess.Popen([sys.executable, "-m", "peftatlas.cli", "run", "--profile", "smoke", "--store", str(path),
                             "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 900
    while done_count(path) < 3:
        assert proc.poll() is None, f"the sweep ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        assert time.time() < deadline, "no records after 15 minutes"
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    with ResultsStore(path) as store:
        before = {r.key: r for r in store.records()}
    records = run_profile("smoke", path, progress=False)
    return path, before, records


def test_resume_redoes_nothing_and_loses_nothing(killed_and_resumed):
    path, before, records = killed_and_resumed
    total = sum(expected_counts(SMOKE).values())
    assert 3 <= len(before) < total, "the kill should land mid-sweep"
    with ResultsStore(path) as store:
        after = {r.key: r for r in store.records()}
    assert len(after) == total
    for key, rec in before.items():
        assert unchanged(rec, after[key]), "a finished run was redone or changed"
    assert Counter((r.experiment, r.method) for r in after.values()) == expected_counts(SMOKE)
    assert all(r.status == "done" for r in after.values())
    assert {r.key for r in records} == set(after)
    # a third pass trains nothing
    plan = build_plan(SMOKE)
    with ResultsStore(path) as store:
        counts = drive(plan, store, SequentialExecutor(RunContext(path.parent)))
        again = plan.covered({r.key: r for r in store.records()})
    assert counts["trained"] == 0 and counts["failed"] == 0 and counts["cached"] == total
    assert sorted(r.key for r in again) == sorted(after)


def test_records_carry_the_arena_design(killed_and_resumed):
    path, _, records = killed_and_resumed
    by = lambda **f: [r for r in records if all(getattr(r, k) == v for k, v in f.items())]  # noqa: E731
    for method in SMOKE.methods:
        sweep = by(method=method, experiment="lr_sweep")
        main = by(method=method, experiment="main")
        assert sorted(r.lr for r in sweep) == sorted(get_profile("smoke").lr_grid(method))
        best = max(sweep, key=lambda r: (r.metrics["val_acc"], -r.lr))  # one sweep seed in smoke: the mean is it
        assert {r.lr for r in main} == {best.lr}, "main runs use the LR chosen on validation"
        assert all(r.arm["lr_grid"] == sorted(x.lr for x in sweep) for r in main)
        assert sorted(r.seed for r in main) == list(SMOKE.seeds)
        seed0 = next(r for r in main if r.seed == SMOKE.seeds[0])
        assert seed0.train_key == best.train_key and seed0.metrics == best.metrics  # reused, not retrained
        for r in sweep:  # the test and OOD sets are looked at only for the chosen rate
            assert ("test_acc" in r.metrics) == (r.lr == best.lr), (method, r.lr)
            assert any(k.startswith("ood_acc/") for k in r.metrics) == (r.lr == best.lr)
        for r in main:
            assert {"val_acc", "test_acc", "ood_acc/amazon", "ood_acc/tweets", "ood_acc/nyt"} <= set(r.metrics)
            assert r.curve and {"epoch", "step", "val_acc", "train_loss"} <= set(r.curve[0])
            assert r.artifact and (path.parent / r.artifact / "adapter.safetensors").is_file()
            assert r.code_version.startswith(pa.__version__ + "+") and r.profile == "smoke"
            assert r.items["test"]["n"] == SMOKE.test_size and set(r.items) == {"test", "ood/amazon", "ood/nyt",
                                                                                "ood/tweets"}
    lora = by(method="lora", experiment="main")[0]
    assert lora.budget == "0.2%" and lora.metrics["budget_met"] == 1.0
    assert abs(lora.metrics["budget_rel_error"]) <= 0.10 and lora.hyperparameters["targets"] == ["query", "value"]
    assert lora.trainable_params == lora.metrics["adapter_params"] + lora.metrics["head_params"]
    assert by(method="full", experiment="main")[0].budget is None
    curve = by(experiment="learning_curve")
    assert [r.train_size for r in curve] == list(SMOKE.learning_curve_sizes)


def test_saved_artifact_reproduces_the_recorded_accuracy(killed_and_resumed):
    path, _, records = killed_and_resumed
    from peftatlas.evidence.data import load_task
    from peftatlas.evidence.train import TrainConfig

    task = load_task(SMOKE.task).subset(SMOKE.train_size, SMOKE.val_size, SMOKE.test_size, SMOKE.ood_size)
    with ResultsStore(path) as store:
        for method in ("lora", "full"):
            rec = next(r for r in records if r.method == method and r.experiment == "main")
            model, tok = load_run(store, rec)
            cfg = TrainConfig(max_length=SMOKE.train["max_length"])
            got = evaluate(model, tok, task.test, task.num_labels, cfg, torch.device("cpu"))
            assert got["acc"] == rec.metrics["test_acc"], method
        full = next(r for r in records if r.method == "full" and r.experiment == "main")
        model, _ = load_run(store, full)
        layer = model.adapted_layers()["encoder.encoder.layer.0.attention.self.query"]
        delta = layer.adapters["default"].deltas["weight"]
        assert delta.shape == layer.base.weight.shape and float(delta.abs().max()) > 0  # ΔW of full FT
        model2, _ = load_classifier(SMOKE.model, 2, seed=123)  # a fresh head is replaced by the saved one
        model2 = pa.load_adapter(model2, path.parent / full.artifact)
        assert torch.equal(model2.model.classifier.weight, model.model.classifier.weight)
        with pytest.raises(FileNotFoundError, match="no saved adapter"):
            load_run(store, dataclasses.replace(full, artifact="artifacts/missing"))


def test_summary_table(killed_and_resumed):
    _, _, records = killed_and_resumed
    rows = summarize(records)
    assert {r["method"] for r in rows} == set(SMOKE.methods)
    assert all(r["seeds"] == len(SMOKE.seeds) for r in rows)
    table = format_table(records)
    for m in SMOKE.methods:
        assert m in table
    assert "OOD amazon" in table and "recovered" in table


def test_cli_prints_the_table_from_the_store(killed_and_resumed, capsys):
    path, _, _ = killed_and_resumed
    assert cli_main(["run", "--profile", "smoke", "--store", str(path), "--methods", "lora,head_only", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "lora" in out and "head_only" in out and "0 failed" in out


def test_failed_runs_are_recorded_and_retried(tmp_path, monkeypatch):
    profile = dataclasses.replace(SMOKE, name="smoke-failing", methods=("head_only",), learning_curve_sizes=())
    real = execute_mod.train_classifier

    def broken(*args, **kwargs):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(execute_mod, "train_classifier", broken)
    records = run_profile(profile, tmp_path / "s.sqlite", progress=False)
    assert records and all(r.status == "failed" and r.error == "RuntimeError: simulated crash" for r in records)
    assert all(r.experiment == "lr_sweep" for r in records)  # no main runs without a chosen LR
    monkeypatch.setattr(execute_mod, "train_classifier", real)
    records = run_profile(profile, tmp_path / "s.sqlite", progress=False)
    assert all(r.status == "done" for r in records)
    assert len(records) == len(profile.lr_factors) + len(profile.seeds)


def comparable(records) -> list[dict]:
    """Records without their timestamps and durations (the only fields an executor may change)."""
    out = []
    for r in sorted(records, key=lambda r: r.key):
        d = dataclasses.asdict(r)
        d.pop("created"), d.pop("wall_seconds")
        out.append(d)
    return out


PARALLEL = dataclasses.replace(SMOKE, name="smoke-parallel", methods=("head_only", "lora"), learning_curve_sizes=(16,),
                               learning_curve_seeds=1, learning_curve_methods=("lora",))


def test_processes_executor_gives_the_sequential_records_bit_for_bit(tmp_path):
    """`--jobs 2`: two worker processes run the plan; the driver writes the store; every record (keys,
    metrics, curves, per-item results) equals the sequential executor's at one torch thread per run —
    also when a worker is SIGKILLed mid-run (as the OS kills one that runs out of memory): the pool is
    started again and the lost runs are retried, and the driver goes on."""
    from peftatlas.evidence.parallel import resolve_jobs

    want = sum(expected_counts(PARALLEL).values())
    sequential = run_profile(PARALLEL, tmp_path / "seq" / "s.sqlite", progress=False, threads=1)
    killed: list[tuple[str, int]] = []
    retried: list[str] = []
    killer = threading.Thread(target=kill_first_run, daemon=True,
                              args=(tmp_path / "par" / "artifacts" / RUNNING, killed, retried, time.time() + 300))
    killer.start()
    parallel = run_profile(PARALLEL, tmp_path / "par" / "s.sqlite", progress=False, jobs=2, threads=1)
    killer.join(5)
    assert killed and retried, "no worker was killed mid-run, or its run was not retried"
    assert len(sequential) == want and all(r.status == "done" for r in sequential)
    assert comparable(parallel) == comparable(sequential)
    assert resolve_jobs("auto", PARALLEL) == 1 and resolve_jobs(3) == 3  # tiny model: no workers by default
    with pytest.raises(ValueError, match="jobs"):
        resolve_jobs(0)


def test_a_run_whose_worker_keeps_dying_becomes_a_failed_record_and_the_driver_goes_on(tmp_path):
    """Past ``max_retries`` a run lost with its worker is a failed record that says why; the profile
    finishes the runs that do not depend on it."""
    from peftatlas.evidence.parallel import ProcessExecutor

    plan = build_plan(PARALLEL, log=None, cache=tmp_path / "plans")
    killed: list[tuple[str, int]] = []
    killer = threading.Thread(target=kill_first_run, daemon=True,
                              args=(tmp_path / "artifacts" / RUNNING, killed, [], time.time() + 300, 2))
    killer.start()
    with ResultsStore(tmp_path / "s.sqlite") as store:
        counts = drive(plan, store, ProcessExecutor(tmp_path, 2, threads=1, max_retries=1))
        records = {r.key: r for r in store.records()}
    killer.join(5)
    assert len(killed) == 2 and killed[0][0] == killed[1][0], killed
    [dead] = [r for k, r in records.items() if k.startswith(killed[0][0])]
    assert dead.status == "failed", dead
    assert dead.error.startswith("WorkerDied: the worker process died 2 time(s)"), dead.error
    assert counts["failed"] >= 1 and counts["trained"] >= 1
    assert all(r.status == "done" or r.error.startswith("WorkerDied") for r in records.values())


def test_a_run_submitted_after_a_worker_died_is_sent_to_a_new_pool_without_counting_a_loss(tmp_path):
    """The race CI hit: a worker dies between two waits, so the pool refuses the driver's next submit
    (``BrokenProcessPool`` from ``submit``, not from a result). The executor restarts the pool and sends
    the run there; the run was never in flight, so it is not charged a retry."""
    import os
    from concurrent.futures.process import BrokenProcessPool

    from peftatlas.evidence.parallel import ProcessExecutor

    plan = build_plan(PARALLEL, log=None, cache=tmp_path / "plans")
    arm = next(a for a in plan.arms if a.method == "head_only")
    spec = plan.spec(arm, "lr_sweep", PARALLEL.lr_grid("head_only")[0], 0)
    executor = ProcessExecutor(tmp_path, 1, threads=1)
    try:
        death = executor.pool.submit(os._exit, 1)  # the worker exits at once: the pool is broken
        with pytest.raises(BrokenProcessPool):
            death.result(timeout=120)
        executor.submit(spec)
        finished, records = executor.next_finished()
    finally:
        executor.close()
    assert finished.key == spec.key and [r.status for r in records] == ["done"]
    assert executor.losses == {}


def test_evidence_has_no_import_circle():
    """No module of peftatlas.evidence imports (transitively, inside the package) a module that imports it back."""
    from peftatlas.evidence.codeversion import ImportGraph, package_root

    graph = ImportGraph(package_root())
    modules = [f"peftatlas.evidence.{p.stem}" for p in (package_root() / "evidence").glob("*.py")
               if p.stem != "__init__"]
    for m in modules:
        for dep in graph.closure([m]) - {m}:
            if dep.startswith("peftatlas.evidence.") and dep in modules:
                assert m not in graph.closure([dep]), f"{m} and {dep} import each other"


def test_chosen_sweep_run_is_evaluated_from_its_adapter_exactly_as_if_trained_with_test(tmp_path):
    """An LR-sweep run trains without test/OOD evaluation; when its rate is chosen, the main run reuses it
    and evaluates the saved adapter. The metrics equal those of the same run trained in one go."""
    profile = dataclasses.replace(SMOKE, name="smoke-deferred", methods=("lora",), learning_curve_sizes=())
    plan = build_plan(profile)
    arm = plan.arms[0]
    lr = profile.lr_grid("lora")[0]
    ctx = RunContext(tmp_path)
    [swept] = execute(plan.spec(arm, "lr_sweep", lr, 0), ctx)
    assert swept.status == "done" and "test_acc" not in swept.metrics and not swept.items
    main = plan.spec(arm, "main", lr, 0)
    assert main.train_key == swept.train_key
    completion = dataclasses.replace(main, kind="complete", twin=dataclasses.asdict(swept), artifact=swept.artifact)
    completed, reused = execute(completion, ctx)
    assert completed.key == swept.key and reused.key == main.key and completed.metrics == reused.metrics
    [direct] = execute(dataclasses.replace(main, artifact="elsewhere"), RunContext(tmp_path / "b"))
    assert {"test_acc", "test_f1", "ood_acc/amazon"} <= set(direct.metrics)
    assert reused.metrics == direct.metrics and reused.items == direct.items
    # with the adapter gone (records shipped without artifacts), the completion retrains the same numbers
    import shutil

    shutil.rmtree(tmp_path / swept.artifact)
    again_completed, again = execute(completion, ctx)
    assert again.metrics == direct.metrics and again_completed.key == swept.key


def test_unknown_methods_are_skipped_with_a_note(tmp_path, capsys):
    profile = dataclasses.replace(SMOKE, name="smoke-unknown", methods=("no_such_method",))
    assert run_profile(profile, tmp_path / "s.sqlite", progress=True) == []
    assert "no_such_method: not a registered method" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown profile"):
        get_profile("huge")


@pytest.mark.slow
@pytest.mark.realmodel
def test_quick_profile_lora_and_full_reach_78_percent(tmp_path):
    """Acceptance: on real MiniLM + movie reviews, LoRA and full FT average ≥ 78% test accuracy over
    the seeds, and the store re-reads every record identically (about 10–20 minutes on 2 CPU cores)."""
    path = tmp_path / "quick.sqlite"
    records = run_profile("quick", path, methods=["full", "lora"], progress=False)
    for method in ("full", "lora"):
        main = [r for r in records if r.method == method and r.experiment == "main"]
        assert len(main) == len(PROFILES["quick"].seeds)
        mean = sum(r.metrics["test_acc"] for r in main) / len(main)
        assert mean >= 0.78, f"{method}: mean test accuracy {mean:.3f}"
    with ResultsStore(path) as store:
        assert {r.key: r for r in store.records()} == {r.key: r for r in records}


def test_cli_with_a_local_model_folder_and_a_csv(tmp_path, capsys):
    """`--model FOLDER --task csv:PATH` runs the profile's plan on any transformers folder and table."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from peftatlas.evidence.models import packaged_model_dir

    tok = AutoTokenizer.from_pretrained(packaged_model_dir("minilm"))
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    rows = ["text,label"] + [f"{'sunny' if i % 2 else 'rainy'} day number {i},{i % 2}" for i in range(150)]
    (tmp_path / "weather.csv").write_text("\n".join(rows) + "\n")
    store = tmp_path / "s.sqlite"
    code = cli_main(["run", "--profile", "smoke", "--store", str(store), "--methods", "head_only", "--quiet",
                     "--model", str(tmp_path / "model"), "--task", f"csv:{tmp_path / 'weather.csv'}"])
    assert code == 0
    with ResultsStore(store) as s:
        recs = s.records()
    assert len(recs) == len(SMOKE.lr_factors) + len(SMOKE.seeds)
    assert {r.model for r in recs} == {str(tmp_path / "model")} and {r.task for r in recs} == {"csv:weather.csv"}
    assert "head_only" in capsys.readouterr().out
