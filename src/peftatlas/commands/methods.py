"""``peftatlas methods``: list registered methods with family, mergeability and parameter formula."""

from __future__ import annotations

import argparse
import json

from ..core.method import config_to_dict, registered_methods


def method_rows() -> list[dict[str, object]]:
    rows = []
    for name, cls in registered_methods().items():
        rows.append({
            "method": name,
            "family": cls.family,
            "mergeable": cls.mergeable,
            "mixed_batch": cls.supports_mixed_batch,
            "noop_at_init": cls.noop_at_init,
            "params_per_layer": cls.formula,
            "defaults": config_to_dict(cls.Config()),
            "summary": cls.summary,
        })
    return rows


def run(args: argparse.Namespace) -> int:
    rows = method_rows()
    if args.family:
        rows = [r for r in rows if r["family"] == args.family]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    headers = ["method", "family", "mergeable", "mixed_batch", "params_per_layer"]
    table = [[str(r[h]) for h in headers] for r in rows]
    widths = [max(len(h), *(len(t[i]) for t in table)) if table else len(h) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for t in table:
        print("  ".join(c.ljust(w) for c, w in zip(t, widths)))
    print(f"\n{len(rows)} method(s). Details: peftatlas methods --json")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("methods", help="list registered methods (family, mergeable, parameter formula)")
    p.add_argument("--family", help="only this family (e.g. low-rank, rotation)")
    p.add_argument("--json", action="store_true", help="machine-readable output with default hyperparameters")
    p.set_defaults(func=run)
