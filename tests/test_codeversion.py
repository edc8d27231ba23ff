"""Code versions follow what a run executes: format converters stay out, each setting's module stays in its own runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from peftatlas.evidence.codeversion import NOT_RUN, RUN_ROOTS, ImportGraph, compute_code_versions, package_root
from peftatlas.evidence.execute import SETTING_MODULES

RUN_ONE_SMOKE_LORA = r"""
import dataclasses, json, sys, tempfile
from peftatlas.evidence.execute import RunContext, execute
from peftatlas.evidence.plan import build_plan
from peftatlas.evidence.profiles import get_profile
profile = dataclasses.replace(get_profile("smoke"), name="codeversion-probe", matched_lora=False)
with tempfile.TemporaryDirectory() as tmp:
    plan = build_plan(profile, methods=["lora"])
    spec = plan.ready({})[0]
    (record,) = execute(spec, RunContext(tmp))
    assert record.status == "done", record.error
print(json.dumps(sorted(m for m in sys.modules if m.startswith("peftatlas"))))
"""


def test_a_run_never_imports_the_modules_left_out_of_versions():
    """NOT_RUN (PEFT-file converters) and the other settings' modules are not imported by an encoder run, so
    leaving them out of its version cannot hide a change that alters its numbers."""
    out = subprocess.run([sys.executable, "-c", RUN_ONE_SMOKE_LORA], capture_output=True, text=True, timeout=600,
                         check=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert "peftatlas.evidence.execute" in loaded and "peftatlas.methods.lora" in loaded
    kept_out = (*NOT_RUN, *SETTING_MODULES.values())
    left_out = [m for m in loaded if any(m == n or m.startswith(n + ".") for n in kept_out)]
    assert left_out == []


def test_the_closure_stops_at_not_run_packages():
    graph = ImportGraph(package_root())
    closure = graph.closure(RUN_ROOTS)
    assert "peftatlas.core.io" in closure
    assert not [m for m in closure if m.startswith("peftatlas.interop")]


def test_editing_a_converter_keeps_versions_and_a_setting_module_changes_only_its_runs():
    interop = package_root() / "interop" / "peft_format.py"
    lm = package_root() / "evidence" / "settings" / "causal_lm.py"

    def edited(target: Path):
        return lambda path: path.read_bytes() + (b"\n# edited\n" if path == target else b"")

    methods = ("lora", "goft")
    encoder = compute_code_versions(methods)
    assert compute_code_versions(methods, read=edited(interop)) == encoder
    assert compute_code_versions(methods, read=edited(lm)) == encoder  # not an encoder run's code
    on_lm = compute_code_versions(methods, model="smollm2")
    assert on_lm != encoder
    changed = compute_code_versions(methods, read=edited(lm), model="smollm2")
    assert all(changed[m] != on_lm[m] for m in methods)
