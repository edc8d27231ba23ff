"""Run the peftatlas-vs-PEFT benchmark suites and write ``bench/results/<suite>.{json,md}``.

    python bench/run_bench.py --suite cpu                    # linear 1024/2048/4096 + small Llama + serving
    python bench/run_bench.py --suite cpu --widths 2048 --methods lora,vera --repeats 15
    python bench/run_bench.py --suite gpu                    # CUDA: Llama 0.95B, bf16, batch 8×512, all linear
    python bench/run_bench.py --suite serving                # mixed-adapter batches only

Every method both libraries have (``peftatlas.interop.converters()``) is timed unless
``--methods`` narrows it. Hyperparameters: :data:`BENCH_HP` (the PEFT-benchmark defaults), else
the method's own defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as H
from peftatlas.interop import converters

RESULTS = Path(__file__).resolve().parent / "results"

# Sizes used by PEFT's own benchmark where it has one (method_comparison/), else the paper's.
BENCH_HP: dict[str, dict[str, Any]] = {
    "lora": {"r": 8, "alpha": 16},
    "vera": {"r": 256},
    "dora": {"r": 8, "alpha": 16},
    "oft": {"block_size": 32},  # exact Cayley ↔ PEFT use_cayley_neumann=False
    "oftv2": {"block_size": 32},  # Cayley–Neumann ↔ PEFT's default OFT
    "boft": {"block_size": 4, "n_factors": 1},  # PEFT 0.21 keeps one factor on CPU
    "hra": {"r": 8},
    "ia3": {},
    "loha": {"r": 8},
    "lokr": {"r": 8},
    "fourierft": {"n_frequency": 1000, "scaling": 150.0},
    "c3a": {"block_size": 64},
    "vblora": {"r": 4, "num_vectors": 256, "vector_length": 256, "init": "paper"},  # paper init converts
}


def methods_to_run(arg: str | None) -> list[str]:
    both = list(converters())
    if not arg:
        return both
    wanted = [m.strip() for m in arg.split(",") if m.strip()]
    missing = [m for m in wanted if m not in both]
    if missing:
        raise SystemExit(f"no PEFT counterpart for {missing}; comparable methods: {', '.join(both)}")
    return wanted


def hp_for(method: str, overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    import peftatlas as pa

    hp = dict((overrides or {}).get(method, BENCH_HP.get(method, {})))
    fields = {f.name for f in dataclasses.fields(pa.get_method(method).Config)}
    return {k: v for k, v in hp.items() if k in fields}


def compare(wl: H.Workload, methods: list[str], modes: list[str], repeats: int, warmup: int,
            grouped: bool = False, log: Any = print) -> list[H.Table]:
    """Floor + (ours, PEFT) for each method on one workload; one table per mode.

    ``grouped`` measures one method at a time (floor, ours, PEFT), freeing each pair afterwards —
    for large models on a GPU, where all pairs cannot be resident together.
    """
    fl = H.floor(wl)
    pending: list[H.Candidate] = [fl]
    per_mode: dict[str, list[H.Table]] = {m: [] for m in modes}
    for m in methods:
        hp = hp_for(m)
        try:
            mine = H.ours(wl, m, **hp)
            theirs = H.peft(wl, m, source=mine, **hp)
        except Exception as e:  # a method that cannot take this shape: say so, keep going
            log(f"  skip {m} on {wl.name}: {type(e).__name__}: {e}")
            continue
        if not grouped:
            pending += [mine, theirs]
            continue
        for mode in modes:
            per_mode[mode].append(H.measure([fl, mine, theirs], mode=mode, warmup=warmup, repeats=repeats))
        log(f"  {wl.name} {m}: done")
        del mine, theirs
        _free(wl.device)
    if grouped:
        return [H.combine(per_mode[mode]) for mode in modes if per_mode[mode]]
    tables = []
    for mode in modes:
        t0 = time.time()
        tables.append(H.measure(pending, mode=mode, warmup=warmup, repeats=repeats))
        log(f"  {wl.name} {mode}: {time.time() - t0:.0f}s")
    return tables


def _free(device: str) -> None:
    import gc

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def suite_cpu(args: argparse.Namespace) -> tuple[list[H.Table], list[dict[str, Any]]]:
    methods = methods_to_run(args.methods)
    tables: list[H.Table] = []
    for width in [] if args.skip_linear else args.widths:
        tables += compare(H.linear_workload(width, args.tokens), methods, args.modes, args.repeats, args.warmup)
    if not args.skip_llama:
        wl = H.llama_workload("cpu-small", batch=2, seq=128)
        tables += compare(wl, methods, args.modes, args.repeats, args.warmup)
    mixed = [] if args.skip_serving else suite_serving(args)[1]
    return tables, mixed


def suite_serving(args: argparse.Namespace, device: str = "cpu") -> tuple[list[H.Table], list[dict[str, Any]]]:
    out = []
    wl = H.linear_workload(1024, 1, device=device)  # placeholder for shape; rows set below
    g = torch.Generator().manual_seed(3)
    rows, tokens = 512, 4
    x = torch.randn(rows, tokens, 1024, generator=g).to(device)
    wl = H.Workload(name="linear-1024", build=wl.build, inputs={"x": x}, loss=wl.loss, targets=wl.targets,
                    grad_input="x", device=device, info={"shape": "linear", "d_in": 1024, "d_out": 1024,
                                                         "rows": rows, "tokens_per_row": tokens})
    wanted = set(args.methods.split(",")) if args.methods else {"lora", "vera"}
    for method, hp in (("lora", {"r": 8, "alpha": 16}), ("vera", {"r": 256})):
        if method not in wanted:
            continue
        t0 = time.time()
        out.append(H.mixed_batch_timings(wl, method, n_adapters=(1, 8, 64, 512), repeats=args.repeats,
                                         warmup=args.warmup, with_peft=(1, 8, 64), **hp))
        print(f"  serving {method}: {time.time() - t0:.0f}s")
    return [], out


@dataclasses.dataclass(frozen=True)
class LlamaPlan:
    """The GPU suite's workloads: a Llama preset trained at ``batch × seq`` and served at
    ``serve_rows × serve_seq`` with ``n_adapters`` distinct LoRA adapters."""

    preset: str = "llama-0.95b"
    device: str = "cuda"
    dtype: torch.dtype = torch.bfloat16
    batch: int = 8
    seq: int = 512
    serve_rows: int = 512
    serve_seq: int = 16
    n_adapters: tuple[int, ...] = (1, 8, 64, 512)
    peft_adapters: tuple[int, ...] = (1, 8, 64)


def run_llama_plan(plan: LlamaPlan, args: argparse.Namespace) -> tuple[list[H.Table], list[dict[str, Any]]]:
    """Every comparable method on the plan's Llama (one method resident at a time), then serving."""
    methods = methods_to_run(args.methods)
    wl = H.llama_workload(plan.preset, batch=plan.batch, seq=plan.seq, device=plan.device, dtype=plan.dtype)
    tables = compare(wl, methods, args.modes, args.repeats, args.warmup, grouped=True)
    mixed = []
    if not args.skip_serving:
        serve = H.llama_workload(plan.preset, batch=plan.serve_rows, seq=plan.serve_seq, device=plan.device,
                                 dtype=plan.dtype)
        mixed.append(H.mixed_batch_timings(serve, "lora", n_adapters=plan.n_adapters, repeats=args.repeats,
                                           warmup=args.warmup, with_peft=plan.peft_adapters, r=16, alpha=32))
    return tables, mixed


