"""Structured-method CPU benchmark: SURM and GOFT training steps against the frozen dense floor.

One frozen ``nn.Linear(1024, 1024)`` fed 4096 token rows (the input requires grad, as for a layer
inside a network). The floor is that layer's forward + backward to its input; each method's step is
forward + loss + backward + AdamW step on its adapter (the optimizer step on ≤ 2k parameters is
negligible). Candidates alternate in rotated order; median of ``--repeats`` rounds after ``--warmup``.
Target: circulant and GOFT ≤ 3× the floor. Writes ``<out>.json`` (every sample) and ``<out>.md``.

    python bench/bench_structured_cpu.py                        # 1024 wide, 4096 tokens, 10 repeats
    python bench/bench_structured_cpu.py --threads 2 --repeats 15 --methods surm_circulant,goft

HF PEFT has no SURM or GOFT, so there is no PEFT column; LoRA r=8 is included as a familiar yardstick.
Absolute times on a shared CPU are noise; read the ratios (``×floor``) and the spread.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as H

CONFIGS: dict[str, dict[str, Any]] = {
    "surm_circulant": {},
    "goft": {},
    "qgoft": {},
    "surm_toeplitz": {},
    "surm_kronecker": {},
    "surm_ldr": {"r": 1},
    "lora": {"r": 8},
}
TARGET_X_FLOOR = 3.0


def perturb(model: Any, seed: int = 0, scale: float = 0.02) -> None:
    g = torch.Generator().manual_seed(seed)
    for name in sorted(model.adapted_layers()):
        for adapter in model.adapted_layers()[name].adapters.values():
            adapter.perturb_(g, scale)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: leave)")
    p.add_argument("--methods", default=",".join(CONFIGS), help="comma-separated subset of " + ", ".join(CONFIGS))
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "structured_cpu"))
    args = p.parse_args(argv)
    if args.repeats < 5:
        p.error("--repeats must be ≥ 5 (medians of fewer samples are too noisy on a shared CPU)")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(CONFIGS))
    if unknown:
        p.error(f"unknown method(s) {unknown}; choose from {', '.join(CONFIGS)}")

    wl = H.linear_workload(width=args.width, tokens=args.tokens)
    with H.threads(args.threads):
        cands = [H.floor(wl)]
        for m in methods:
            mine = H.ours(wl, m, **CONFIGS[m])
            perturb(mine.model)
            cands.append(mine)
        table = H.measure(cands, mode="train", warmup=args.warmup, repeats=args.repeats)
    note = (f"Training step of one frozen {args.width}×{args.width} linear layer on {args.tokens} rows, CPU, "
            f"{table.context['threads']} threads, load average {table.context['loadavg']}; floor = frozen "
            f"forward + backward to the input; {args.repeats} alternating rounds after {args.warmup} warm-up. "
            f"Target: ≤ {TARGET_X_FLOOR:.0f}× floor for surm_circulant and goft.")
    json_path, md_path = H.write_report([table], args.out, note=note)
    floor_ms = table.get("floor").median
    print(f"{'floor':>15}: {floor_ms:8.1f} ms")
    for row in table.rows():
        flag = ""
        if row["method"] in ("surm_circulant", "goft"):
            flag = "  (target met)" if row["ours_x_floor"] <= TARGET_X_FLOOR else "  (TARGET MISSED)"
        print(f"{row['method']:>15}: {row['ours_ms']:8.1f} ms  ×floor {row['ours_x_floor']:.2f}  "
              f"spread {row['ours_spread']:.2f}  trainable {row['ours_trainable']}{flag}")
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
