"""A light footprint: under ``full_ft_artifacts="probed"`` full fine-tuning keeps only the updates the geometry
probes read (two lowest main seeds, the profile's ``probe_matrices``), everything else of full FT is deleted,
PEFT adapters stay whole, and the probes still run on what is left."""

from __future__ import annotations

import dataclasses
import json

from safetensors.torch import load_file

from peftatlas.evidence.arena import run_profile
from peftatlas.evidence.models import load_classifier
from peftatlas.evidence.profiles import PROFILES
from peftatlas.evidence.store import ResultsStore
from peftatlas.geometry.runner import ProbeConfig, linear_weights, probe_store, select_matrices

LIGHT = dataclasses.replace(PROFILES["smoke"], name="smoke-light", methods=("full", "lora"), seeds=(0, 1, 2),
                            learning_curve_sizes=(), full_ft_artifacts="probed", probe_matrices=4)


def test_full_ft_artifacts_hold_only_the_probed_updates(tmp_path):
    path = tmp_path / "light.sqlite"
    records = run_profile(LIGHT, path, progress=False)
    assert records and all(r.status == "done" for r in records)
    full_main = sorted((r for r in records if r.method == "full" and r.experiment == "main"), key=lambda r: r.seed)
    assert [r.seed for r in full_main] == [0, 1, 2] and all("test_acc" in r.metrics for r in full_main)
    linear = set(linear_weights(load_classifier(LIGHT.model, 2)[0]))
    kept_folders = set()
    for rec in full_main[:2]:
        folder = path.parent / rec.artifact
        tensors = load_file(str(folder / "adapter.safetensors"))
        deltas = sorted(k[: -len(".deltas.weight")] for k in tensors if k.endswith(".deltas.weight"))
        body = sorted(n for n in linear if not n.startswith("classifier"))
        assert deltas == sorted(select_matrices(body, LIGHT.probe_matrices)), "only the probed matrices' ΔW"
        assert set(tensors) - {f"{d}.deltas.weight" for d in deltas} == {k for k in tensors if k.startswith("head.")}
        assert json.loads((folder / "adapter.json").read_text())["pruned"]["kept"] == sorted(tensors)
        kept_folders.add(rec.artifact)
    assert full_main[2].artifact is None  # a seed the probes never read: deleted
    assert all(r.artifact is None or r.artifact in kept_folders for r in records if r.method == "full")
    on_disk = {p.name for p in (path.parent / "artifacts").iterdir() if not p.name.startswith(".")}
    lora_folders = {r.artifact.split("/")[-1] for r in records if r.method == "lora"}
    assert on_disk == {f.split("/")[-1] for f in kept_folders} | lora_folders  # PEFT adapters whole, nothing else
    with ResultsStore(path) as store:
        assert {r.key: r for r in store.records()} == {r.key: r for r in records}
    jobs = probe_store(path, ProbeConfig(draws=2, max_matrices=LIGHT.probe_matrices, methods=False), log=None)
    assert sorted((j.kind, j.status, j.n_matrices) for j in jobs) == [("pair", "done", 4), ("single", "done", 4)]


def test_probed_updates_gone_are_trained_again_bit_for_bit(tmp_path):
    """Records resumed without their folders: ``restore_probed`` retrains exactly the two probed full-FT main
    seeds from their own specs, cuts them to the probed matrices, and changes nothing in the records but
    ``artifact``; a second call finds nothing to do."""
    import shutil

    from peftatlas.evidence.artifacts import missing_probed, restore_probed
    from peftatlas.evidence.plan import build_plan

    path = tmp_path / "light.sqlite"
    records = run_profile(dataclasses.replace(LIGHT, seeds=(0, 1)), path, progress=False)
    probed = sorted((r for r in records if r.method == "full" and r.experiment == "main"), key=lambda r: r.seed)
    before = {r.key: load_file(str(path.parent / r.artifact / "adapter.safetensors")) for r in probed}
    for r in probed:
        shutil.rmtree(path.parent / r.artifact)
    plan = build_plan(dataclasses.replace(LIGHT, seeds=(0, 1)), methods=["full"])
    with ResultsStore(path) as store:
        done = {r.key: r for r in store.records()}
        assert sorted(rec.key for _, rec in missing_probed(plan, done, store.root)) == sorted(before)
        lines: list[str] = []
        restored = restore_probed(plan, store, log=lines.append)
        assert sorted(r.key for r in restored) == sorted(before)
        assert sum("metrics reproduce exactly" in line for line in lines) == 2
        for rec in restored:
            old = done[rec.key]
            assert dataclasses.replace(rec, artifact=old.artifact) == old  # only the folder pointer changed
            again = load_file(str(path.parent / rec.artifact / "adapter.safetensors"))
            assert again.keys() == before[rec.key].keys()
            assert all(again[k].equal(before[rec.key][k]) for k in again)
        assert restore_probed(plan, store, log=lines.append) == []
    jobs = probe_store(path, ProbeConfig(draws=2, max_matrices=LIGHT.probe_matrices, methods=False), log=None)
    assert sorted((j.kind, j.status) for j in jobs) == [("pair", "done"), ("single", "done")]


def test_a_retrain_that_fails_is_one_line_and_leaves_its_record(tmp_path, monkeypatch):
    """A training failure during ``restore_probed`` is logged in one line, the record keeps its (missing)
    folder pointer, no folder is written, and the other probed seed is still restored."""
    import shutil

    from peftatlas.evidence import execute
    from peftatlas.evidence.artifacts import restore_probed
    from peftatlas.evidence.plan import build_plan

    profile = dataclasses.replace(LIGHT, seeds=(0, 1))
    path = tmp_path / "light.sqlite"
    records = run_profile(profile, path, progress=False)
    probed = sorted((r for r in records if r.method == "full" and r.experiment == "main"), key=lambda r: r.seed)
    for r in probed:
        shutil.rmtree(path.parent / r.artifact)
    real = execute.train_run

    def fail_seed_0(spec, ctx, artifact=None):
        if spec.seed == 0:
            raise RuntimeError("out of memory\nsecond line of the message")
        return real(spec, ctx, artifact=artifact)

    monkeypatch.setattr(execute, "train_run", fail_seed_0)
    with ResultsStore(path) as store:
        lines: list[str] = []
        restored = restore_probed(build_plan(profile, methods=["full"]), store, log=lines.append)
        assert [r.seed for r in restored] == [1]
        failed = [line for line in lines if "failed" in line]
        assert len(failed) == 1 and "RuntimeError: out of memory" in failed[0] and "second line" not in failed[0]
        after = {r.key: r for r in store.records()}
        assert after[probed[0].key] == probed[0] and not (path.parent / probed[0].artifact).exists()
