"""Small hand-made results databases for the geometry-runner, rubric and report tests.

Records go through the real :class:`peftatlas.evidence.store.ResultsStore`; numbers are chosen so
each rubric verdict is known in advance. Full fine-tuning artifacts are real adapter folders of a tiny
BERT with planted updates, so the probe runner reads them exactly as it reads arena output.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

import peftatlas as pa
from peftatlas.evidence.store import ResultsStore, RunRecord

MODEL = "tiny-bert"  # the arena's config-built 2-layer BERT (seeded): the probe runner's default loader builds it
TASK = "mr"


def base_model(num_labels: int = 2) -> torch.nn.Module:
    """The model whose weights are W0 for every artifact here (deterministic)."""
    from peftatlas.evidence.models import load_classifier

    return load_classifier(MODEL, num_labels=num_labels)[0].eval()


def base_loader(name: str, num_labels: int = 2) -> torch.nn.Module:
    assert name == MODEL, name
    return base_model(num_labels)


def record(method: str, seed: int, test_acc: float, *, experiment: str = "main", budget: str | None = "0.1%",
           params: int = 500, ood: dict[str, float] | None = None, train_size: int | None = None,
           lr: float = 1e-3, artifact: str | None = None, task: str = TASK) -> RunRecord:
    ident = json.dumps([method, seed, experiment, budget, train_size, lr, task], sort_keys=True)
    metrics = {"test_acc": test_acc, "val_acc": test_acc - 0.01, "adapter_params": float(params)}
    for k, v in (ood or {}).items():
        metrics[f"ood_acc/{k}"] = v
    return RunRecord(key=hashlib.sha256(ident.encode()).hexdigest(), experiment=experiment, model=MODEL, task=task,
                     method=method, hyperparameters={}, budget=budget, trainable_params=params + 10, lr=lr, seed=seed,
                     train_size=train_size, metrics=metrics, curve=[{"epoch": 1, "step": 10, "val_acc": test_acc}],
                     status="done", error=None, artifact=artifact, code_version="test", created=time.time() + seed,
                     wall_seconds=1.0)


def put(path: Path, records: list[RunRecord]) -> Path:
    with ResultsStore(path) as store:
        for r in records:
            store.put(r)
    return path


def ood(test: float, retention: float) -> dict[str, float]:
    return {"amazon": test * retention, "tweets": test * retention}


def comparison_records(seeds: tuple[int, ...] = (0, 1, 2)) -> list[RunRecord]:
    """Main comparison with known outcomes (test accuracy per seed):

    full 0.90±, head_only 0.70±; lora 0.895± (recovers ≈ 0.97 of the gain, OOD retention 0.80);
    vera 0.95± (beats LoRA and full FT; retention 0.95); goft 0.96± (beats everything, but an
    analytic override caps it); surm_circulant ≈ LoRA (inconclusive vs LoRA); bitfit at 2% of
    the parameters (fails PE on size).
    """
    jitter = [0.0, 0.004, -0.004, 0.002][: len(seeds)]
    recs = []
    for s, j in zip(seeds, jitter):
        recs += [
            record("full", s, 0.90 + j, budget=None, params=100_000, ood=ood(0.90 + j, 0.85)),
            record("head_only", s, 0.70 + j, budget=None, params=0, ood=ood(0.70 + j, 0.9)),
            record("lora", s, 0.895 + j, ood=ood(0.895 + j, 0.80)),
            record("vera", s, 0.95 + j, params=300, ood=ood(0.95 + j, 0.95)),
            record("goft", s, 0.96 + j, budget="fixed", params=200, ood=ood(0.96 + j, 0.95)),
            record("surm_circulant", s, 0.895 - j, budget="fixed", params=900, ood=ood(0.895 - j, 0.80)),
            record("bitfit", s, 0.90 + j, budget="fixed", params=2000, ood=ood(0.90 + j, 0.80)),
        ]
    for size, gap in ((64, 0.08), (256, 0.05), (1024, 0.0)):
        for s, j in zip(seeds, jitter):
            recs.append(record("full", s, 0.70 + j + (0.1 if size >= 1024 else 0.0), experiment="learning_curve",
                               budget=None, params=100_000, train_size=size))
            recs.append(record("vera", s, 0.70 + gap + j, experiment="learning_curve", params=300, train_size=size))
    recs.append(record("lora", 0, 0.88, experiment="lr_sweep", lr=3e-3))
    return recs


def full_ft_artifacts(root: Path, seeds: tuple[int, ...] = (0, 1), rank: int = 2,
                      noise: float = 0.01) -> dict[int, str]:
    """Save full fine-tuning adapters of the tiny BERT whose every ΔW = shared rank-``rank`` signal + noise.

    The signal (the same in every seed) makes the seed-consistent rank equal ``rank``; the noise differs.
    """
    out = {}
    gen = np.random.default_rng(123)
    signal: dict[str, np.ndarray] = {}
    for seed in seeds:
        model = pa.attach(base_model(), "full")
        noise_gen = np.random.default_rng(seed + 1)
        with torch.no_grad():
            for name, layer in sorted(model.adapted_layers().items()):
                delta = layer.adapters["default"].deltas
                if "weight" not in delta or delta["weight"].ndim != 2 or "classifier" in name:
                    continue
                shape = tuple(delta["weight"].shape)
                if name not in signal:
                    u = gen.standard_normal((shape[0], rank))
                    v = gen.standard_normal((rank, shape[1]))
                    signal[name] = u @ v / np.sqrt(shape[1])
                d = signal[name] + noise * noise_gen.standard_normal(shape)
                delta["weight"].copy_(torch.from_numpy(d).float())
        rel = f"artifacts/full-s{seed}"
        pa.save_adapter(model, root / rel)
        out[seed] = rel
    return out


def probe_records(root: Path, seeds: tuple[int, ...] = (0, 1)) -> list[RunRecord]:
    arts = full_ft_artifacts(root, seeds)
    return [record("full", s, 0.9, budget=None, params=100_000, artifact=arts[s]) for s in seeds]


def add_probe_job(db: Path, kind: str, method: str, rows: list) -> str:
    """Store a finished probe job with ``rows`` (ProbeRow) for the fixture's setting."""
    from peftatlas.geometry.store import ProbeJob, ProbeStore

    with ProbeStore(db) as ps:
        key = f"{kind}-{method}-{len(rows)}-{time.time()}"
        ps.put_job(ProbeJob(key, kind, ["k"], MODEL, TASK, method, {"draws": 10, "seeds": [0]}, status="done",
                            n_matrices=len({r.matrix for r in rows}), created=time.time()))
        ps.put_rows(key, rows)
    return key


