"""``peftatlas probe --store PATH``: geometry probes of the stored full fine-tuning updates, against nulls."""

from __future__ import annotations

import argparse

from ..geometry.runner import ProbeConfig, auto_jobs, probe_store


def probe_jobs(value: str | int | None) -> int:
    """``--jobs``: a positive integer, or "auto" (one process per core, at most 4)."""
    if value in (None, "auto"):
        return auto_jobs()
    n = int(value)
    if n < 1:
        raise SystemExit(f"--jobs must be ≥ 1 or 'auto', got {value!r}")
    return n


def config_from_args(args: argparse.Namespace) -> ProbeConfig:
    return ProbeConfig(draws=args.draws, budget=args.budget, k=args.k, max_matrices=args.max_matrices,
                       seed=args.seed, methods=not args.no_methods, jobs=probe_jobs(getattr(args, "jobs", 1)))


def restore(store_path: str, log) -> int:
    """Train again the probed full fine-tuning runs whose folders are gone (``--retrain-missing``); how many."""
    from pathlib import Path

    from ..evidence.artifacts import restore_probed
    from ..evidence.plan import build_plan
    from ..evidence.profiles import get_profile
    from ..evidence.store import ResultsStore

    if not Path(store_path).is_file():
        raise SystemExit(f"peftatlas probe: results database {store_path} does not exist")
    with ResultsStore(store_path) as store:
        profiles = sorted({r.profile for r in store.records(method="full", experiment="main") if r.profile})
        restored = 0
        for name in profiles:
            plan = build_plan(get_profile(name), methods=["full"], log=log)
            restored += len(restore_probed(plan, store, log=log))
    return restored


def run(args: argparse.Namespace) -> int:
    if args.retrain_missing:
        log = print if not args.quiet else (lambda s: None)
        print(f"probe: {restore(args.store, log)} full fine-tuning update(s) trained again for the probes")
    jobs = probe_store(args.store, config_from_args(args), log=None if args.quiet else print)
    failed = [j for j in jobs if j.status != "done"]
    print(f"probe: {len(jobs)} job(s), {sum(j.n_matrices for j in jobs)} matrices, {len(failed)} failed "
          f"(results in {args.store}, tables probe_jobs / probe_rows)")
    for j in failed:
        print(f"  failed: {j.kind} {j.model}/{j.task}/{j.method}: {j.error}")
    return 1 if failed else 0


def add_arguments(p: argparse.ArgumentParser, draws: int | None = 100) -> None:
    per = "per profile: smoke 5, otherwise 100" if draws is None else str(draws)
    p.add_argument("--draws", type=int, default=draws, help=f"null matrices per null model (default {per}; "
                   "0 = values only, no nulls)")
    p.add_argument("--budget", type=int, default=None,
                   help="parameter budget of the equal-budget fits (default: a rank-1 LoRA's, d_out + d_in)")
    p.add_argument("--k", type=int, default=8, help="subspace size of the W0-alignment statistics (default 8)")
    p.add_argument("--max-matrices", type=int, default=None,
                   help="probe at most this many matrices, spread over module kinds and depth (default: all; "
                   "atlas --profile quick: 12)")
    p.add_argument("--seed", type=int, default=0, help="seed of the null draws")
    p.add_argument("--no-methods", action="store_true", help="skip the spectra of other methods' own updates")
    p.add_argument("--quiet", action="store_true", help="only print the summary")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help="geometry probes of the full fine-tuning updates in a results database")
    p.add_argument("--store", required=True, help="results database (SQLite) written by `peftatlas run`")
    p.add_argument("--retrain-missing", action="store_true",
                   help="first train again the probed full fine-tuning main runs (two lowest seeds) whose saved "
                        "update is gone, e.g. after resuming from shipped records; their records keep their metrics")
    p.add_argument("--jobs", default="auto", help="processes sharing the matrices of a job (default auto: one "
                                                  "per core, at most 4; results do not depend on it)")
    add_arguments(p)
    p.set_defaults(func=run)
