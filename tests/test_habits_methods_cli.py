"""Issue 17 (11): reading one method — ``peftatlas methods NAME``, ``--family``, ``peftatlas.describe``."""

from __future__ import annotations

import json

import pytest

import peftatlas as pa
from peftatlas.cli import main


def test_describe_returns_code_and_catalog_facts():
    d = pa.describe("LoRA")
    assert isinstance(d, pa.MethodDescription) and d.name == "lora" and d.family == "low-rank"
    hp = {h.name: h for h in d.hyperparameters}
    assert (hp["r"].type, hp["r"].default) == ("int", 8) and hp["r"].meaning
    assert (hp["alpha"].type, hp["alpha"].default) == ("float", 16.0)
    assert d.formula.startswith("r·(d_in + d_out)") and "Linear" in d.layer_types and d.mergeable
    assert "low intrinsic rank" in d.hypothesis and "B @ A" in d.pseudocode
    assert "LoRA" in d.paper and d.paper_url.endswith("2106.09685")


def test_describe_reads_a_fields_comment_as_its_meaning():
    hp = {h.name: h for h in pa.describe("oft").hyperparameters}
    assert hp["cayley"].meaning.startswith('"exact" (solve)') and hp["cayley"].default == "exact"


def test_describe_unknown_method_is_one_line():
    with pytest.raises(pa.MethodError, match="unknown method 'nope'") as e:
        pa.describe("nope")
    assert "\n" not in str(e.value)


def test_methods_name_prints_everything(capsys):
    assert main(["methods", "vera"]) == 0
    out = capsys.readouterr().out
    for part in ("vera — random-subspace", "hyperparameters:", "projection_seed", "parameters per layer: d_out + r",
                 "layer types:", "mergeable:            yes", "hypothesis:", "pseudocode:", "paper:"):
        assert part in out, part
    assert main(["methods", "lora", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["name"] == "lora" and data["hyperparameters"][0]["name"] == "r"


def test_family_filter_accepts_spellings_and_refuses_unknown_families(capsys):
    assert main(["methods", "--family", "lowrank"]) == 0
    out = capsys.readouterr().out
    rows = [line.split()[0] for line in out.splitlines()[2:] if line.strip() and not line.endswith("--json")]
    assert "lora" in rows and "vera" not in rows
    assert all(pa.get_method(r).family == "low-rank" for r in rows)
    assert main(["methods", "--family", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("peftatlas: error: unknown family 'nope'; valid: ") and "low-rank" in err
    assert "\n" not in err


def test_every_hyperparameter_of_every_builtin_method_has_a_meaning():
    from peftatlas.core.method import registered_methods

    builtin = {n: c for n, c in registered_methods().items() if c.__module__.startswith("peftatlas.methods.")}
    missing = [f"{n}.{h.name}" for n in sorted(builtin) for h in pa.describe(n).hyperparameters if not h.meaning]
    assert len(builtin) > 30 and not missing, f"hyperparameters without a meaning: {missing}"
    hp = {h.name: h for h in pa.describe("adalora").hyperparameters}
    assert "β1" in hp["beta1"].meaning  # the method's table, not a common name
