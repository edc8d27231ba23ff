"""``peftatlas report --store PATH --out DIR``: the atlas as static HTML + Markdown with plots.

``--store`` is a results database, or a shipped results folder (``records.jsonl``, e.g. ``results/catalog``);
``--shipped FOLDER [FOLDER ...]`` takes one or more (one per profile: the catalog and the other settings'
CPU profiles): their records go into a temporary store and the atlas is rendered from it, byte-identical
on every rebuild from the same records. ``docs/atlas`` is rebuilt this way::

    peftatlas report --shipped results/* --out docs/atlas     # results/catalog, results/vit_cpu, ...
"""

from __future__ import annotations

import argparse

from ..report import build_report


def run(args: argparse.Namespace) -> int:
    source = args.shipped or args.store  # --shipped: a list of folders
    if source is None:
        raise ValueError("give --store PATH (a results database or a shipped folder) or --shipped FOLDER")
    result = build_report(source, args.out)
    print(f"report: {len(result.pages)} pages, {len(result.plots)} plots → {result.index_html} "
          f"(Markdown: {result.index_md})")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="render the atlas (HTML + Markdown + PNG plots) from a results database "
                                      "or a shipped results folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--store", help="results database (SQLite), or a folder with records.jsonl")
    src.add_argument("--shipped", metavar="FOLDER", nargs="+",
                     help="shipped results folder(s) (records.jsonl), e.g. results/catalog results/vit_cpu")
    p.add_argument("--out", required=True, help="output folder (created; existing pages are overwritten)")
    p.set_defaults(func=run)
