"""The benchmark harness runs end to end on tiny shapes (no timing assertions: the machine is shared)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft", reason="the harness compares against HF PEFT (a benchmark-only dependency)")

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import harness as H  # noqa: E402


def test_harness_times_ours_peft_and_floor_and_writes_reports(tmp_path):
    wl = H.linear_workload(width=32, tokens=8)
    mine = H.ours(wl, "lora", r=2)
    cands = [H.floor(wl), mine, H.peft(wl, "lora", source=mine, r=2)]
    train = H.measure(cands, mode="train", warmup=1, repeats=2)
    infer = H.measure(cands, mode="infer", warmup=1, repeats=2)
    for table in (train, infer):
        assert [t.label for t in table.timings] == ["floor", "ours:lora", "peft:lora"]
        assert all(len(t.samples_ms) == 2 and t.median > 0 for t in table.timings)
        (row,) = table.rows()
        assert row["method"] == "lora" and row["ours_over_peft"] > 0 and row["ours_x_floor"] > 0
        lo, hi = row["ours_over_peft_ci"]
        assert lo <= row["ours_over_peft"] <= hi
        assert row["ours_trainable"] == row["peft_trainable"] == 2 * (32 + 32)
        assert row["max_abs_diff"] is not None and row["max_abs_diff"] < 1e-5  # same function in both libraries
    assert train.get("floor").memory["saved_mb"] > 0
    js, md = H.write_report([train, infer], tmp_path / "run", note="tiny")
    data = json.loads(js.read_text())
    assert data["tables"][0]["rows"][0]["method"] == "lora"
    text = md.read_text()
    assert "linear-32 — train" in text and "| lora |" in text


def test_paired_ratio_cancels_a_drifting_machine_and_brackets_the_truth():
    drift = [1.0, 1.5, 0.8, 2.0, 1.1, 0.9, 1.7, 1.2, 1.0, 1.3]  # the machine's speed, round by round
    ours = [90.0 * d for d in drift]
    theirs = [100.0 * d for d in drift]
    ratio, lo, hi = H.paired_ratio(ours, theirs)
    assert ratio == pytest.approx(0.9) and lo == pytest.approx(0.9) and hi == pytest.approx(0.9)
    noisy = [o * (1 + 0.05 * (-1) ** i) for i, o in enumerate(ours)]
    ratio, lo, hi = H.paired_ratio(noisy, theirs)
    assert lo <= ratio <= hi and lo < 0.9 < hi and hi - lo < 0.2
    assert H.paired_ratio([2.0, 4.0], [1.0]) == (3.0, 3.0, 3.0)  # unpaired: ratio of medians, no interval


def test_training_step_updates_only_adapter_params():
    wl = H.linear_workload(width=16, tokens=4)
    c = H.ours(wl, "vera", r=4)
    before = {id(p): p.detach().clone() for p in c.params}
    frozen = {n: p.detach().clone() for n, p in c.model.named_parameters() if not p.requires_grad}
    H.train_step(c)
    H.train_step(c)
    assert any(not (p.detach() == before[id(p)]).all() for p in c.params)
    for n, p in c.model.named_parameters():
        if n in frozen:
            assert (p.detach() == frozen[n]).all(), n


def test_llama_workload_and_mixed_batch_serving():
    wl = H.llama_workload("tiny", batch=4, seq=3)
    table = H.measure([H.floor(wl), H.ours(wl, "lora", r=2)], mode="train", warmup=0, repeats=1, check=False)
    assert table.rows()[0]["ours_x_floor"] > 0
    serve = H.linear_workload(width=16, tokens=8)
    result = H.mixed_batch_timings(serve, "lora", n_adapters=(1, 4), repeats=1, warmup=0, with_peft=(4,), r=2)
    assert [e["n"] for e in result["by_n"]] == [1, 4]
    assert result["by_n"][1]["max_abs_diff"] < 1e-5  # PEFT's adapter_names path agrees with ours
    assert "mixed-adapter batch" in H.markdown([], [result])


def test_measure_rejects_bad_mode():
    wl = H.linear_workload(width=8, tokens=2)
    with pytest.raises(ValueError, match="mode"):
        H.measure([H.floor(wl)], mode="fast")


def test_grouped_comparison_keeps_each_groups_floor():
    import run_bench

    wl = H.linear_workload(width=16, tokens=4)
    (table,) = run_bench.compare(wl, ["lora", "vera"], ["train"], repeats=1, warmup=0, grouped=True,
                                 log=lambda *_: None)
    rows = {r["method"]: r for r in table.rows()}
    assert set(rows) == {"lora", "vera"}
    floors = [t for t in table.timings if t.library == "floor"]
    assert len(floors) == 2 and {t.group for t in floors} == {"0", "1"}
    for r in rows.values():
        assert r["ours_x_floor"] > 0 and r["peft_x_floor"] > 0 and r["max_abs_diff"] < 1e-5
    assert "| lora |" in H.markdown([table])


def test_gpu_plan_runs_end_to_end_on_a_tiny_cpu_llama(tmp_path):
    """The GPU suite's code path (grouped comparison in bf16, then LoRA serving) on a tiny CPU Llama,
    so a session that is lent a GPU runs it first time."""
    import argparse

    import run_bench

    plan = run_bench.LlamaPlan(preset="tiny", device="cpu", dtype=torch.bfloat16, batch=2, seq=4, serve_rows=8,
                               serve_seq=2, n_adapters=(1, 8), peft_adapters=(8,))
    args = argparse.Namespace(methods="lora,vera,oft", modes=["train", "infer"], repeats=1, warmup=0,
                              skip_serving=False)
    tables, mixed = run_bench.run_llama_plan(plan, args)
    assert [t.mode for t in tables] == ["train", "infer"]
    for table in tables:
        rows = {r["method"]: r for r in table.rows()}
        assert set(rows) == {"lora", "vera", "oft"}
        assert all(r["ours_x_floor"] > 0 and r["peft_x_floor"] > 0 for r in rows.values())
        assert table.info["dtype"] == "bfloat16"
    (serving,) = mixed
    assert [e["n"] for e in serving["by_n"]] == [1, 8] and serving["by_n"][1]["max_abs_diff"] < 0.05
    js, md = H.write_report(tables, tmp_path / "gpu_dry", mixed)
    assert js.exists() and "| vera |" in md.read_text()
