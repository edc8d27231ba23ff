"""Structured-method CPU benchmark: SURM and GOFT training steps against the frozen dense floor.

One frozen ``nn.Linear(1024, 1024)`` fed 4096 token rows (the input requires grad, as for a layer
inside a network). The floor is that layer's forward + backward to its input; each method's step is
forward + loss + backward + AdamW step on its adapter (the optimizer step on ≤ 2k parameters is
negligible). Candidates alternate in shuffled order; median of ``--repeats`` rounds after ``--warmup``.
Targets: circulant and GOFT ≤ 3× the floor and ≤ 1.5× the LoRA closest in parameter count (rank 1:
2d parameters, against circulant's 2d and GOFT's d − 1). Writes ``<out>.json`` (every sample) and ``<out>.md``.

    python bench/bench_structured_cpu.py                        # 1024 wide, 4096 tokens, 10 repeats
    python bench/bench_structured_cpu.py --threads 2 --repeats 15 --methods surm_circulant,goft,lora_r1
    python bench/bench_structured_cpu.py --width 2048 --tokens 1024 --out bench/results/structured_cpu_2048

HF PEFT has no SURM or GOFT, so there is no PEFT column; LoRA r=8 is a familiar yardstick, LoRA r=1
the equal-parameter one.
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

# label → (method, hyperparameters)
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "surm_circulant": ("surm_circulant", {}),
    "goft": ("goft", {}),
    "qgoft": ("qgoft", {}),
    "surm_toeplitz": ("surm_toeplitz", {}),
    "surm_kronecker": ("surm_kronecker", {}),
    "surm_ldr": ("surm_ldr", {"r": 1}),
    "lora": ("lora", {"r": 8}),
    "lora_r1": ("lora", {"r": 1}),  # the LoRA closest in parameters to circulant (2d) and GOFT (d − 1)
}
TARGET_X_FLOOR = 3.0
TARGET_X_LORA = 1.5
EQUAL_COUNT_LORA = "lora_r1"


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
            method, hp = CONFIGS[m]
            mine = H.ours(wl, method, label=f"ours:{m}", **hp)
            perturb(mine.model)
            cands.append(mine)
        table = H.measure(cands, mode="train", warmup=args.warmup, repeats=args.repeats)
    floor_ms = table.get("floor").median
    lora = table.get(f"ours:{EQUAL_COUNT_LORA}")
    verdicts = []
    lines = [f"{'floor':>15}: {floor_ms:8.1f} ms"]
    for label in methods:
        t = table.get(f"ours:{label}")
        flag = ""
        if label in ("surm_circulant", "goft"):
            ok = t.median / floor_ms <= TARGET_X_FLOOR
            flag = f"  ×floor target {'met' if ok else 'MISSED'}"
            if lora is not None:
                ratio, lo, hi = H.paired_ratio(t.samples_ms, lora.samples_ms)
                verdict = 'met' if ratio <= TARGET_X_LORA else 'MISSED'
                flag += f"; ×LoRA r=1 {ratio:.2f} (95% CI {lo:.2f}–{hi:.2f}, {verdict})"
                verdicts.append(f"{label} {ratio:.2f}× LoRA r=1 (95% CI {lo:.2f}–{hi:.2f}; target ≤ "
                                f"{TARGET_X_LORA}: {verdict})")
        lines.append(f"{label:>15}: {t.median:8.1f} ms  ×floor {t.median / floor_ms:.2f}  spread {t.spread:.2f}  "
                     f"trainable {t.n_trainable}{flag}")
    note = (f"Training step of one frozen {args.width}×{args.width} linear layer on {args.tokens} rows, CPU, "
            f"{table.context['threads']} threads, load average {table.context['loadavg']}; floor = frozen "
            f"forward + backward to the input; {args.repeats} alternating rounds after {args.warmup} warm-up. "
            f"Targets: ≤ {TARGET_X_FLOOR:.0f}× floor and ≤ {TARGET_X_LORA}× LoRA r=1 (the LoRA closest in "
            f"parameter count; median of paired per-round ratios) for surm_circulant and goft."
            + ("\n\n" + "\n".join(f"- {v}" for v in verdicts) if verdicts else ""))
    json_path, md_path = H.write_report([table], args.out, note=note)
    print("\n".join(lines))
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
