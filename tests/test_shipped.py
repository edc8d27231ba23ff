"""Shipped results folders: the round trip, and `--resume-from` refusing a bad folder before any store exists."""

from __future__ import annotations

import json
import subprocess
import sys

from atlas_fixtures import put, record
from peftatlas.evidence import shipped
from peftatlas.evidence.store import ResultsStore


def test_export_then_load_gives_the_same_records_and_keeps_existing_ones(tmp_path):
    db = put(tmp_path / "a.sqlite", [record("lora", s, 0.8) for s in range(3)])
    with ResultsStore(db) as store:
        assert shipped.export(store, tmp_path / "ship") == 3
        before = {r.key: r for r in store.records()}
    with ResultsStore(tmp_path / "b.sqlite") as fresh:
        assert shipped.load(tmp_path / "ship", fresh) == 3
        assert shipped.load(tmp_path / "ship", fresh) == 0  # already there: kept, not duplicated
        assert {r.key: r for r in fresh.records()} == before


def test_resume_from_a_missing_or_corrupt_folder_is_one_line_and_creates_no_store(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "records.jsonl").write_text('{"key": "x"}\nnot json\n')
    for folder in (tmp_path / "absent", tmp_path / "bad"):
        store = tmp_path / "runs" / "s.sqlite"
        out = subprocess.run([sys.executable, "-m", "peftatlas.cli", "run", "--profile", "smoke", "--store", str(store),
                              "--resume-from", str(folder)], capture_output=True, text=True, timeout=300)
        assert out.returncode != 0
        assert len(out.stderr.strip().splitlines()) == 1 and "--resume-from" in out.stderr, out.stderr
        assert not store.exists()


def _ship(tmp_path, name: str, records) -> object:
    db = put(tmp_path / f"{name}.sqlite", records)
    with ResultsStore(db) as store:
        shipped.export(store, tmp_path / name)
    return tmp_path / name


