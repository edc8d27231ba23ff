"""Re-key shipped vit_cpu records from the CPU-dependent data fingerprint to the portable one (2026-12-04).

The ViT task's data key hashed the pixels of the 30°-rotated OOD set, whose last bits differ between an
AMD CPU without AVX-512 (where the records were run) and an Intel one with it; since
``plan.data_identity`` it hashes that set by its source and angle. A record is re-keyed only when its
old key is reproduced exactly from its own configuration (method, hyperparameters, budget, LR, seed,
training-set size, profile, its own code version) with the old fingerprint — run this under
``MKL_CBWR=AVX2`` on an AVX-512 machine so that the old fingerprint comes out as it did on the AMD one.
Every other field of a record is left as it is; records that do not verify are left untouched.

    MKL_CBWR=AVX2 python scripts/rekey_vision_records.py results/vit_cpu
    MKL_CBWR=AVX2 python scripts/rekey_vision_records.py results/vit_cpu --probes

``--probes`` carries the shipped probe jobs (``probes.jsonl``) over to the re-keyed records: each current
record's old key is recomputed (it must come out as its new key under the portable fingerprint), a job's
``run_keys`` are mapped old → new, and its ``job_key`` is recomputed only after the old one is reproduced
from the job's own kind, run keys and configuration. Jobs that do not verify are left untouched.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import peftatlas.evidence.plan as planner
from peftatlas.evidence.profiles import get_profile


def rekey(folder: Path) -> tuple[int, int]:
    path = folder / "records.jsonl"
    lines = path.read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    profile = get_profile(records[0]["profile"])
    plan = planner.build_plan(profile)
    portable = planner.data_identity
    changed = 0
    for r in records:
        arm = planner.Arm(r["task"], r["method"], r["budget"], r["hyperparameters"], "record", 0)
        plan.code_versions[r["method"]] = r["code_version"]
        planner.data_identity = lambda data: data.fingerprint()
        try:
            old = plan._spec(arm, r["experiment"], r["lr"], r["seed"], r["train_size"], None)
        finally:
            planner.data_identity = portable
        if old.key != r["key"] or old.train_key != r["train_key"]:
            continue
        new = plan._spec(arm, r["experiment"], r["lr"], r["seed"], r["train_size"], None)
        if r.get("artifact"):
            r["artifact"] = r["artifact"].replace(r["key"][:24], new.key[:24])
        r["key"], r["train_key"] = new.key, new.train_key
        changed += 1
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in sorted(records, key=lambda r: r["key"])))
    os.replace(tmp, path)
    return changed, len(records)


def old_to_new(folder: Path) -> dict[str, str]:
    """Old (CPU-dependent) key → current key of every shipped record whose current key verifies."""
    records = [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines() if line.strip()]
    plan = planner.build_plan(get_profile(records[0]["profile"]))
    portable = planner.data_identity
    out = {}
    for r in records:
        arm = planner.Arm(r["task"], r["method"], r["budget"], r["hyperparameters"], "record", 0)
        plan.code_versions[r["method"]] = r["code_version"]
        new = plan._spec(arm, r["experiment"], r["lr"], r["seed"], r["train_size"], None)
        planner.data_identity = lambda data: data.fingerprint()
        try:
            old = plan._spec(arm, r["experiment"], r["lr"], r["seed"], r["train_size"], None)
        finally:
            planner.data_identity = portable
        if new.key == r["key"]:
            out[old.key] = new.key
    return out


def rekey_probes(folder: Path) -> tuple[int, int]:
    from peftatlas.geometry.store import job_key

    mapping = old_to_new(folder)
    path = folder / "probes.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    changed = 0
    for entry in lines:
        job = entry["job"]
        cfg = {k: v for k, v in job["config"].items() if k not in ("seeds", "budget_label", "peftatlas_version")}
        if job_key(job["kind"], job["run_keys"], cfg) != job["job_key"]:
            continue
        if not all(k in mapping for k in job["run_keys"]):
            continue
        job["run_keys"] = [mapping[k] for k in job["run_keys"]]
        job["job_key"] = job_key(job["kind"], job["run_keys"], cfg)
        changed += 1
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in lines))
    os.replace(tmp, path)
    return changed, len(lines)


if __name__ == "__main__":
    if "--probes" in sys.argv[2:]:
        done, total = rekey_probes(Path(sys.argv[1]))
        print(f"re-keyed {done} of {total} probe jobs (the rest did not verify and were left as they were)")
        sys.exit(0)
    done, total = rekey(Path(sys.argv[1]))
    print(f"re-keyed {done} of {total} records (the rest did not reproduce their old key and were left as they were)")
