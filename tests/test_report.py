"""The atlas report renders from the store alone: every page, plot and link exists; gaps are said."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from atlas_fixtures import comparison_records, put, synthetic_probes
from peftatlas.catalog import ENTRIES
from peftatlas.cli import main
from peftatlas.report import build_report

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    db = put(root / "results.sqlite", comparison_records())
    synthetic_probes(db)
    return build_report(db, root / "site")


def _links(html: str, attr: str) -> list[str]:
    return re.findall(rf'{attr}="([^"]+)"', html)


def test_every_page_and_plot_exists(site):
    out = site.out
    assert site.index_html.is_file() and site.index_md.is_file() and (out / "style.css").is_file()
    for e in ENTRIES:
        assert (out / "methods" / f"{e.id}.html").is_file() and (out / "methods" / f"{e.id}.md").is_file()
    assert len(site.pages) == len(ENTRIES) + 1
    assert {p.name for p in site.plots} >= {"pareto.png", "ood.png", "ood_vs_id.png", "learning_curves.png",
                                            "probe_overview.png", "ood_vs_id_vera.png",
                                            "seed_overlap.png", "pareto_vera.png", "magdir_dora.png"}
    for p in set(site.plots):
        data = p.read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, p


def test_links_and_images_resolve(site):
    for page in site.pages:
        text = page.read_text()
        for src in _links(text, "src"):
            assert (page.parent / src).is_file(), (page, src)
        for href in _links(text, "href"):
            if href.startswith(("http://", "https://")):
                continue
            target = href.split("#")[0]
            assert (page.parent / target).is_file(), (page, href)
    md = site.index_md.read_text()
    for target in re.findall(r"\]\((methods/[^)#]+)", md):
        assert (site.out / target).is_file(), target


def test_scorecard_is_sorted_by_measured_grade_and_shows_both_grades(site):
    md = site.index_md.read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and "/methods/" not in line]
    card = [line for line in md.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(card) >= len(ENTRIES)
    assert "VeRA" in card[0] and "**7 / 7**" in card[0] and "5 of 5" in card[0]
    assert "tiny-bert · mr · budget 0.1% · 10 steps" in card[0]
    goft = next(line for line in card if "[GOFT" in line)
    assert "**1 / 7 (uncapped 3.5)**" in goft and "3 of 5" in goft
    lora = next(i for i, line in enumerate(card) if "LoRA (+" in line)  # graded 0 (failed tests) …
    assert "| graded |" in card[lora] and "(2 failed)" in card[lora]
    dora = next(i for i, line in enumerate(card) if "[DoRA]" in line)  # … ranks apart from "not measured"
    assert "| not measured |" in card[dora] and lora < dora
    order = [next(i for i, line in enumerate(card) if name in line) for name in ("VeRA", "LoRA (+", "DoRA")]
    assert order == sorted(order)
    assert "not measured yet" in next(line for line in card if "[DoRA]" in line)
    assert rows  # tables rendered
    html = site.index_html.read_text()
    assert 'id="scorecard"' in html and 'id="themes"' in html and 'id="rubric"' in html
    for fam in ("Low rank", "Rotation", "SVD basis"):
        assert f"<h3>{fam}</h3>" in html
    assert "disagree" in html


def test_method_pages_carry_hypothesis_pseudocode_derivation_and_literature(site):
    vera = (site.out / "methods" / "vera.md").read_text()
    entry = next(e for e in ENTRIES if e.id == "vera")
    assert entry.hypothesis in vera and entry.pseudocode.splitlines()[0] in vera
    assert "CI above +0 pt" in vera and "Derivation:" in vera and "7 / 7" in vera and "5 of 5 measured" in vera
    assert "Measured in:** tiny-bert · mr · budget 0.1% · 10 steps" in vera and "WA (literature, beside)" in vera
    assert entry.headline.source in vera and "pareto_vera.png" in vera
    goft = (site.out / "methods" / "goft.md").read_text()
    assert "Analytic override" in goft and "capped at 1" in goft and "uncapped sum 3.5" in goft
    dora = (site.out / "methods" / "dora.md").read_text()
    assert "Not measured yet" in dora and "magdir_dora.png" in dora  # no runs, but FT's geometry is probed
    assert "supported" in dora
    surm = (site.out / "methods" / "surm.html").read_text()
    assert "probe_surm_0.png" in surm and "surm_circulant" in surm


def test_grades_json_matches_the_rubric(site):
    data = json.loads((site.out / "grades.json").read_text())
    vera = next(d for d in data if d["method"] == "vera")
    assert vera["measured_points"] == pytest.approx(7.0) and vera["verdicts"]["BL"]["status"] == "pass"


def test_an_empty_store_renders_and_says_not_measured(tmp_path):
    from peftatlas.evidence.store import ResultsStore

    ResultsStore(tmp_path / "empty.sqlite").close()
    res = build_report(tmp_path / "empty.sqlite", tmp_path / "out")
    md = res.index_md.read_text()
    assert "No finished runs in this store" in md
    assert md.count("not measured yet") >= len(ENTRIES) - 2
    assert "Not measured yet" in (tmp_path / "out" / "methods" / "lora.md").read_text()
    assert res.plots == []
    # a method the arena never runs says so, with the reason, instead of waiting to be measured
    row = next(line for line in md.splitlines() if "[Trainable tokens]" in line)
    assert "does not apply" in row and "not measured yet" not in row
    page = (tmp_path / "out" / "methods" / "trainable_tokens.md").read_text()
    assert "does not apply" in page and "token ids" in page


def test_report_cli(tmp_path, capsys):
    db = put(tmp_path / "r.sqlite", comparison_records(seeds=(0, 1)))
    assert main(["report", "--store", str(db), "--out", str(tmp_path / "site")]) == 0
    assert "pages" in capsys.readouterr().out
    assert Path(tmp_path / "site" / "index.html").is_file()
    assert main(["report", "--store", str(tmp_path / "nope.sqlite"), "--out", str(tmp_path / "x")]) == 2


def test_atlas_runs_probe_grade_and_report_in_one_go(tmp_path, monkeypatch, capsys):
    """`peftatlas atlas` orchestration, with the arena replaced by a fake that writes known runs."""
    import peftatlas.evidence.arena as arena
    from atlas_fixtures import probe_records

    calls = []

    def fake_run_profile(profile, store_path, methods=None, progress=True, jobs=1):
        calls.append((profile, Path(store_path)))
        root = Path(store_path).parent
        recs = [r for r in comparison_records() if r.method != "full"] + probe_records(root)
        return put(Path(store_path), recs) and recs

    monkeypatch.setattr(arena, "run_profile", fake_run_profile)
    out = tmp_path / "atlas"
    assert main(["atlas", "--profile", "smoke", "--out", str(out), "--max-matrices", "2", "--quiet"]) == 0
    assert calls == [("smoke", out / "results.sqlite")]
    text = capsys.readouterr().out
    assert "atlas: 4/4 report" in text and "vera" in text
    assert (out / "index.html").is_file() and (out / "methods" / "lora.html").is_file()
    assert "probe_overview.png" in (out / "index.md").read_text()


def test_sweep_table_shows_every_sweep_seed_and_marks_the_chosen_rate_per_arm():
    """Two LoRA arms (r = 1, r = 5) swept at two rates on two seeds: one row per (arm, rate) with both
    seeds' validation accuracy and their mean, ✓ only on the rate each arm's main runs use."""
    from types import SimpleNamespace

    from peftatlas.grading.evidence import Arm
    from peftatlas.report.site import sweep_rows

    def run(r, lr, seed, val):
        return SimpleNamespace(method="lora", budget="0.1%", hyperparameters={"r": r, "targets": ["q", "v"]},
                               lr=lr, seed=seed, metrics={"val_acc": val})

    sweep = [run(1, 1e-3, 1, 0.70), run(1, 1e-3, 0, 0.60), run(1, 3e-3, 0, 0.80), run(1, 3e-3, 1, 0.82),
             run(5, 1e-3, 0, 0.90), run(5, 1e-3, 1, 0.88), run(5, 3e-3, 0, 0.50), run(5, 3e-3, 1, 0.52)]
    arms = [Arm("lora", "0.1%", [run(1, 3e-3, s, 0.8) for s in range(5)]),
            Arm("lora", "0.1%", [run(5, 1e-3, s, 0.9) for s in range(5)])]
    rows = sweep_rows(sweep, arms)
    assert [(row[2], row[3], row[-1]) for row in rows] == [("r=1", "0.001", ""), ("r=1", "0.003", "✓"),
                                                             ("r=5", "0.001", "✓"), ("r=5", "0.003", "")]
    assert rows[0][4] == "0.600 / 0.700 (seeds 0, 1)" and rows[0][5] == "0.650"


def test_a_layer_subset_matched_arm_reads_as_its_modules_and_blocks():
    """The plan names a layer-subset matched LoRA by a regex; grades and tables show "query, value on 3 of
    6 blocks" and the rank, so two matched arms of one method stay told apart."""
    from types import SimpleNamespace

    from peftatlas.grading.evidence import Arm
    from peftatlas.report.site import _arm_label

    regex = r"bert\.encoder\.layer\.(0|2|5)\.(attention\.self\.query|attention\.self\.value)"
    rec = SimpleNamespace(method="lora", budget="matched", hyperparameters={"r": 1, "targets": regex},
                          arm={"note": "matched LoRA for goft (4,596); r=1 on 3 of 6 blocks, 4,608 parameters"},
                          metrics={}, trainable_params=4608, seed=0)
    arm = Arm("lora", "matched", [rec])
    assert arm.targets_label == "query, value on 3 of 6 blocks"
    assert _arm_label(arm) == "lora @matched (r=1; query, value on 3 of 6 blocks)"
    plain = Arm("lora", "matched", [SimpleNamespace(**{**vars(rec), "arm": {},
                                                       "hyperparameters": {"r": 2, "targets": ["query", "value"]}})])
    assert plain.targets_label == "query, value" and _arm_label(plain) == "lora @matched (r=2; query, value)"
    assert Arm("lora", "matched", [SimpleNamespace(**{**vars(rec), "arm": {}})]).targets_label == \
        "query, value on blocks 0,2,5"


def test_targets_labels_keep_the_attention_output_apart_from_the_feed_forward_output():
    """Two modules both called ``dense`` (BERT's attention output and feed-forward output) must not merge
    into one "dense"; a name alternation over every block reads as its names."""
    from types import SimpleNamespace

    from peftatlas.grading.evidence import Arm

    def label(targets: object) -> str:
        rec = SimpleNamespace(method="lora", budget="matched", hyperparameters={"r": 2, "targets": targets},
                              arm={}, metrics={}, trainable_params=1, seed=0)
        return Arm("lora", "matched", [rec]).targets_label

    assert label(r"enc\.layer\.(0|2|3|5)\.(attention\.output\.dense|output\.dense)") == \
        "attention.output, output on blocks 0,2,3,5"
    assert label(r"enc\.layer\.(1)\.(attention\.self\.key|intermediate\.dense)") == "intermediate, key on blocks 1"
    assert label(r".*\.(q_proj|query|attention\.output\.dense)") == "any of: attention.output, q_proj, query"
    assert label("all-linear") == "all-linear"