def test_several_shipped_folders_render_one_atlas_and_conflicts_are_refused(tmp_path):
    """One folder per profile renders together (the shipped atlas of three settings); the same key with
    another record in a second folder is refused in one line; the CLI takes several folders."""
    import dataclasses

    import pytest

    from peftatlas.report import build_report

    enc = _ship(tmp_path, "enc", [record("lora", s, 0.8) for s in range(3)])
    other = _ship(tmp_path, "other", [record("lora", s, 0.8, task="other_task") for s in range(3)]
                  + [dataclasses.replace(record("lora", 0, 0.8), created=5.0)])  # enc's run, shipped again: fine
    with shipped.as_store(enc, other) as db, ResultsStore(db) as store:
        assert len(store.records()) == 6
    result = build_report([enc, other], tmp_path / "atlas")
    assert result.index_html.is_file() and "enc + other" in result.index_md.read_text()

    changed = dataclasses.replace(record("lora", 0, 0.8), lr=0.5)
    clash = _ship(tmp_path, "clash", [changed])
    with pytest.raises(shipped.ShippedError, match="differs from the one another folder holds") as info, \
            shipped.as_store(enc, clash):
        pass
    assert "\n" not in str(info.value)

    out = subprocess.run([sys.executable, "-m", "peftatlas.cli", "report", "--shipped", str(enc), str(other),
                          "--out", str(tmp_path / "cli")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "cli" / "index.html").read_bytes() == (tmp_path / "atlas" / "index.html").read_bytes()


def test_probe_jobs_travel_with_the_records_nan_included(tmp_path):
    """Finished probe jobs and their rows are exported to probes.jsonl, loaded back (a NaN stays NaN), included
    by as_store (so the shipped atlas shows geometry), unfinished jobs stay home; a corrupt line is one line."""
    import math

    import pytest

    from peftatlas.geometry.probe import ProbeRow
    from peftatlas.geometry.store import ProbeJob, ProbeStore

    db = put(tmp_path / "a.sqlite", [record("full", 0, 0.8)])
    rows = [ProbeRow("layer.0.q", "spectrum", "k90", 12.0, "gaussian", 30.0, 2.0, -9.0, 100, False, {"d": 64}),
            ProbeRow("layer.0.q", "spectrum", "censored", math.nan)]
    with ProbeStore(db) as probes:
        probes.put_rows("job-done", rows)
        probes.put_job(ProbeJob("job-done", "single", ["k"], "m", "t", "full", {"draws": 100}, status="done",
                                n_matrices=1, created=1.0))
        probes.put_job(ProbeJob("job-running", "single", ["k"], "m", "t", "full", {}, created=2.0))
    with ResultsStore(db) as store:
        shipped.export(store, tmp_path / "ship")
    assert len((tmp_path / "ship" / shipped.PROBES).read_text().splitlines()) == 1
    with ResultsStore(tmp_path / "b.sqlite") as fresh:
        shipped.load(tmp_path / "ship", fresh)
    with ProbeStore(tmp_path / "b.sqlite") as back:
        assert [j.job_key for j in back.jobs()] == ["job-done"] and back.job("job-done").config == {"draws": 100}
        got = back.rows("job-done")
    assert got[1].detail == {"d": 64} and got[1].z == -9.0 and math.isnan(got[0].value)  # rows sorted by stat
    with shipped.as_store(tmp_path / "ship") as path, ProbeStore(path) as inside:
        assert len(inside.rows("job-done")) == 2

    (tmp_path / "ship" / shipped.PROBES).write_text('{"job": {}}\n')
    with pytest.raises(shipped.ShippedError, match="probes.jsonl:1: not a probe job") as info:
        shipped.read_probes(tmp_path / "ship")
    assert "\n" not in str(info.value)


def test_periodic_export_ships_while_the_store_grows_and_once_more_at_the_end(tmp_path):
    import time

    db = put(tmp_path / "a.sqlite", [record("lora", 0, 0.8)])
    logged: list[str] = []
    with shipped.PeriodicExport(db, tmp_path / "ship", every=0.05, log=logged.append) as ship:
        time.sleep(0.3)
        assert len(shipped.read(tmp_path / "ship")) == 1  # shipped while the sweep runs
        put(db, [record("lora", 1, 0.8)])
    assert len(shipped.read(tmp_path / "ship")) == 2 and ship.exports >= 2  # the last export after the end
    (tmp_path / "blocked").write_text("a file where the folder should be")
    failed: list[str] = []
    with shipped.PeriodicExport(db, tmp_path / "blocked", every=10, log=failed.append):
        pass
    assert len(failed) == 1 and "failed" in failed[0] and "\n" not in failed[0]  # logged, the sweep goes on


def test_run_ship_every_must_be_positive(tmp_path):
    out = subprocess.run([sys.executable, "-m", "peftatlas.cli", "run", "--profile", "smoke", "--store",
                          str(tmp_path / "s.sqlite"), "--ship", str(tmp_path / "ship"), "--ship-every", "0"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "--ship-every must be positive" in out.stderr


def test_export_ships_only_the_plans_of_the_records_profiles(tmp_path):
    """Every profile's store sits beside one plan cache (runs/plans): a shipped folder takes the plans
    solved for its records' profiles, not the other profiles' (nor unlabelled ones from before)."""
    import dataclasses
    import json

    recs = [dataclasses.replace(record("lora", s, 0.8), profile="quick") for s in range(2)]
    db = put(tmp_path / "a.sqlite", recs)
    plans = tmp_path / "plans"
    plans.mkdir()
    for name, body in {"arms-q": {"profile": "quick", "arms": [], "skipped": []},
                       "arms-c": {"profile": "catalog", "arms": [], "skipped": []},
                       "arms-old": {"arms": [], "skipped": []}}.items():
        (plans / f"{name}.json").write_text(json.dumps(body))
    (plans / "arms-bad.json").write_text("{not json")
    with ResultsStore(db) as store:
        shipped.export(store, tmp_path / "ship")
    assert sorted(p.name for p in (tmp_path / "ship" / "plans").iterdir()) == ["arms-q.json"]


def test_sigterm_stops_a_shipping_run_like_ctrl_c_and_exports_what_finished(tmp_path):
    """`kill` (SIGTERM) on `peftatlas run --ship`: exit 130 with the "interrupted" line, and the shipped
    folder holds every record the store finished — the end of a working window loses nothing."""
    import os
    import signal
    import time

    store, ship = tmp_path / "s.sqlite", tmp_path / "ship"
    cmd = [sys.executable, "-m", "peftatlas.cli", "run", "--profile", "smoke", "--store", str(store),
           "--ship", str(ship), "--ship-every", "60", "--jobs", "1", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if store.exists():
            with ResultsStore(store) as opened:
                if opened.records(status="done"):
                    break
        time.sleep(0.2)
    assert proc.poll() is None, "the smoke profile finished before it could be stopped"
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "interrupted" in err, err[-2000:]
    with ResultsStore(store) as opened:
        done = {r.key for r in opened.records(status="done")}
    exported = {json.loads(line)["key"] for line in (ship / "records.jsonl").read_text().splitlines()}
    assert done and exported == done
