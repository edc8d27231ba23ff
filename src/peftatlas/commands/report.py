"""``peftatlas report --store PATH --out DIR``: the atlas as static HTML + Markdown with plots."""

from __future__ import annotations

import argparse

from ..report import build_report


def run(args: argparse.Namespace) -> int:
    result = build_report(args.store, args.out)
    print(f"report: {len(result.pages)} pages, {len(result.plots)} plots → {result.index_html} "
          f"(Markdown: {result.index_md})")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="render the atlas (HTML + Markdown + PNG plots) from a results database")
    p.add_argument("--store", required=True, help="results database (SQLite)")
    p.add_argument("--out", required=True, help="output folder (created; existing pages are overwritten)")
    p.set_defaults(func=run)
