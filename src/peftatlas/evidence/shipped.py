"""Results that travel with the repository: a folder with a store's records as JSON lines and its solved plans.

A SQLite store is a binary that changes wholesale; the shipped form is text that grows by lines, so
the committed history of a long sweep stays small and each commit shows which runs it added::

    FOLDER/records.jsonl   every record, ``RunRecord.to_json`` per line, in key order
    FOLDER/probes.jsonl    every finished geometry probe job with its rows (``peftatlas probe``), one job
                           per line, in job-key order (absent when nothing was probed)
    FOLDER/plans/*.json    the plan cache beside the store, for the records' profiles only (solved budgets;
                           named by everything they depend on, so a stale one is never used)

    export(store, folder)  write both (each file atomically: a temporary file, then a rename)
    load(folder, store)    put every record into ``store`` unless one of that key is there; copy the
                           plans beside the store where absent
    as_store(folder)       a temporary store holding the folder's records (``peftatlas report --store
                           FOLDER`` renders the atlas from it, byte for byte the same on every build)

A sweep that outlives one working window resumes from the committed folder alone: ``peftatlas run
--profile catalog --resume-from results/catalog`` loads it into the store and runs the profile;
finished runs are skipped by their keys. Adapters are never shipped (a sweep seed whose adapter is
gone is retrained by the arena: same key, same numbers).

    python -m peftatlas.evidence.shipped export runs/catalog.sqlite results/catalog
    python -m peftatlas.evidence.shipped load results/catalog runs/catalog.sqlite
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from ..geometry.probe import ProbeRow
from ..geometry.store import ProbeJob, ProbeStore
from .store import ResultsStore, RunRecord


class ShippedError(ValueError):
    """A shipped records file that cannot be read as records."""


RECORDS = "records.jsonl"
PROBES = "probes.jsonl"
PLANS = "plans"
_ROW_NUMBERS = ("value", "null_mean", "null_sd", "z")  # NaN ↔ null in JSON
T = TypeVar("T")


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def export(store: ResultsStore, folder: str | os.PathLike) -> int:
    """Write ``store``'s records and plan cache into ``folder`` (module docstring); the number of records."""
    out = Path(folder)
    records = sorted(store.records(), key=lambda r: r.key)
    _write_atomic(out / RECORDS, "".join(r.to_json() + "\n" for r in records).encode())
    lines = [_probe_line(job, rows) for job, rows in _finished_probes(store.path)]
    if lines or (out / PROBES).exists():
        _write_atomic(out / PROBES, "".join(line + "\n" for line in lines).encode())
    profiles = {r.profile for r in records}
    for plan in sorted((store.root / PLANS).glob("*.json")):
        if _plan_profile(plan) in profiles:
            _write_atomic(out / PLANS / plan.name, plan.read_bytes())
    return len(records)


def _plan_profile(path: Path) -> str | None:
    """The profile a cached plan was solved for (None: unreadable, or written before plans named it)."""
    try:
        profile = json.loads(path.read_text()).get("profile")
    except (OSError, ValueError, AttributeError):
        return None
    return profile if isinstance(profile, str) else None


def _finished_probes(store_path: Path) -> list[tuple[ProbeJob, list[ProbeRow]]]:
    """The store's finished probe jobs (key order), each with its rows."""
    with ProbeStore(store_path) as probes:
        jobs = sorted((j for j in probes.jobs() if j.status == "done"), key=lambda j: j.job_key)
        return [(j, probes.rows(j.job_key)) for j in jobs]


def _probe_line(job: ProbeJob, rows: list[ProbeRow]) -> str:
    def row(r: ProbeRow) -> dict[str, Any]:
        d = r.as_dict()
        for k in _ROW_NUMBERS:
            if d[k] is not None and math.isnan(d[k]):
                d[k] = None
        return d

    return json.dumps({"job": dataclasses.asdict(job), "rows": [row(r) for r in rows]}, sort_keys=True,
                      default=float, allow_nan=False)


def _parse_lines(path: Path, parse: Callable[[str], T], what: str) -> list[T]:
    """``parse`` of each non-empty line of ``path``; a one-line :class:`ShippedError` naming the first bad line."""
    out = []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(parse(line))
            except (ValueError, TypeError, KeyError) as e:
                raise ShippedError(f"{path}:{n}: not {what} ({type(e).__name__}: {e})") from None
    return out


def _probe_from_line(line: str) -> tuple[ProbeJob, list[ProbeRow]]:
    obj = json.loads(line)
    rows = [ProbeRow(**{**r, "value": math.nan if r["value"] is None else r["value"]}) for r in obj["rows"]]
    return ProbeJob(**obj["job"]), rows


def read_probes(folder: str | os.PathLike) -> list[tuple[ProbeJob, list[ProbeRow]]]:
    """The probe jobs of a shipped folder with their rows (none when it has no probes file); a one-line
    :class:`ShippedError` naming the first bad line."""
    path = Path(folder) / PROBES
    return _parse_lines(path, _probe_from_line, "a probe job") if path.is_file() else []


