"""Probe results in the results database (the same SQLite file as the runs, own tables).

::

    probe_jobs  job_key PK, kind ("single" | "pair" | "method"), run_keys (JSON), model, task, method,
                config (JSON), status ("running" | "done" | "failed"), error, n_matrices, created,
                wall_seconds
    probe_rows  job_key, matrix, probe, stat, null_kind ('' = no null), value, null_mean, null_sd, z, n,
                invariant, detail (JSON);  PRIMARY KEY (job_key, matrix, probe, stat, null_kind)

A job's key hashes its inputs (run keys, probe configuration, probe version), so a rerun with the
same inputs skips finished jobs, and a job interrupted between matrices resumes at the first matrix
with no rows. Every matrix's rows are written in one transaction.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from .probe import ProbeRow

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS probe_jobs (job_key TEXT PRIMARY KEY, kind TEXT, run_keys TEXT, model TEXT, "
    "task TEXT, method TEXT, config TEXT, status TEXT, error TEXT, n_matrices INTEGER, created REAL, "
    "wall_seconds REAL)",
    "CREATE TABLE IF NOT EXISTS probe_rows (job_key TEXT, matrix TEXT, probe TEXT, stat TEXT, null_kind TEXT, "
    "value REAL, null_mean REAL, null_sd REAL, z REAL, n INTEGER, invariant INTEGER, detail TEXT, "
    "PRIMARY KEY (job_key, matrix, probe, stat, null_kind))",
)


@dataclasses.dataclass
class ProbeJob:
    job_key: str
    kind: str
    run_keys: list[str]
    model: str
    task: str
    method: str
    config: dict[str, Any]
    status: str = "running"
    error: str | None = None
    n_matrices: int = 0
    created: float = 0.0
    wall_seconds: float = 0.0


def job_key(kind: str, run_keys: list[str], config: dict[str, Any]) -> str:
    blob = json.dumps({"kind": kind, "runs": run_keys, "config": config}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _num(x: float | None) -> float | None:
    """SQLite stores NaN as NULL; keep ±inf as large finite markers (JSON-safe)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    if isinstance(x, float) and math.isinf(x):
        return math.copysign(1e300, x)
    return float(x)


class ProbeStore:
    """Read and write probe jobs and rows next to the runs of a results database."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._conn = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None)
        try:
            for stmt in _SCHEMA:
                self._conn.execute(stmt)
        except sqlite3.DatabaseError as e:
            self._conn.close()
            raise ValueError(f"{self.path} is not a usable results database: {e}") from None

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ProbeStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- jobs ----------------------------------------------------------------------------------
    def job(self, key: str) -> ProbeJob | None:
        row = self._conn.execute("SELECT * FROM probe_jobs WHERE job_key=?", (key,)).fetchone()
        return None if row is None else self._job(row)

    def jobs(self, **filters: Any) -> list[ProbeJob]:
        allowed = {"kind", "model", "task", "method", "status"}
        bad = sorted(set(filters) - allowed)
        if bad:
            raise ValueError(f"unknown probe job filter(s) {', '.join(bad)}; use {', '.join(sorted(allowed))}")
        where = " AND ".join(f"{k}=?" for k in filters) or "1"
        rows = self._conn.execute(f"SELECT * FROM probe_jobs WHERE {where} ORDER BY created", list(filters.values()))
        return [self._job(r) for r in rows.fetchall()]

    @staticmethod
    def _job(row: tuple) -> ProbeJob:
        (key, kind, run_keys, model, task, method, config, status, error, n, created, wall) = row
        return ProbeJob(key, kind, json.loads(run_keys), model, task, method, json.loads(config), status, error,
                        int(n or 0), float(created or 0), float(wall or 0))

    def put_job(self, job: ProbeJob) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO probe_jobs VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (job.job_key, job.kind, json.dumps(job.run_keys), job.model, job.task, job.method,
             json.dumps(job.config, sort_keys=True), job.status, job.error, job.n_matrices,
             job.created or time.time(), job.wall_seconds))

    # --- rows ----------------------------------------------------------------------------------
    def put_rows(self, key: str, rows: list[ProbeRow]) -> None:
        """Write one matrix's rows atomically."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.executemany(
                "INSERT OR REPLACE INTO probe_rows VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                [(key, r.matrix, r.probe, r.stat, r.null or "", _num(r.value), _num(r.null_mean), _num(r.null_sd),
                  _num(r.z), r.n, int(r.invariant), json.dumps(r.detail, default=float)) for r in rows])
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def matrices_done(self, key: str) -> set[str]:
        return {r[0] for r in self._conn.execute("SELECT DISTINCT matrix FROM probe_rows WHERE job_key=?", (key,))}

    def rows(self, key: str) -> list[ProbeRow]:
        cur = self._conn.execute(
            "SELECT matrix, probe, stat, null_kind, value, null_mean, null_sd, z, n, invariant, detail "
            "FROM probe_rows WHERE job_key=? ORDER BY matrix, probe, stat, null_kind", (key,))
        return [ProbeRow(m, p, s, v if v is not None else math.nan, nk or None, nm, ns, z, int(n or 0), bool(inv),
                         json.loads(det) if det else {})
                for (m, p, s, nk, v, nm, ns, z, n, inv, det) in cur.fetchall()]
