"""The results store: exact round trip, filters, atomic replace, crash safety, bad files."""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import sqlite3

import pytest

from peftatlas.evidence.store import ResultsStore, RunRecord, StoreError, config_key


def make_record(key: str = "k1", **over) -> RunRecord:
    base = dict(
        key=key, experiment="main", model="minilm", task="mr", method="lora",
        hyperparameters={"r": 4, "targets": ["query", "value"]}, budget="0.1%", trainable_params=19_202,
        lr=3e-4, seed=1, train_size=None,
        metrics={"val_acc": 0.8123456789012345, "test_acc": 1 / 3, "ood_acc/amazon": 0.7},
        curve=[{"epoch": 1.0, "step": 10, "val_acc": 0.7, "train_loss": 0.61}],
        status="done", error=None, artifact="artifacts/k1", code_version="0.1.0+abc",
        created=1700000000.123456, wall_seconds=12.5, profile="quick", train_key="t1")
    base.update(over)
    return RunRecord(**base)


def test_round_trip_is_exact(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    rec = make_record()
    store.put(rec)
    store.close()
    again = ResultsStore(tmp_path / "r.sqlite").get("k1")
    assert again == rec
    assert again.metrics["test_acc"] == 1 / 3  # bit-exact float
    assert ResultsStore(tmp_path / "r.sqlite").get("missing") is None


def test_filters_on_columns_and_other_fields(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    store.put(make_record("a", seed=0, lr=1e-3))
    store.put(make_record("b", seed=1, lr=1e-3, train_size=64, experiment="learning_curve"))
    store.put(make_record("c", seed=2, method="vera", status="failed", error="boom", hyperparameters={"r": 9}))
    assert [r.key for r in store.records(method="lora")] == ["a", "b"]
    assert [r.key for r in store.records(lr=1e-3, seed=1)] == ["b"]
    assert [r.key for r in store.records(train_size=None, method="lora")] == ["a"]
    assert [r.key for r in store.records(status="failed")] == ["c"]
    assert [r.key for r in store.records(hyperparameters={"r": 9})] == ["c"]  # a JSON field, filtered in Python
    assert len(store.records()) == len(store) == 3
    with pytest.raises(StoreError, match="unknown record field"):
        store.records(colour="red")


def test_put_replaces_same_key(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    store.put(make_record(status="failed", error="x", metrics={}))
    store.put(make_record())
    assert len(store) == 1 and store.get("k1").status == "done"
    with pytest.raises(StoreError, match="status"):
        store.put(make_record(status="running"))


def test_config_key_is_canonical():
    assert config_key({"a": 1, "b": [1, 2]}) == config_key({"b": [1, 2], "a": 1})
    assert config_key({"a": 1}) != config_key({"a": 2})
    assert len(config_key({})) == 64


def _writer(path: str, n: int) -> None:
    store = ResultsStore(path)
    for i in range(n):
        store.put(make_record(f"w{i}", metrics={"val_acc": i / 7}))
    os._exit(0)  # no cleanup: as abrupt as a kill after the last commit


def test_records_survive_abrupt_exit_and_concurrent_reader(tmp_path):
    path = str(tmp_path / "r.sqlite")
    reader = ResultsStore(path)
    proc = multiprocessing.get_context("spawn").Process(target=_writer, args=(path, 20))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    got = {r.key: r.metrics["val_acc"] for r in reader.records()}
    assert got == {f"w{i}": i / 7 for i in range(20)}


def test_nan_metric_round_trips(tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    store.put(make_record(metrics={"val_acc": math.nan}))
    assert math.isnan(store.get("k1").metrics["val_acc"])


def test_not_a_database(tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError, match="not a usable results database"):
        ResultsStore(bad)


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "r.sqlite"
    ResultsStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value='99' WHERE name='schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="schema version 99"):
        ResultsStore(path)


def test_unknown_json_fields_are_ignored(tmp_path):
    rec = make_record()
    data = dataclasses.asdict(rec) | {"future_field": 1}
    assert RunRecord.from_json(json.dumps(data)) == rec


def test_per_item_correctness_round_trips_compactly(tmp_path):
    from peftatlas.evidence.store import decode_items, encode_items

    flags = [bool((i * 7) % 3) for i in range(1000)]
    stored = encode_items(flags)
    assert decode_items(stored) == flags and len(stored["bits"]) == 250  # 1,000 items in 250 hex characters
    assert decode_items(encode_items([])) == [] and decode_items(encode_items([True] * 9)) == [True] * 9
    store = ResultsStore(tmp_path / "r.sqlite")
    rec = make_record(items={"test": stored}, arm={"role": "matched_lora", "matches": {"goft": 4596}})
    store.put(rec)
    assert store.get("k1") == rec and decode_items(store.get("k1").items["test"]) == flags
