"""Bit-exact promises must hold whatever kernels the CPU runs.

The library promises exact equality for save → load, ``disable()``, ``unload()``, ``unmerge()`` and
no-op inits. Those hold only if both sides of each comparison reach their outputs through the same
kernels on the same tensor layouts; a CPU without AVX-512 (MKL's AVX2 path) or another thread count
rounds some kernels differently, which once made CLOVER's save → load inexact on AMD machines only.

Here every test marked ``exactness`` runs again in a fresh process with MKL and ATen limited to other
instruction sets and other thread counts, so a result that depends on the kernels shows up on any
developer's machine, not just on the CPU that happens to round differently.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# name → (environment, extra pytest selection). Variables are read when torch / MKL load, hence the subprocess.
DISPATCH_VARIANTS: dict[str, tuple[dict[str, str], list[str]]] = {
    # MKL's AVX2 code path (what an AMD EPYC runs) and ATen's AVX2 kernels, one thread
    "avx2-1-thread": (
        {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "OMP_NUM_THREADS": "1",
         "MKL_NUM_THREADS": "1"},
        [],
    ),
    # ATen's scalar (no-vector) kernels and two threads (ATen's default splits reductions over cores): the generic
    # properties on one model kind, to keep the suite's time down (scalar kernels are slow)
    "scalar-2-threads": (
        {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"},
        ["-k", "bert", "tests/test_properties.py"],
    ),
}


@pytest.mark.parametrize("variant", sorted(DISPATCH_VARIANTS))
def test_exact_promises_hold_under_other_cpu_kernels(variant):
    env_changes, selection = DISPATCH_VARIANTS[variant]
    env = {**os.environ, **env_changes, "PYTHONHASHSEED": "0"}
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "0", "-m", "exactness",
           "--timeout", "900", *(selection or ["tests"])]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    tail = "\n".join(proc.stdout.splitlines()[-25:])
    assert proc.returncode == 0, f"exact promises broke under {variant} ({env_changes}):\n{tail}\n{proc.stderr[-2000:]}"
    assert " passed" in tail and "no tests ran" not in tail, tail
