"""Results that travel with the repository: a folder with a store's records as JSON lines and its solved plans.

A SQLite store is a binary that changes wholesale; the shipped form is text that grows by lines, so
the committed history of a long sweep stays small and each commit shows which runs it added::

    FOLDER/records.jsonl   every record, ``RunRecord.to_json`` per line, in key order
    FOLDER/plans/*.json    the plan cache beside the store (solved budgets; named by everything they
                           depend on, so a stale one is never used)

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
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .store import ResultsStore, RunRecord


class ShippedError(ValueError):
    """A shipped records file that cannot be read as records."""


RECORDS = "records.jsonl"
PLANS = "plans"


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
    for plan in sorted((store.root / PLANS).glob("*.json")):
        _write_atomic(out / PLANS / plan.name, plan.read_bytes())
    return len(records)


def read(folder: str | os.PathLike) -> list[RunRecord]:
    """The records of a shipped folder; a one-line :class:`ShippedError` naming the first bad line."""
    path = Path(folder) / RECORDS
    if not path.is_file():
        raise ShippedError(f"{folder}: no {RECORDS} (not a shipped results folder)")
    records = []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(RunRecord.from_json(line))
            except (ValueError, TypeError) as e:
                raise ShippedError(f"{path}:{n}: not a run record ({type(e).__name__}: {e})") from None
    return records


def load(folder: str | os.PathLike, store: ResultsStore, records: list[RunRecord] | None = None) -> int:
    """Put the records of ``folder`` into ``store`` where their key is absent, and copy its plans beside the
    store where absent; the number of records added.

    Everything is read and checked before the first record is written, so a corrupt file adds nothing."""
    records = read(folder) if records is None else records  # already read (and checked) by the caller
    added = 0
    for r in records:
        if store.get(r.key) is None:
            store.put(r)
            added += 1
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
        yield path


def _unstamped(r: RunRecord) -> str:
    """A record's JSON without when it was made (the same run shipped twice differs only there)."""
    return dataclasses.replace(r, created=0.0).to_json()


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
