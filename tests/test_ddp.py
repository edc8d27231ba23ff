"""A single training run under torchrun (2 CPU processes, gloo) equals the single-process run.

The loop scales each rank's loss so DDP's averaged gradient is the gradient of the whole global
batch; with dropout off the two runs must agree to float rounding: same curve, same adapter.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

ARGS = ["--model", "tiny-bert", "--task", "mr", "--method", "lora", "--hp", "r=4", 'targets=["query","value"]',
        "--lr", "3e-3", "--head-lr", "3e-3", "--epochs", "1", "--batch-size", "8", "--evals-per-epoch", "2",
        "--train-size", "32", "--val-size", "16", "--test-size", "16", "--ood-size", "8", "--dropout", "0"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("WORLD_SIZE", None)
    return env


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed support")
def test_ddp_two_processes_match_single_process(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(_free_port()), "-m", "peftatlas.evidence.single", *ARGS, "--out", str(two)],
        env=_env(), capture_output=True, text=True, timeout=540)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run([sys.executable, "-m", "peftatlas.evidence.single", *ARGS, "--out", str(one)],
                            env=_env(), capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    r2 = json.loads((two / "result.json").read_text())
    r1 = json.loads((one / "result.json").read_text())
    assert r2["world_size"] == 2 and r1["world_size"] == 1
    assert r2["steps"] == r1["steps"] == 4
    assert [p["val_acc"] for p in r2["curve"]] == [p["val_acc"] for p in r1["curve"]]
    for p2, p1 in zip(r2["curve"], r1["curve"]):
        assert p2["train_loss"] == pytest.approx(p1["train_loss"], abs=1e-5)
    t2, t1 = load_file(two / "adapter" / "adapter.safetensors"), load_file(one / "adapter" / "adapter.safetensors")
    assert sorted(t2) == sorted(t1)
    moved = 0
    for k in t1:
        torch.testing.assert_close(t2[k], t1[k], atol=2e-5, rtol=1e-4)
        moved += int(t1[k].abs().sum() > 0)
    assert moved == len(t1), "every adapter tensor should have trained (B starts at zero)"
