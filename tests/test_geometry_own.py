"""Geometry on the graded method's own update: which predictions count there, and the method jobs' nulls."""

from __future__ import annotations

import pytest
import torch

import peftatlas as pa
from atlas_fixtures import (
    SEEDS,
    add_probe_job,
    base_loader,
    base_model,
    comparison_records,
    ood,
    probe_records,
    put,
    record,
)
from peftatlas.catalog import ENTRIES, Prediction
from peftatlas.geometry.own import OWN_NULL_MATRICES, own_nulls
from peftatlas.geometry.probe import ProbeRow
from peftatlas.geometry.runner import ProbeConfig, probe_store
from peftatlas.geometry.store import ProbeStore
from peftatlas.grading import Evidence, grade_all
from peftatlas.grading.rubric import MIN_NULL_DRAWS, judge_rows


def test_which_predictions_count_on_the_methods_own_update():
    """Only DoRA's magnitude/direction prediction is judged on (and counted for) the method's own update; the
    others' statistics are fixed by the method's parametrization (docs/evidence.md lists why)."""
    own = {(e.id, p.meaning) for e in ENTRIES for p in e.predictions
           if p.on_own_update or (p.kind == "magdir" and p.job_method in e.methods)}
    assert [eid for eid, _ in own] == ["dora"]


def test_no_low_rank_claim_uses_a_null_a_decaying_spectrum_passes():
    assert not [p for e in ENTRIES for p in e.predictions if p.probe == "spectral" and p.kind == "null"]
    p = Prediction("null", "top-8 energy above an iid Gaussian", probe="spectral", stat="energy_top8", null="gauss")
    rows = [ProbeRow(f"m{i}", "spectral", "energy_top8", 0.9, "gauss", 0.1, 0.01, 80.0, 100) for i in range(3)]
    v = judge_rows(p, rows, "full fine-tuning's update", False)
    assert v.status == "not measured" and "decaying spectrum" in v.derivation


def _dora_rows(sign: float) -> list[ProbeRow]:
    rows = []
    for i in range(4):
        m = f"encoder.layer.{i}.attention.self.query"
        rows += [ProbeRow(m, "magdir", "delta_magnitude", 0.1 * (i + 1)),
                 ProbeRow(m, "magdir", "delta_direction", 0.05 * (i + 1) ** sign + 0.001 * (i % 2))]
    return rows


@pytest.mark.parametrize(("sign", "status", "modifier"), [(-1.0, "supported", 0.5), (1.0, "contradicted", -0.5)])
def test_doras_own_update_moves_its_grade(tmp_path, sign, status, modifier):
    recs = comparison_records() + [record("dora", s, 0.95 + 0.001 * s, params=520, ood=ood(0.95, 0.95))
                                   for s in SEEDS]
    db = put(tmp_path / "dora.sqlite", recs)
    add_probe_job(db, "method", "dora", _dora_rows(sign))
    dora = next(g for g in grade_all(Evidence.from_store(db)) if g.entry.id == "dora")
    own = dora.geometry[2]
    assert own.status == status and own.numbers["counts"] and "on dora's update" in own.derivation
    assert dora.geometry_modifier == modifier


def test_own_nulls_follow_the_entrys_null_predictions():
    surm = own_nulls("surm_circulant")
    assert surm is not None and surm.groups == ("fit",) and surm.nulls == ("perm",)
    assert own_nulls("lora") is None and own_nulls("dora") is None  # threshold and magdir only: no nulls


def test_method_job_computes_the_entrys_nulls_on_its_own_update(tmp_path):
    """A saved SURM-circulant adapter: its job carries fit/perm nulls at ≥ 100 draws on OWN_NULL_MATRICES
    matrices, values on the rest, and the circulant prediction reads its own update as a positive control."""
    model = pa.attach(base_model(), "surm_circulant", targets=["query", "value"])
    g = torch.Generator().manual_seed(0)
    for layer in model.adapted_layers().values():
        layer.adapters["default"].perturb_(g, 0.5)
    pa.save_adapter(model, tmp_path / "artifacts" / "surm")
    recs = [*probe_records(tmp_path, seeds=(0,)),
            record("surm_circulant", 0, 0.9, budget="fixed", artifact="artifacts/surm")]
    db = put(tmp_path / "results.sqlite", recs)
    cfg = ProbeConfig(draws=MIN_NULL_DRAWS, max_matrices=4, nulls=("perm",))
    jobs = probe_store(db, cfg, base_loader=base_loader, log=None)
    job = next(j for j in jobs if j.kind == "method")
    assert job.status == "done" and job.method == "surm_circulant", job.error
    assert job.config["groups"] == ["fit"] and job.config["draws"] == MIN_NULL_DRAWS
    with ProbeStore(db) as ps:
        rows = ps.rows(job.job_key)
    nulls = [r for r in rows if r.null is not None]
    assert len({r.matrix for r in nulls}) == OWN_NULL_MATRICES and {r.probe for r in nulls} == {"fit"}
    assert {r.null for r in nulls} == {"perm"} and min(r.n for r in nulls) >= MIN_NULL_DRAWS
    circ = [r for r in nulls if r.stat == "circulant"]
    assert all(r.value > 0.99 and r.z > 3 for r in circ)  # a circulant update IS circulant
    surm = next(x for x in grade_all(Evidence.from_store(db)) if x.method == "surm_circulant")
    control = surm.geometry[0].control
    assert control is not None and control.status == "supported" and not control.numbers["counts"]
    assert surm.geometry_modifier == 0.0
    again = probe_store(db, cfg, base_loader=base_loader, log=None)  # resumes: the finished job is kept
    assert next(j for j in again if j.kind == "method").job_key == job.job_key
