"""The atlas from shipped results (byte-identical rebuilds, partial stores) and grades by setting."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from atlas_fixtures import SEEDS, comparison_records, ood, put, record
from peftatlas.cli import main
from peftatlas.evidence import shipped
from peftatlas.evidence.store import ResultsStore
from peftatlas.grading import Evidence, grade_store
from peftatlas.grading.settings import SettingKey, agreement, claim_rows, entry_grades, grades_by_setting
from peftatlas.report import build_report


def _ship(tmp_path: Path, records: list, name: str = "catalog") -> Path:
    db = put(tmp_path / f"{name}.sqlite", records)
    with ResultsStore(db) as store:
        shipped.export(store, tmp_path / name)
    return tmp_path / name


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_report_from_a_shipped_folder_is_byte_identical_on_rebuild(tmp_path):
    folder = _ship(tmp_path, comparison_records())
    assert main(["report", "--store", str(folder), "--out", str(tmp_path / "a")]) == 0
    assert main(["report", "--shipped", str(folder), "--out", str(tmp_path / "b")]) == 0
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert set(a) == set(b) and any(k.endswith(".png") for k in a)
    assert [k for k in a if a[k] != b[k]] == []
    index = (tmp_path / "a" / "index.md").read_text()
    assert "Built from catalog" in index and "latest run" in index


def test_each_grade_shows_dimensions_measured_and_its_setting(tmp_path):
    res = build_report(_ship(tmp_path, comparison_records()), tmp_path / "site")
    vera = (res.out / "methods" / "vera.md").read_text()
    assert "5 of 5 measured" in vera
    assert "tiny-bert · mr · budget 0.1% · 10 steps" in vera  # model · task · budget · steps


def test_a_partial_store_says_not_measured_never_fail(tmp_path):
    """Arms not finished yet (head-only missing, VeRA at 3 of 5 seeds): those tests are not measured."""
    recs = [r for r in comparison_records() if r.method != "head_only" and not (r.method == "vera" and r.seed >= 3)]
    res = build_report(_ship(tmp_path, recs), tmp_path / "site")
    ev = Evidence.from_store(put(tmp_path / "p.sqlite", recs))
    grades = {g.method: g for gs in grades_by_setting(ev).values() for g in gs if g.method}
    assert all(v.status == "not measured" for d, v in grades["vera"].verdicts.items() if d != "WA")
    assert all(g.verdicts["PE"].status == "not measured" for g in grades.values() if g.entry.graded)
    assert grades["vera"].outcome == "not measured"
    page = (res.out / "methods" / "vera.md").read_text()
    assert "0 of 5" in page and "tiny-bert · mr · budget 0.1% · 10 steps" in page  # where, though unmeasured
    assert "needs ≥ 5 seeds" in page and "✗" not in page.split("## Grade by setting")[1].split("## ")[0]


def _on(model: str, rec, profile: str = "quick"):
    return dataclasses.replace(rec, model=model, profile=profile, key=f"{rec.key}-{model}-{profile}")


def two_model_records() -> list:
    """The encoder fixture (VeRA wins) and an LM where VeRA is clearly below LoRA and full FT (fails BL, BF)."""
    enc = [_on("encoder", r) for r in comparison_records()]
    lm = [_on("lm", r) for r in comparison_records() if r.method != "vera" and r.experiment == "main"]
    lm += [_on("lm", record("vera", s, 0.80 + 0.002 * s, params=520, ood=ood(0.80, 0.8))) for s in SEEDS]
    return enc + lm


def test_grades_by_setting_show_holds_on_one_model_fails_on_the_other(tmp_path):
    ev = Evidence.from_store(put(tmp_path / "two.sqlite", two_model_records()))
    by = grades_by_setting(ev)
    assert list(by) == [SettingKey("encoder", "mr", "quick"), SettingKey("lm", "mr", "quick")]
    per = entry_grades(by, "vera")
    assert per[SettingKey("encoder", "mr", "quick")].verdicts["BL"].status == "pass"
    assert per[SettingKey("lm", "mr", "quick")].verdicts["BL"].status == "fail"
    rows = {c.claim: c.agreement for c in claim_rows(per)}
    assert rows["BL"] == "disagree" and rows["BF"] == "disagree"
    res = build_report(tmp_path / "two.sqlite", tmp_path / "site")
    page = (res.out / "methods" / "vera.md").read_text()
    section = page.split("## Grade by setting")[1]
    assert "encoder · mr · quick" in section and "lm · mr · quick" in section and "disagree" in section
    index = res.index_md.read_text()
    assert "## Grades by setting" in index and "encoder · mr · quick" in index and "lm · mr · quick" in index


def test_profiles_of_one_model_are_separate_settings(tmp_path):
    recs = [_on("encoder", r, "quick") for r in comparison_records()]
    recs += [_on("encoder", r, "catalog") for r in comparison_records(seeds=(0, 1))]
    by = grades_by_setting(Evidence.from_store(put(tmp_path / "p.sqlite", recs)))
    quick, catalog = by[SettingKey("encoder", "mr", "quick")], by[SettingKey("encoder", "mr", "catalog")]
    vq = next(g for g in quick if g.method == "vera")
    vc = next(g for g in catalog if g.method == "vera")
    assert vq.measured_dims == 5 and vc.measured_dims == 0  # 2 catalog seeds are never pooled with 5 quick ones
    primary = next(g for g in grade_store(str(tmp_path / "p.sqlite")) if g.method == "vera")
    assert primary.measured_dims == 5 and len(primary.entry.methods) == 1  # the profile with most FT seeds


@pytest.mark.parametrize("statuses, expected", [
    (["pass", "pass"], "agree: holds"), (["fail", "not measured"], "agree: fails"), (["pass", "fail"], "disagree"),
    (["pass", "inconclusive"], "agree: holds"), (["inconclusive", "not measured"], "undecided"),
    (["not measured"], "not measured"), (["supported", "contradicted"], "disagree")])
def test_agreement(statuses, expected):
    assert agreement(statuses) == expected


def test_primary_setting_is_the_one_that_grades_the_most_entries(tmp_path):
    """A setting with more full fine-tuning seeds but nothing else graded (first by name, too) does not
    displace the one that grades every compared method."""
    from atlas_fixtures import record
    from peftatlas.grading.settings import primary_key

    recs = [_on("encoder", r) for r in comparison_records()]
    recs += [_on("aaa_model", record("full", s, 0.9)) for s in range(6)]
    ev = Evidence.from_store(put(tmp_path / "p.sqlite", recs))
    assert primary_key(ev) == SettingKey("encoder", "mr", "quick")
    assert any(g.method == "vera" and g.measured_dims == 5 for g in grade_store(str(tmp_path / "p.sqlite")))


def test_older_code_versions_of_a_method_are_superseded_not_pooled(tmp_path):
    """A method file changed mid-profile: its old seeds stay in the store, but the arm holds only the new
    code's runs (never a mix of two programs), probe jobs that read old runs drop out, and the report says so."""
    from peftatlas.geometry.store import ProbeJob, ProbeStore
    from peftatlas.report import build_report

    old = [dataclasses.replace(r, code_version="0.1.0+old", created=1.0) for r in comparison_records()]
    new = [dataclasses.replace(r, key=r.key + "-new", code_version="0.1.0+new", created=2.0)
           for r in comparison_records(seeds=(0, 1)) if r.method == "vera"]
    db = put(tmp_path / "s.sqlite", old + new)
    old_vera = [r.key for r in old if r.method == "vera"]
    with ProbeStore(db) as probes:
        probes.put_job(ProbeJob("reads-old", "method", old_vera[:2], old[0].model, old[0].task, "vera", {},
                                status="done", created=1.0))
    ev = Evidence.from_store(db)
    vera = [r for r in ev.records if r.method == "vera"]
    assert vera and {r.code_version for r in vera} == {"0.1.0+new"} and ev.superseded == len(old_vera)
    assert {r.code_version for r in ev.records if r.method == "lora"} == {"0.1.0+old"}  # other methods untouched
    assert not ev.jobs
    g = next(g for g in grade_store(str(db)) if g.method == "vera")
    assert g.measured_dims == 0  # 2 seeds of the new code: not measured, rather than 5 old + 2 new pooled
    index = build_report(db, tmp_path / "site").index_md.read_text()
    assert f"{len(old_vera)} older-code runs ignored (superseded)" in index


