"""``peftatlas methods [NAME]``: the registered methods, or everything about one of them.

Without a name: a table of every method (``--family`` filters, ``--json`` adds defaults). With a
name: its hyperparameters (type, default, meaning), parameter formula, layer types, mergeability,
pseudocode, hypothesis and paper (:func:`peftatlas.describe`).
"""

from __future__ import annotations

import argparse
import json

from ..core.method import config_to_dict, registered_methods
from ..method_info import describe, layer_types, render, resolve_family


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
            "layer_types": ",".join(layer_types(cls)),
            "defaults": config_to_dict(cls.Config()),
            "summary": cls.summary,
        })
    return rows


def run(args: argparse.Namespace) -> int:
    family = resolve_family(args.family) if args.family else None
    if args.name:
        d = describe(args.name)
        if family and d.family != family:
            raise ValueError(f"method {d.name!r} is in family {d.family!r}, not {family!r}")
        print(json.dumps(d.to_dict(), indent=2, default=repr) if args.json else render(d))
        return 0
    rows = method_rows()
    if family:
        rows = [r for r in rows if r["family"] == family]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    headers = ["method", "family", "mergeable", "mixed_batch", "layer_types", "params_per_layer"]
    table = [[str(r[h]) for h in headers] for r in rows]
    widths = [max(len(h), *(len(t[i]) for t in table)) if table else len(h) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for t in table:
        print("  ".join(c.ljust(w) for c, w in zip(t, widths)))
    print(f"\n{len(rows)} method(s). One method: peftatlas methods NAME; defaults: --json")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("methods", help="list registered methods, or describe one (peftatlas methods lora)")
    p.add_argument("name", nargs="?", help="describe this method: hyperparameters, formula, pseudocode, paper")
    p.add_argument("--family", help="only this family (e.g. low-rank, rotation); unknown names are refused")
    p.add_argument("--json", action="store_true", help="machine-readable output with default hyperparameters")
    p.set_defaults(func=run)
