"""Shipped results folders: the round trip, and `--resume-from` refusing a bad folder before any store exists."""

from __future__ import annotations

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