def test_an_entry_measured_only_outside_the_primary_setting_shows_that_grade_and_its_evidence(tmp_path):
    """The encoder grades the most entries (primary); BitFit runs only on the LM. Its scorecard row and
    page carry the LM grade, say so, and show the LM's runs — never 'not measured yet' beside real runs."""
    enc = [_on("encoder", r) for r in comparison_records() if r.method != "bitfit"]
    lm = [_on("lm", r) for r in comparison_records()
          if r.method in ("full", "head_only", "lora", "bitfit") and r.experiment == "main"]
    db = put(tmp_path / "two.sqlite", enc + lm)
    res = build_report(db, tmp_path / "site")
    index = res.index_md.read_text()
    assert "model `encoder`" in index  # the primary setting
    row = next(line for line in index.split("## Scorecard")[1].splitlines() if "methods/bitfit.md" in line)
    assert "graded" in row and "lm · mr" in row and "not measured yet" not in row
    page = (res.out / "methods" / "bitfit.md").read_text()
    assert "Nothing of this entry is measured in the primary setting (encoder · mr · quick)" in page
    assert "come from lm · mr · quick" in page and "has no finished runs" not in page.split("## Evidence")[1]
    assert "| bitfit | 2,000 | 0, 1, 2, 3, 4 |" in page.split("## Evidence")[1]  # the LM runs
    vera = (res.out / "methods" / "vera.md").read_text()  # measured in the primary: unchanged
    assert "Nothing of this entry is measured in the primary setting" not in vera


