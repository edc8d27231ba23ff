"""``peftatlas run``: run (or resume) an evidence profile into the results store and print the table."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time


def run(args: argparse.Namespace) -> int:
    from ..evidence.arena import format_table, run_profile
    from ..evidence.profiles import get_profile

    profile = get_profile(args.profile)
    changes = {k: v for k, v in (("model", args.model), ("task", args.task)) if v}
    if changes:  # the model and the data fingerprint enter every run key, so results never mix
        profile = dataclasses.replace(profile, **changes)
    store = args.store or f"runs/{profile.name}.sqlite"
    methods = [m for group in args.methods for m in group.split(",") if m] if args.methods else None
    if args.resume_from:
        from ..evidence.shipped import ShippedError, load, read
        from ..evidence.store import ResultsStore

        try:
            shipped = read(args.resume_from)  # a bad folder fails here, before the store is created or opened
            with ResultsStore(store) as opened:
                added = load(args.resume_from, opened, shipped)
        except (OSError, ShippedError) as e:
            raise SystemExit(f"peftatlas run: --resume-from: {e}") from None
        print(f"resume: {added} record(s) from {args.resume_from} added to {store}")
    t0 = time.time()
    with _shipping(store, args.ship, args.ship_every):
        records = run_profile(profile, store, methods=methods, progress=not args.quiet, jobs=args.jobs,
                              executor=args.executor, address=args.address, artifacts=args.artifacts)
    print(format_table(records))
    failed = [r for r in records if r.status == "failed"]
    print(f"\n{len(records)} record(s) in {store}; {len(failed)} failed; wall {time.time() - t0:.0f} s")
    for r in failed:
        print(f"  failed: {r.method} lr={r.lr:g} seed={r.seed} ({r.experiment}): {r.error}")
    return 1 if failed and not args.allow_failures else 0


def _shipping(store: str, folder: str | None, minutes: float) -> contextlib.AbstractContextManager:
    """With ``--ship FOLDER``: export the store to FOLDER every ``minutes`` and at the end; else nothing."""
    if folder is None:
        return contextlib.nullcontext()
    if minutes <= 0:
        raise SystemExit(f"peftatlas run: --ship-every must be positive, got {minutes:g}")
    from ..evidence.shipped import PeriodicExport

    return PeriodicExport(store, folder, every=60.0 * minutes)


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..evidence.profiles import PROFILES

    p = sub.add_parser("run", help="run an evidence profile (budget-matched LR sweeps, seeds, OOD) into a store",
                       description="Run (or resume: finished runs are never redone) an evidence profile. "
                                   + " ".join(f"{k}: {v.description}." for k, v in PROFILES.items()))
    p.add_argument("--profile", choices=sorted(PROFILES), default="smoke")
    p.add_argument("--store", help="SQLite results file (default: runs/<profile>.sqlite); adapters are "
                                   "saved in an 'artifacts' folder beside it")
    p.add_argument("--methods", nargs="+", help="only these registered methods (space or comma separated)")
    p.add_argument("--model", help="instead of the profile's model: 'minilm', 'tiny-bert', a local folder or a "
                                   "Hugging Face model id (needs network)")
    p.add_argument("--task", help="instead of the profile's task: mr, trec6, sms_spam, or csv:PATH / jsonl:PATH "
                                  "(columns text, label, optional split)")
    p.add_argument("--jobs", default="auto", help="runs trained side by side in worker processes (default auto: "
                                                  "2 on a CPU with ≥ 2 cores, 1 with a GPU)")
    p.add_argument("--executor", choices=("sequential", "processes", "ray"),
                   help="who runs the plan (default: processes when --jobs resolves to > 1, else sequential); "
                        "ray needs the extra: pip install 'peftatlas[ray]'")
    p.add_argument("--address", help="ray: the cluster to join ('auto', or HOST:PORT of its head); default: "
                                     "start a local one on 127.0.0.1")
    p.add_argument("--artifacts", help="adapter folder (default: 'artifacts' beside the store); with Ray on "
                                       "several nodes, adapters up to 16 MiB come back to the driver, larger ones "
                                       "need a path on a filesystem every node shares")
    p.add_argument("--resume-from", metavar="FOLDER",
                   help="first load a shipped results folder (records.jsonl + plans/, as written by "
                        "`python -m peftatlas.evidence.shipped export`) into the store; finished runs are skipped")
    p.add_argument("--ship", metavar="FOLDER",
                   help="while running, export the store to this shipped folder (records, plans, probes) every "
                        "--ship-every minutes and at the end, so an interrupted window keeps its results "
                        "(commit the folder; resume with --resume-from FOLDER)")
    p.add_argument("--ship-every", type=float, default=15.0, metavar="MINUTES",
                   help="minutes between exports with --ship (default 15)")
    p.add_argument("--quiet", action="store_true", help="no per-run log lines or progress bars")
    p.add_argument("--allow-failures", action="store_true", help="exit 0 even if some runs failed")
    p.set_defaults(func=run)
