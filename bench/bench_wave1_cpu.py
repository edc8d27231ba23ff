"""Wave-1 CPU benchmark: training steps of OFT, OFTv2, BOFT and HRA, peftatlas vs HF PEFT 0.21.

One frozen ``nn.Linear(width, width)`` fed ``tokens`` rows (default 2048 × 1024 rows), one adapter
on it; a step = forward + loss + backward + AdamW step. Everything runs in one process: the frozen
floor, ours and PEFT's (loaded from our adapter through ``peftatlas.interop``, so both compute the
same function on the same numbers; the ``max abs diff`` column checks that), alternating in shuffled
order, median of ``--repeats`` (≥ 10) after ``--warmup``. Writes ``<out>.json`` (every sample) and
``<out>.md`` (ratios ours/PEFT and × floor).

    python bench/bench_wave1_cpu.py                        # width 2048, 1024 tokens, 10 repeats
    python bench/bench_wave1_cpu.py --repeats 15 --threads 2 --out bench/results/wave1_cpu
    python bench/bench_wave1_cpu.py --methods oft,hra,boft_m2,dora

Configurations (PEFT's defaults or its benchmark's): OFT b=32 with the exact Cayley transform
(PEFT ``use_cayley_neumann=False``), OFTv2 b=32 with the 5-term Cayley–Neumann series (PEFT's
default OFT), BOFT b=4 with one butterfly factor (on CPU PEFT 0.21 silently keeps a single factor,
so that is the only comparable BOFT), HRA r=8. ``boft_m2`` times our BOFT with two real butterfly
factors (no PEFT counterpart on CPU). Absolute times on a shared CPU are noise; read the ratios.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as H

# name -> (peftatlas method, hyperparameters, compare with PEFT?)
CONFIGS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "oft": ("oft", {"block_size": 32}, True),
    "oftv2": ("oftv2", {"block_size": 32}, True),
    "boft": ("boft", {"block_size": 4, "n_factors": 1}, True),
    "hra": ("hra", {"r": 8}, True),
    "boft_m2": ("boft", {"block_size": 4, "n_factors": 2}, False),
    "dora": ("dora", {"r": 8, "alpha": 16}, True),
}
DEFAULT = "oft,oftv2,boft,hra"


def perturb(model: Any, seed: int = 0, scale: float = 0.02) -> None:
    """Move every adapter parameter off its init, so both libraries compute a real rotation."""
    g = torch.Generator().manual_seed(seed)
    for name in sorted(model.adapted_layers()):
        for adapter in model.adapted_layers()[name].adapters.values():
            adapter.perturb_(g, scale)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: leave)")
    p.add_argument("--methods", default=DEFAULT, help="comma-separated subset of " + ", ".join(CONFIGS))
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "wave1_cpu"))
    args = p.parse_args(argv)
    if args.repeats < 10:
        p.error("--repeats must be ≥ 10 (medians of fewer samples are too noisy on a shared CPU)")
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        p.error(f"unknown method(s) {unknown}; choose from {', '.join(CONFIGS)}")

    wl = H.linear_workload(width=args.width, tokens=args.tokens)
    with H.threads(args.threads):
        cands = [H.floor(wl)]
        for name in names:
            method, hp, compare = CONFIGS[name]
            mine = H.ours(wl, method, label=f"ours:{name}", **hp)
            perturb(mine.model)
            if not compare:
                mine.method = name  # its own row, without a PEFT column
                cands.append(mine)
                continue
            cands += [mine, H.peft(wl, method, label=f"peft:{name}", source=mine, **hp)]
        table = H.measure(cands, mode="train", warmup=args.warmup, repeats=args.repeats)
    note = (f"Training step (forward + backward + AdamW) of one {args.width}×{args.width} linear layer on "
            f"{args.tokens} rows, CPU, {table.context['threads']} threads; {args.repeats} alternating rounds "
            f"after {args.warmup} warm-up; ours/PEFT < 1 means peftatlas is faster.")
    json_path, md_path = H.write_report([table], args.out, note=note)
    for row in table.rows():
        print(f"{row['method']:>10}: ours {row['ours_ms']:8.1f} ms  PEFT {row.get('peft_ms', float('nan')):8.1f} ms"
              f"  ours/PEFT {row.get('ours_over_peft', float('nan')):.2f}  ours×floor {row['ours_x_floor']:.2f}"
              f"  PEFT×floor {row.get('peft_x_floor', float('nan')):.2f}  max|Δy| {row.get('max_abs_diff')}")
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