def _load_probes(probes: list[tuple[ProbeJob, list[ProbeRow]]], store_path: Path) -> int:
    """Put each finished probe job (and its rows) into the store where it is not finished there; the number added."""
    added = 0
    with ProbeStore(store_path) as store:
        for job, rows in probes:
            held = store.job(job.job_key)
            if held is not None and held.status == "done":
                continue
            by_matrix: dict[str, list[ProbeRow]] = {}
            for r in rows:
                by_matrix.setdefault(r.matrix, []).append(r)
            for matrix_rows in by_matrix.values():
                store.put_rows(job.job_key, matrix_rows)
            store.put_job(job)
            added += 1
    return added


def read(folder: str | os.PathLike) -> list[RunRecord]:
    """The records of a shipped folder; a one-line :class:`ShippedError` naming the first bad line."""
    path = Path(folder) / RECORDS
    if not path.is_file():
        raise ShippedError(f"{folder}: no {RECORDS} (not a shipped results folder)")
    return _parse_lines(path, RunRecord.from_json, "a run record")


def load(folder: str | os.PathLike, store: ResultsStore, records: list[RunRecord] | None = None) -> int:
    """Put the records of ``folder`` into ``store`` where their key is absent, and copy its plans beside the
    store where absent; the number of records added.

    Everything is read and checked before the first record is written, so a corrupt file adds nothing."""
    records = read(folder) if records is None else records  # already read (and checked) by the caller
    probes = read_probes(folder)
    added = 0
    for r in records:
        if store.get(r.key) is None:
            store.put(r)
            added += 1
    _load_probes(probes, store.path)
    for plan in sorted((Path(folder) / PLANS).glob("*.json")):
        if not (store.root / PLANS / plan.name).exists():
            _write_atomic(store.root / PLANS / plan.name, plan.read_bytes())
    return added


def is_shipped(path: str | os.PathLike) -> bool:
    """True when ``path`` is a shipped results folder (it holds ``records.jsonl``)."""
    return (Path(path) / RECORDS).is_file()


@contextlib.contextmanager
def as_store(*folders: str | os.PathLike) -> Iterator[Path]:
    """A temporary SQLite store with every record of each of ``folders`` (e.g. one per profile: the
    catalog and the other settings' CPU profiles), removed on exit; the path inside. A key present in
    two folders must be the same record there (else :class:`ShippedError`)."""
    if not folders:
        raise ShippedError("as_store() needs at least one shipped folder")
    records = [(folder, read(folder)) for folder in folders]  # every folder checked before the store exists
    probes = [p for folder in folders for p in read_probes(folder)]
    with tempfile.TemporaryDirectory(prefix="peftatlas-shipped-") as tmp:
        path = Path(tmp) / "results.sqlite"
        with ResultsStore(path) as store:
            for folder, recs in records:
                for r in recs:
                    held = store.get(r.key)
                    if held is None:
                        store.put(r)
                    elif _unstamped(held) != _unstamped(r):
                        raise ShippedError(f"{folder}: record {r.key} differs from the one another folder holds")
        _load_probes(probes, path)
        yield path


def _unstamped(r: RunRecord) -> str:
    """A record's JSON without when it was made (the same run shipped twice differs only there)."""
    return dataclasses.replace(r, created=0.0).to_json()


class PeriodicExport:
    """Export the store at ``store_path`` to ``folder`` every ``every`` seconds from a background thread while
    a sweep writes it, and once more on exit (also after an error or Ctrl-C), so a window that ends abruptly
    loses at most ``every`` seconds of records (``peftatlas run --ship FOLDER``)."""

    def __init__(self, store_path: str | os.PathLike, folder: str | os.PathLike, every: float = 900.0,
                 log: Callable[[str], None] = print) -> None:
        if every <= 0:
            raise ValueError(f"export interval must be positive, got {every}")
        self.store_path, self.folder, self.every, self.log = Path(store_path), Path(folder), every, log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="peftatlas-ship", daemon=True)
        self.exports = 0

    def __enter__(self) -> PeriodicExport:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.export_once()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.export_once()

    def export_once(self) -> None:
        """One export; a failure is logged, never raised (the sweep goes on)."""
        try:
            with ResultsStore(self.store_path) as store:
                n = export(store, self.folder)
        except Exception as e:  # a failed export must not stop the sweep
            self.log(f"ship: export to {self.folder} failed: {type(e).__name__}: {e}")
            return
        self.exports += 1
        self.log(f"ship: {n} record(s) → {self.folder}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m peftatlas.evidence.shipped", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="store → shipped folder")
    e.add_argument("store")
    e.add_argument("folder")
    ld = sub.add_parser("load", help="shipped folder → store (records already there are kept)")
    ld.add_argument("folder")
    ld.add_argument("store")
    args = p.parse_args(argv)
    if args.command == "export":
        if not Path(args.store).is_file():
            p.error(f"{args.store}: no such results store")
        with ResultsStore(args.store) as store:
            n = export(store, args.folder)
        print(f"{n} record(s) → {args.folder}")
    else:
        try:
            with ResultsStore(args.store) as store:
                n = load(args.folder, store)
        except (OSError, ShippedError) as err:
            p.error(str(err))
        print(f"{n} record(s) added to {args.store}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
