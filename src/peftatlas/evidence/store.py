"""The results store: one SQLite file, one row per run, keyed by the hash of the run's full config.

Every :class:`RunRecord` is written in one transaction (``INSERT OR REPLACE``), so a process killed
at any moment leaves either the whole record or none of it; a restarted sweep looks each key up
and skips what is done. Saved adapters live in folders next to the database (``artifact`` is
relative to the database's directory) and are written atomically before their record.

Schema: a few indexed columns for filtering plus the full record as JSON (floats round-trip exactly).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
_COLUMNS = ("experiment", "model", "task", "method", "budget", "lr", "seed", "train_size", "status",
            "profile", "train_key")


@dataclasses.dataclass
class RunRecord:
    """One training run (or a reused result) and everything needed to find and redo it.

    ``key`` is the SHA-256 of the canonical JSON of the full config (model, data and split, method,
    hyperparameters, lr, seed, train size, profile, code version, experiment). ``train_key`` is the
    same hash without the experiment label: two records with equal ``train_key`` share one
    training computation (e.g. the LR sweep's chosen run is also seed 0 of the main comparison).
    Metrics absent from ``metrics`` were not measured (``steps_to_target`` is absent when the
    target was never reached).

    ``arm`` describes the configuration the run belongs to (written by the run plan,
    :mod:`peftatlas.evidence.plan`)::

        role            "method" | "reference" | "matched_lora"
        targets         the target-module spec the adapter was attached to (list, string or None)
        adapter_params  adapter parameters actually built (head excluded)
        budget          the budget label; "matched" for matched-LoRA arms
        matches         matched-LoRA arms only: {method: {"params": its fixed adapter parameter count,
                        "budget_met": this arm within ±10 % of it}} for every fixed-size method this
                        arm was added for (same target modules)
        budget_met      budget arms: within the profile's tolerance of the target; matched arms: within
                        ±10 % of every method in ``matches`` (read the per-method flag instead)
        lr_grid, lr_means, lr_seeds   main / learning-curve runs: the final (possibly extended) LR grid,
                        the mean validation accuracy at each rate over the sweep seeds, those seeds

    ``items`` holds per-item correctness on each held-out set the run was evaluated on
    (``"test"``, ``"ood/<name>"``): ``{"n": items, "bits": hex}`` with bit i (most significant first)
    = item i of the split in its stored order answered correctly; see :func:`decode_items`.
    """

    key: str
    experiment: str  # "lr_sweep" | "main" | "learning_curve" | "reference" | ...
    model: str
    task: str
    method: str
    hyperparameters: dict[str, Any]
    budget: str | None  # "0.1%", "fixed" (method without a size knob), None (reference runs)
    trainable_params: int  # adapter + head parameters that trained
    lr: float
    seed: int
    train_size: int | None  # None = the whole training split
    metrics: dict[str, float]  # val_acc, test_acc, ood_acc/<set>, steps_to_target, ...
    curve: list[dict]  # per evaluation point: {"epoch", "step", "val_acc", "train_loss", ...}
    status: str  # "done" | "failed"
    error: str | None
    artifact: str | None  # adapter folder relative to the store file's directory
    code_version: str
    created: float
    wall_seconds: float
    profile: str = ""
    train_key: str = ""
    arm: dict[str, Any] = dataclasses.field(default_factory=dict)
    items: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunRecord:
        data = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def encode_items(correct: list[bool] | list[int]) -> dict[str, Any]:
    """Per-item correctness as ``{"n": len, "bits": hex}`` (8 items per byte, most significant bit first)."""
    n = len(correct)
    packed = bytearray((n + 7) // 8)
    for i, ok in enumerate(correct):
        if ok:
            packed[i // 8] |= 0x80 >> (i % 8)
    return {"n": n, "bits": packed.hex()}


def decode_items(stored: dict[str, Any]) -> list[bool]:
    """The list of per-item correctness flags of :func:`encode_items`."""
    raw = bytes.fromhex(stored["bits"])
    return [bool(raw[i // 8] & (0x80 >> (i % 8))) for i in range(int(stored["n"]))]


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces) used for hashing configs."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_key(config: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


class StoreError(ValueError):
    """The store file is not a peftatlas results database or a filter names an unknown field."""


class ResultsStore:
    """A SQLite results database; safe to reopen after a crash, readable while a sweep writes."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.root = self.path.parent
        self._conn = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None)
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._init_schema()
        except sqlite3.DatabaseError as e:
            self._conn.close()
            raise StoreError(f"{self.path} is not a usable results database: {e}") from None

    def _init_schema(self) -> None:
        cols = ", ".join(f"{c} {'REAL' if c == 'lr' else 'INTEGER' if c in ('seed', 'train_size') else 'TEXT'}"
                         for c in _COLUMNS)
        with self._transaction() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
            cur.execute(f"CREATE TABLE IF NOT EXISTS runs (key TEXT PRIMARY KEY, {cols}, created REAL, record TEXT)")
            cur.execute("CREATE INDEX IF NOT EXISTS runs_method ON runs (method, experiment)")
            cur.execute("CREATE INDEX IF NOT EXISTS runs_train_key ON runs (train_key)")
            row = cur.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone()
            if row is None:
                cur.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise StoreError(f"{self.path} has schema version {row[0]}; this peftatlas reads up to "
                                 f"{SCHEMA_VERSION}, please upgrade")

    class _Tx:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def __enter__(self) -> sqlite3.Cursor:
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn.cursor()

        def __exit__(self, exc_type, exc, tb) -> None:
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")

    def _transaction(self) -> ResultsStore._Tx:
        return ResultsStore._Tx(self._conn)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- the interface ------------------------------------------------------------------------------
    def get(self, key: str) -> RunRecord | None:
        row = self._conn.execute("SELECT record FROM runs WHERE key=?", (key,)).fetchone()
        return None if row is None else RunRecord.from_json(row[0])

    def put(self, record: RunRecord) -> None:
        """Insert or replace ``record`` in one transaction (atomic)."""
        if record.status not in ("done", "failed"):
            raise StoreError(f"record status must be 'done' or 'failed', got {record.status!r}")
        values = [getattr(record, c) for c in _COLUMNS]
        with self._transaction() as cur:
            cur.execute(f"INSERT OR REPLACE INTO runs (key, {', '.join(_COLUMNS)}, created, record) "
                        f"VALUES (?, {', '.join('?' for _ in _COLUMNS)}, ?, ?)",
                        [record.key, *values, record.created, record.to_json()])

    def records(self, **filters: Any) -> list[RunRecord]:
        """Records whose fields equal ``filters`` (any :class:`RunRecord` field), oldest first."""
        names = {f.name for f in dataclasses.fields(RunRecord)}
        unknown = sorted(set(filters) - names)
        if unknown:
            raise StoreError(f"unknown record field(s) {', '.join(unknown)}; fields: {', '.join(sorted(names))}")
        sql_filters = {k: v for k, v in filters.items() if k in _COLUMNS or k == "key"}
        where = " AND ".join(f"{k} IS ?" for k in sql_filters) or "1"
        rows = self._conn.execute(f"SELECT record FROM runs WHERE {where} ORDER BY created, key",
                                  list(sql_filters.values())).fetchall()
        out = [RunRecord.from_json(r[0]) for r in rows]
        rest = {k: v for k, v in filters.items() if k not in sql_filters}
        return [r for r in out if all(getattr(r, k) == v for k, v in rest.items())]

    def delete(self, key: str) -> None:
        with self._transaction() as cur:
            cur.execute("DELETE FROM runs WHERE key=?", (key,))

    def artifact_path(self, record: RunRecord) -> Path | None:
        """Absolute folder of a record's saved adapter (None if it has none)."""
        return None if record.artifact is None else self.root / record.artifact

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