def suite_gpu(args: argparse.Namespace) -> tuple[list[H.Table], list[dict[str, Any]]]:
    """CUDA: Llama 0.95B, bf16, batch 8×512, adapters on all linear layers, plus serving."""
    if not torch.cuda.is_available():
        raise SystemExit("--suite gpu needs CUDA; this machine has none (use --suite cpu)")
    return run_llama_plan(LlamaPlan(), args)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=("cpu", "gpu", "serving"), default="cpu")
    p.add_argument("--methods", help="comma-separated method names (default: every method PEFT also has)")
    p.add_argument("--widths", type=lambda s: [int(w) for w in s.split(",")], default=[1024, 2048, 4096])
    p.add_argument("--tokens", type=int, default=1024, help="input rows of the single-layer workload")
    p.add_argument("--modes", type=lambda s: s.split(","), default=["train", "infer"])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--skip-linear", action="store_true", help="no single-layer workloads (CPU suite)")
    p.add_argument("--skip-llama", action="store_true")
    p.add_argument("--skip-serving", action="store_true")
    p.add_argument("--out", default=None, help="output path without suffix (default bench/results/<suite>)")
    p.add_argument("--note", default="")
    args = p.parse_args(argv)
    with H.threads(args.threads):
        run = {"cpu": suite_cpu, "gpu": suite_gpu, "serving": suite_serving}[args.suite]
        tables, mixed = run(args)
    out = Path(args.out) if args.out else RESULTS / args.suite
    js, md = H.write_report(tables, out, mixed, note=args.note)
    print(md.read_text())
    print(f"wrote {js} and {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
