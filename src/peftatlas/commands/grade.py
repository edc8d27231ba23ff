"""``peftatlas grade --store PATH``: measured grades (rubric on stored evidence) beside literature grades."""

from __future__ import annotations

import argparse
import json

from ..grading import Grade, grade_store
from ..grading.rubric import MEASURED_MAX
from ..report.site import GEO_SYMBOL


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:g}"


def grade_table(grades: list[Grade]) -> str:
    head = ["entry", "method", "measured", "outcome", "dims", "literature", "WA(lit)", "PE", "BL", "BF", "DE", "OOD",
            "geometry", "setting"]
    short = {"pass": "✓", "fail": "✗", "inconclusive": "?", "not measured": "·", "n/a": "n/a", "reference": "ref",
             "literature": "lit"}
    rows = []
    for g in grades:
        measured = "reference" if not g.entry.graded else _fmt(g.measured_points)
        if g.uncapped_points is not None:
            measured += f" (uncapped {g.uncapped_points:g})"
        geo = " ".join(GEO_SYMBOL[v.status] for v in g.geometry) or "·"
        where = g.where
        rows.append([g.entry.id, g.method or "(not registered)", measured, g.outcome, f"{g.measured_dims}/5",
                     _fmt(g.literature_points), "✓" if g.wa_literature else "—"]
                    + [short[g.verdicts[d].status] for d in ("PE", "BL", "BF", "DE", "OOD")] + [geo, where])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.append(f"\nmeasured points out of {MEASURED_MAX:g} (WA is the literature mark, beside); ✓ pass ✗ fail "
                 "? inconclusive · not measured; geometry per "
                 "prediction: + supported − contradicted 0 not significant. Details: peftatlas grade --explain ID")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    grades = grade_store(args.store)
    if args.json:
        print(json.dumps([g.as_dict() for g in grades], indent=2, default=str))
        return 0
    if args.explain:
        chosen = [g for g in grades if args.explain in (g.entry.id, g.method)]
        if not chosen:
            raise ValueError(f"no grade for {args.explain!r}; use an entry id or method name from `peftatlas grade`")
        for g in chosen:
            where = g.where
            print(f"{g.label} ({g.method or 'not registered'}): {g.outcome}, {g.measured_dims} of 5 dimensions "
                  f"measured; measured in {where}")
            for d, v in g.verdicts.items():
                print(f"  {d:<4}{v.status:<13}{v.points:g}  rule: {v.rule}\n      {v.derivation}")
            for gv in g.geometry:
                print(f"  geometry {gv.status}: {gv.prediction.meaning}\n      {gv.derivation}")
                if gv.control is not None:
                    print(f"      control {gv.control.status}: {gv.control.derivation}")
            print("  " + " + ".join(g.derivation[:-1]) + " " + g.derivation[-1])
            for line in g.disagreements:
                print(f"  disagreement: {line}")
        return 0
    print(grade_table(grades))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("grade", help="grade every catalog entry from a results database (rubric + literature)")
    p.add_argument("--store", required=True, help="results database (SQLite)")
    p.add_argument("--json", action="store_true", help="every grade with its derivation as JSON")
    p.add_argument("--explain", metavar="ID", help="the derivation of one entry or method")
    p.set_defaults(func=run)