def synthetic_probes(db: Path, n: int = 4) -> None:
    """Probe rows with a known reading: low-rank and circulant structure present, Toeplitz not, FT's
    (ΔM, ΔD) negatively correlated and LoRA's positively, two seeds sharing 2 directions."""
    from peftatlas.geometry.probe import ProbeRow

    mats = [f"encoder.encoder.layer.{i // 2}.attention.self.{'query' if i % 2 == 0 else 'value'}" for i in range(n)]
    single, pair, lora = [], [], []
    for i, m in enumerate(mats):
        shape = {"shape": [32, 32]}
        single += [ProbeRow(m, "spectral", "energy_top8", 0.9, "gauss", 0.2, 0.01, 70.0 + i, 10, False, shape),
                   ProbeRow(m, "fit", "circulant", 0.3, "perm", 0.05, 0.01, 25.0, 10, False, shape),
                   ProbeRow(m, "fit", "toeplitz", 0.06, "perm", 0.05, 0.01, 1.0, 10, False, shape),
                   ProbeRow(m, "fit", "low_rank", 0.5, "perm", 0.5, 0.0, None, 10, True, shape),
                   ProbeRow(m, "magdir", "delta_magnitude", 0.1 * (i + 1), detail=shape),
                   ProbeRow(m, "magdir", "delta_direction", 0.05 / (i + 1), detail=shape)]
        overlap = [min(1.0, 0.9 + 0.01 * k) if k < 2 else (k + 1) / 32 + 0.05 for k in range(8)]
        pair.append(ProbeRow(m, "seed_rank", "k_star_left", 2.0, "analytic", 0.01, None, None, 8, False,
                             {"d": 32, "overlap": overlap, "overlap_null": [(k + 1) / 32 for k in range(8)]}))
        lora += [ProbeRow(m, "magdir", "delta_magnitude", 0.1 * (i + 1)),
                 ProbeRow(m, "magdir", "delta_direction", 0.02 * (i + 1) + 0.001 * (i % 2))]
    add_probe_job(db, "single", "full", single)
    add_probe_job(db, "pair", "full", pair)
    add_probe_job(db, "method", "lora", lora)
