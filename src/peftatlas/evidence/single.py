"""One training run from the command line; works alone or under ``torchrun`` (DistributedDataParallel).

Usage::

    python -m peftatlas.evidence.single --model minilm --task mr --method lora --hp r=8 --lr 1e-3 --out OUT
    torchrun --nproc_per_node 2 -m peftatlas.evidence.single --model tiny-bert --task mr --method lora ...

Under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is initialised (NCCL on GPUs, gloo on CPU),
each rank trains on its share of every global batch, and rank 0 writes ``OUT/result.json``
(metrics and curve) and ``OUT/adapter`` (the trained adapter and head).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from ..core.io import save_adapter
from ..core.model import attach
from .data import load_task
from .models import load_classifier
from .train import TrainConfig, dist_info, train_classifier


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_hp(items: list[str]) -> dict[str, Any]:
    """``["r=8", "targets=[\\"query\\"]"]`` → ``{"r": 8, "targets": ["query"]}`` (values parsed as JSON)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"hyperparameter {item!r} is not KEY=VALUE")
        out[key] = _value(value)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m peftatlas.evidence.single", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="minilm")
    p.add_argument("--task", default="mr")
    p.add_argument("--method", default="lora")
    p.add_argument("--hp", nargs="*", default=[], help="method hyperparameters KEY=VALUE (targets=... too)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--head-lr", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--evals-per-epoch", type=int, default=1)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--train-size", type=int)
    p.add_argument("--val-size", type=int)
    p.add_argument("--test-size", type=int)
    p.add_argument("--ood-size", type=int)
    p.add_argument("--dropout", type=float, default=0.1, help="dropout before the head")
    p.add_argument("--encoder-dropout", type=float, help="dropout inside the encoder (default: the model's own)")
    p.add_argument("--out", required=True, help="output folder (rank 0 writes result.json and adapter/)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        rank, world = dist_info()
        task = load_task(args.task).subset(args.train_size, args.val_size, args.test_size, args.ood_size)
        model, tokenizer = load_classifier(args.model, task.num_labels, seed=args.seed, dropout=args.dropout,
                                           encoder_dropout=args.encoder_dropout)
        hp = parse_hp(args.hp)
        targets = hp.pop("targets", None)
        adapted = attach(model, args.method, targets=targets, seed=args.seed, **hp)
        cfg = TrainConfig(lr=args.lr, head_lr=args.head_lr, seed=args.seed, epochs=args.epochs,
                          batch_size=args.batch_size, evals_per_epoch=args.evals_per_epoch,
                          max_length=args.max_length, encoder_dropout=args.encoder_dropout)
        result = train_classifier(adapted, tokenizer, task, cfg, progress=rank == 0)
        if rank == 0:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            save_adapter(adapted, out / "adapter")
            (out / "result.json").write_text(json.dumps(
                {"metrics": result.metrics, "curve": result.curve, "steps": result.steps, "world_size": world,
                 "trainable_params": adapted.count_parameters().trainable}, indent=2))
            print(json.dumps(result.metrics))
        if world > 1:  # no rank tears the group down while another still uses it (gloo aborts the process)
            torch.distributed.barrier()
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


def exit_after(code: int) -> None:
    """Leave the process with ``code``. Under ``torchrun`` the exit skips the interpreter's teardown:
    after the group is destroyed, gloo can still abort a rank while C++ objects are torn down at exit
    ("terminate called without an active exception", SIGABRT: 5 of 71 two-rank CPU launches on torch
    2.13, 2026-12-05), which fails the launch although every result was written; 0 of 30 since."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)


if __name__ == "__main__":
    exit_after(main())
