"""What a profile leaves on disk: full fine-tuning artifacts cut down to what the geometry probes read.

A full fine-tuning adapter holds ΔW of every parameter of the encoder (MiniLM: 22.7 M floats, 91 MB
per run, the word embeddings alone 47 MB). The probes (:mod:`peftatlas.geometry.runner`) read only
``<module>.deltas.weight`` of ``nn.Linear`` matrices of the body, of the full fine-tuning runs of the
main experiment with the two lowest seeds (``single`` on the lowest, ``pair`` on both), and at most
``probe_matrices`` of them, chosen by the runner's own :func:`~peftatlas.geometry.runner.select_matrices`.
Under ``Profile.full_ft_artifacts == "probed"`` the driver therefore, once a full fine-tuning
folder is no longer needed by a later run (its LR choice made and its test/OOD metrics computed)::

    folder of a main run with one of the two lowest seeds → keep the probed matrices' ΔW and the head
    every other full fine-tuning folder (other seeds, unchosen rates, learning curves) → deleted,
                                                                        the record's artifact set to None

A cut folder's ``adapter.json`` keeps its description, gains ``"pruned": {"kept": [...], "reason": ...}``
and the checksum of the smaller tensor file; it can no longer rebuild the whole model
(:func:`~.execute.load_run` refuses it), which nothing but the probes needed. PEFT adapters are kept whole.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from ..core.io import atomic_write_dir
from .plan import MAIN, Plan
from .store import ResultsStore, RunRecord

DELTA = ".deltas.weight"
PROBE_SEEDS = 2  # the probes read the two lowest seeds of full fine-tuning's main runs


def probed_matrices(model: str, names: list[str], limit: int | None) -> list[str]:
    """The linear matrices the probes read among ``names`` (module names with a ΔW)."""
    from ..geometry.runner import default_base_loader, linear_weights, select_matrices

    linear = set(linear_weights(default_base_loader(model, 2)))
    body = [n for n in names if n in linear and not n.startswith(("classifier", "model.classifier"))]
    return select_matrices(body, limit)


def cut_folder(folder: Path, model: str, limit: int | None) -> list[str]:
    """Rewrite ``folder`` keeping the head and the probed matrices' ΔW; the kept tensor names."""
    meta = json.loads((folder / "adapter.json").read_text())
    if "pruned" in meta:
        return list(meta["pruned"]["kept"])
    tensors = load_file(str(folder / "adapter.safetensors"))
    deltas = [k[: -len(DELTA)] for k, v in tensors.items() if k.endswith(DELTA) and v.ndim == 2]
    keep_modules = set(probed_matrices(model, deltas, limit))
    kept = {k: v for k, v in tensors.items() if k.startswith("head.") or
            (k.endswith(DELTA) and k[: -len(DELTA)] in keep_modules)}
    from safetensors.torch import save

    data = save(kept, metadata={"format": "pt"})
    import hashlib

    meta["tensors_sha256"] = hashlib.sha256(data).hexdigest()
    meta["pruned"] = {"kept": sorted(kept), "reason": "full fine-tuning: only what the geometry probes read"}
    atomic_write_dir(folder, {"adapter.json": json.dumps(meta, indent=1, sort_keys=True).encode(),
                              "adapter.safetensors": data})
    return sorted(kept)


def full_ft_disposals(plan: Plan, done: Mapping[str, RunRecord]) -> tuple[set[str], set[str]]:
    """(folders to cut to the probed matrices, folders to delete) among finished full fine-tuning runs whose
    folders no later run needs (module docstring). Folders are as in ``RunRecord.artifact``."""
    keep_seeds = set(plan.profile.seeds[:PROBE_SEEDS])
    cut: set[str] = set()
    drop: set[str] = set()
    for arm in plan.arms:
        if arm.method != "full":
            continue
        pending, choice = plan.choose_lr(arm, done)
        if choice is None or pending:
            continue
        follow, _ = plan.arm_runs(arm, done)
        if follow:
            continue  # main runs or their completions still need the folders
        for rec in done.values():
            if rec.method != "full" or rec.task != arm.task or rec.status != "done" or not rec.artifact:
                continue
            if rec.profile != plan.profile.name or rec.hyperparameters != arm.hyperparameters:
                continue
            is_probed = rec.experiment == MAIN and rec.seed in keep_seeds and rec.lr == choice["lr"]
            (cut if is_probed else drop).add(rec.artifact)
    return cut, drop - cut


