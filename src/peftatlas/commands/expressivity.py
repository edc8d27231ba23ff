"""``peftatlas expressivity vera|goft|surm``: synthetic fits of the seed methods, written as CSV/JSON/PNG."""

from __future__ import annotations

import argparse

from ..expressivity import COLUMNS, EXPERIMENTS, format_table, run_experiment


def run(args: argparse.Namespace) -> int:
    names = list(EXPERIMENTS) if args.experiment == "all" else [args.experiment]
    for name in names:
        result = run_experiment(name, quick=args.quick, seed=args.seed)
        files = result.write(args.out)
        print(f"== {name}: {result.settings['seconds']:.1f} s ({'quick' if args.quick else 'full'} size)")
        print(format_table(result.summary, COLUMNS[name]))
        print("wrote " + ", ".join(str(p) for p in files.values()))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("expressivity", help="synthetic expressivity experiments (VeRA app. E, GOFT rotations, "
                                            "SURM approximation)")
    p.add_argument("experiment", choices=[*EXPERIMENTS, "all"], help="which experiment to run")
    p.add_argument("--out", default="expressivity", help="folder for the CSV/JSON tables and the PNG plot")
    p.add_argument("--quick", action="store_true", help="reduced sizes (seconds; for smoke tests)")
    p.add_argument("--seed", type=int, default=0, help="random seed (targets, restarts, VeRA bases)")
    p.set_defaults(func=run)