@pytest.mark.parametrize("statuses, decided", [
    (["pass", "pass", "pass"], (3, 3)), (["fail", "inconclusive", "not measured"], (1, 2)),
    (["not significant", "supported"], (1, 2)), (["not measured"], (0, 0))])
def test_a_claim_says_how_many_measuring_settings_decided_it(statuses, decided):
    from peftatlas.grading.settings import ClaimRow

    row = ClaimRow("BL", {SettingKey(f"m{i}", "t", "p"): s for i, s in enumerate(statuses)})
    assert row.decided == decided


def test_the_index_shows_the_probes_of_every_setting_that_has_them(tmp_path):
    """Probes measured only outside the primary setting still reach the index, under that setting's heading
    with their own plots; the settings without probes are named as not measured."""
    from atlas_fixtures import MODEL, synthetic_probes

    enc = [_on("encoder", r) for r in comparison_records()]
    other = [_on(MODEL, r) for r in comparison_records() if r.method in ("full", "head_only", "lora")
             and r.experiment == "main"]
    db = put(tmp_path / "two.sqlite", enc + other)
    synthetic_probes(db)
    res = build_report(db, tmp_path / "site")
    geometry = res.index_md.read_text().split("## Geometry of full fine-tuning's update")[1].split("## Themes")[0]
    assert f"### {MODEL} · mr · quick" in geometry and "spectral/energy_top8" in geometry
    assert "Probes not measured yet in: encoder · mr · quick." in geometry
    assert (res.out / "plots" / f"probe_overview_{MODEL}_mr_quick.png").is_file()
    lora = (res.out / "methods" / "lora.md").read_text()
    assert "of 2 decided)" in lora or "of 1 decided)" in lora  # an agreeing claim says how many decided it