def apply_disposals(plan: Plan, store: ResultsStore, done: dict[str, RunRecord]) -> int:
    """Cut and delete full fine-tuning folders as :func:`full_ft_disposals` says; bytes freed."""
    if plan.profile.full_ft_artifacts != "probed":
        return 0
    cut, drop = full_ft_disposals(plan, done)
    freed = 0
    for folder in sorted(cut):
        path = store.root / folder
        if path.is_dir() and "pruned" not in json.loads((path / "adapter.json").read_text()):
            before = _size(path)
            cut_folder(path, plan.profile.model, plan.profile.probe_matrices)
            freed += before - _size(path)
    for folder in sorted(drop):
        path = store.root / folder
        if path.is_dir():
            freed += _size(path)
            shutil.rmtree(path)
        for key, rec in list(done.items()):
            if rec.artifact == folder:
                rec = dataclasses.replace(rec, artifact=None)
                store.put(rec)
                done[key] = rec
    return freed


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def missing_probed(plan: Plan, done: Mapping[str, RunRecord], root: Path) -> list[tuple[Any, RunRecord]]:
    """(main spec, record) of the full fine-tuning main runs the probes read (the two lowest seeds at the
    chosen LR) that finished but whose folder is gone — e.g. records resumed from a shipped folder."""
    out = []
    for arm in plan.arms:
        if arm.method != "full":
            continue
        _, choice = plan.choose_lr(arm, done)
        if choice is None:
            continue
        lr = choice.pop("lr")
        for seed in plan.profile.seeds[:PROBE_SEEDS]:
            spec = plan.spec(arm, MAIN, lr, seed, lr_info=choice)
            rec = done.get(spec.key)
            if rec is None or rec.status != "done":
                continue
            if rec.artifact and (root / rec.artifact / "adapter.json").is_file():
                continue
            out.append((spec, rec))
    return out


def restore_probed(plan: Plan, store: ResultsStore, log: Any = print) -> list[RunRecord]:
    """Train again the full fine-tuning main runs :func:`missing_probed` finds, from their own run specs, keep
    what the probes read (:func:`cut_folder`) and point their records at the folders; the updated records.

    Only ``artifact`` changes in a record: its metrics stay those of the original run. A retrain that raises
    is logged in one line and skipped; its record is not touched (the saved adapter is written atomically).
    The retrained run's validation/test accuracy is compared with the record's and the difference logged
    (bit-equal on the CPU that trained it; another CPU's float rounding can move an item or two, and the
    probes then read an update of the same configuration, not the same bits).
    """
    from .execute import RunContext, train_run

    done = {r.key: r for r in store.records()}
    todo = missing_probed(plan, done, store.root)
    ctx = RunContext(store.root)
    out = []
    for i, (spec, rec) in enumerate(todo, 1):
        log(f"restore [{i}/{len(todo)}] full fine-tuning {spec.model}/{spec.task} seed {spec.seed} "
            f"lr={spec.lr:g}: training again for the probes (the record's folder is gone)")
        try:
            again = train_run(dataclasses.replace(spec, evaluate_test=True), ctx, artifact=spec.artifact)
        except Exception as e:  # one line, the record untouched, the next run still tried
            log(f"   training again failed, the record is unchanged and its probes stay unmeasured: "
                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            continue
        diffs = {m: again.metrics.get(m, float("nan")) - rec.metrics[m] for m in ("val_acc", "test_acc")
                 if m in rec.metrics}
        same = all(abs(d) < 1e-12 for d in diffs.values())
        log("   " + ("metrics reproduce exactly" if same else "metrics differ from the record: " +
                     ", ".join(f"{m} {d:+.4f}" for m, d in diffs.items())) + f" ({again.wall_seconds:.0f} s)")
        cut_folder(store.root / spec.artifact, plan.profile.model, plan.profile.probe_matrices)
        updated = dataclasses.replace(rec, artifact=spec.artifact)
        store.put(updated)
        out.append(updated)
    return out
