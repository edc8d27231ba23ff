"""Benchmark harness: peftatlas vs HF PEFT side by side, in one process, measured as ratios.

Typical use (from a script in ``bench/`` or with the repository root on ``sys.path``)::

    from harness import Workload, linear_workload, llama_workload, floor, ours, peft, measure, write_report

    wl = linear_workload(width=2048, tokens=1024)            # or llama_workload("cpu-small")
    cands = [floor(wl), ours(wl, "lora", r=8), peft(wl, "lora", r=8)]
    table = measure(cands, mode="train", repeats=10)          # alternating, median after warm-up
    write_report([table], "bench/results/my_run")             # my_run.json + my_run.md

Pieces:

* :class:`Workload` — a base model factory (same weights every call), fixed inputs, a loss and the
  adapter targets. :func:`linear_workload` is one ``nn.Linear(width, width)`` fed ``tokens`` rows;
  :func:`llama_workload` a ``LlamaModel`` built from a config preset (no download).
* Candidates — :func:`floor` (the frozen model: forward + backward to the input activations, the
  cost every adapter pays at least), :func:`ours` (``peftatlas.attach``) and :func:`peft`
  (HF PEFT, built from *our* adapter through :mod:`peftatlas.interop`, so both libraries run the
  same function on the same numbers; :func:`measure` records their max output difference).
* :func:`measure` — warm-up, then ``repeats`` rounds; each round runs every candidate once, in
  a shuffled order, so slow drifts of a shared machine hit all candidates alike. Reports median,
  quartiles, the spread (IQR / median) and memory: on CUDA the peak allocated during one step;
  on CPU the bytes of activations saved for backward (parameters excluded, storages deduplicated).
* :func:`write_report` — JSON (all samples) and a Markdown table of ratios: ours/PEFT, ×floor.

A training step is forward + loss + backward + AdamW step (+ ``zero_grad``); the input
activations require grad in every candidate (as for a layer inside a network), so the floor is
exactly the work no adapter can avoid. Inference is an unmerged forward under ``inference_mode``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import peftatlas as pa

# --- workloads -------------------------------------------------------------------------------------

LLAMA_PRESETS: dict[str, dict[str, Any]] = {
    # The DESIGN reference shape: 16 layers, 0.95 B parameters (hidden 2048, MLP 5632, MHA, vocab 32k).
    "llama-0.95b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=32,
                        num_key_value_heads=32, vocab_size=32000),
    # A CPU-sized model of the same shape family (GQA, SwiGLU), for 2-core runs.
    "cpu-small": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
                      num_key_value_heads=4, vocab_size=1000),
    # For tests.
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=100),
}


@dataclasses.dataclass
class Workload:
    """What to run: a fresh frozen base model, fixed inputs, a scalar loss and the adapter targets."""

    name: str
    build: Callable[[], nn.Module]
    inputs: dict[str, Tensor]
    loss: Callable[[Any], Tensor]
    targets: str | list[str]
    grad_input: str  # the input that requires grad during a training step
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


class OneLinear(nn.Module):
    """A single frozen linear layer (target name ``lin``)."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d_in, d_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin(x)


def _seeded(build: Callable[[], nn.Module], seed: int, device: str, dtype: torch.dtype) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build()
        return model.to(device=device, dtype=dtype).eval()

    return make


def linear_workload(width: int = 2048, tokens: int = 1024, d_out: int | None = None, device: str = "cpu",
                    dtype: torch.dtype = torch.float32, seed: int = 0) -> Workload:
    """One ``nn.Linear(width, d_out or width)`` applied to ``tokens`` input rows."""
    d_out = d_out or width
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(tokens, width, generator=g).to(device=device, dtype=dtype)
    return Workload(
        name=f"linear-{width}", build=_seeded(lambda: OneLinear(width, d_out), seed, device, dtype),
        inputs={"x": x}, loss=lambda y: y.float().square().mean(), targets=["lin"], grad_input="x",
        device=device, dtype=dtype, info={"shape": "linear", "d_in": width, "d_out": d_out, "tokens": tokens},
    )


def llama_workload(preset: str | dict[str, Any] = "cpu-small", batch: int = 2, seq: int = 128,
                   device: str = "cpu", dtype: torch.dtype = torch.float32, targets: str | list[str] = "all-linear",
                   seed: int = 0) -> Workload:
    """A ``LlamaModel`` (no LM head) built from a config preset; input is ``inputs_embeds``."""
    from transformers import LlamaConfig, LlamaModel

    fields = dict(LLAMA_PRESETS[preset]) if isinstance(preset, str) else dict(preset)
    name = preset if isinstance(preset, str) else "llama-custom"
    cfg = LlamaConfig(max_position_embeddings=max(seq, 64), tie_word_embeddings=False,
                      attention_dropout=0.0, **fields)
    cfg._attn_implementation = "sdpa"

    def build() -> nn.Module:
        with torch.device(device):
            return LlamaModel(cfg)

    g = torch.Generator().manual_seed(seed + 1)
    emb = (torch.randn(batch, seq, cfg.hidden_size, generator=g) * 0.5).to(device=device, dtype=dtype)
    n_params = sum(p.numel() for p in build().parameters()) if preset == "tiny" else None
    return Workload(
        name=f"llama-{name}", build=_seeded(build, seed, device, dtype), inputs={"inputs_embeds": emb},
        loss=lambda out: out.last_hidden_state.float().square().mean(), targets=targets,
        grad_input="inputs_embeds", device=device, dtype=dtype,
        info={"shape": "llama", "preset": name, **fields, "batch": batch, "seq": seq, "params": n_params},
    )


# --- candidates ------------------------------------------------------------------------------------

@dataclasses.dataclass
class Candidate:
    """One model to time: the floor, ours, or PEFT's."""

    label: str
    library: str  # "floor" | "peftatlas" | "peft"
    method: str | None
    model: nn.Module
    workload: Workload
    params: list[nn.Parameter]
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    optimizer: torch.optim.Optimizer | None = None

    @property
    def n_trainable(self) -> int:
        return sum(p.numel() for p in self.params)


def floor(wl: Workload) -> Candidate:
    """The frozen base: forward + backward to the input activations; nothing to update."""
    model = wl.build()
    for p in model.parameters():
        p.requires_grad_(False)
    return Candidate("floor", "floor", None, model, wl, [])


def ours(wl: Workload, method: str, label: str | None = None, seed: int = 0, name: str = "default",
         **hp: Any) -> Candidate:
    """A peftatlas adapter of ``method`` on the workload's targets (no task head)."""
    model = pa.attach(wl.build(), method, targets=wl.targets, head=None, seed=seed, name=name, **hp)
    params = [p for p in model.parameters() if p.requires_grad]
    return Candidate(label or f"ours:{method}", "peftatlas", method, model, wl, params, dict(hp))


def peft(wl: Workload, method: str, label: str | None = None, seed: int = 0, source: Candidate | None = None,
         **hp: Any) -> Candidate:
    """HF PEFT's implementation of the same adapter, loaded from our export (same numbers).

    ``source`` reuses an existing :func:`ours` candidate's adapter; otherwise one is built.
    """
    from peft import PeftModel

    from peftatlas.interop import export_peft

    src = source.model if source is not None else ours(wl, method, seed=seed, **hp).model
    with tempfile.TemporaryDirectory() as tmp:
        export_peft(src, tmp, include_head=False)
        model = PeftModel.from_pretrained(wl.build(), tmp, is_trainable=True)
    params = [p for p in model.parameters() if p.requires_grad]
    return Candidate(label or f"peft:{method}", "peft", method, model, wl, params, dict(hp))


# --- steps -------------------------------------------------------------------------------------------

def _inputs(c: Candidate, train: bool) -> dict[str, Tensor]:
    out = dict(c.workload.inputs)
    if train:
        out[c.workload.grad_input] = out[c.workload.grad_input].detach().requires_grad_(True)
    return out


def train_step(c: Candidate) -> None:
    """Forward + loss + backward (+ AdamW step and zero_grad when there is anything to train)."""
    if c.params and c.optimizer is None:
        c.optimizer = torch.optim.AdamW(c.params, lr=1e-5)
    c.model.train()
    loss = c.workload.loss(c.model(**_inputs(c, True)))
    loss.backward()
    if c.optimizer is not None:
        c.optimizer.step()
        c.optimizer.zero_grad(set_to_none=True)


def infer_step(c: Candidate, inference_mode: bool = True, **kwargs: Any) -> Any:
    """One unmerged forward under ``inference_mode`` (or ``no_grad`` for checks that precede training)."""
    if c.model.training:  # eval() walks every submodule (thousands with many adapters): not inference work
        c.model.eval()
    with torch.inference_mode() if inference_mode else torch.no_grad():
        return c.model(**_inputs(c, False), **kwargs)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# --- memory ----------------------------------------------------------------------------------------

def memory_of_step(c: Candidate, step: Callable[[Candidate], Any]) -> dict[str, float]:
    """Memory of one step: CUDA peak above the resting state, or (CPU) activations saved for backward."""
    dev = c.workload.device
    if dev.startswith("cuda"):
        _sync(dev)
        torch.cuda.reset_peak_memory_stats()
        rest = torch.cuda.memory_allocated()
        step(c)
        _sync(dev)
        return {"peak_mb": (torch.cuda.max_memory_allocated() - rest) / 2**20}
    owned = {t.untyped_storage().data_ptr() for t in list(c.model.parameters()) + list(c.model.buffers())}
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in owned and s.device.type != "meta":
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step(c)
    return {"saved_mb": sum(seen.values()) / 2**20}


# --- measuring -----------------------------------------------------------------------------------------

@dataclasses.dataclass
class Timing:
    label: str
    library: str
    method: str | None
    samples_ms: list[float]
    memory: dict[str, float]
    n_trainable: int
    config: dict[str, Any]
    max_abs_diff_vs_ours: float | None = None
    group: str | None = None  # set by combine(): timings measured together (their own floor)

    @property
    def median(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def quartiles(self) -> tuple[float, float]:
        if len(self.samples_ms) < 2:
            return self.median, self.median
        q = statistics.quantiles(self.samples_ms, n=4, method="inclusive")
        return q[0], q[2]

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median (a noise indicator)."""
        lo, hi = self.quartiles
        return (hi - lo) / self.median if self.median > 0 else 0.0


def paired_ratio(ours_ms: Sequence[float], theirs_ms: Sequence[float], resamples: int = 2000,
                 seed: int = 0) -> tuple[float, float, float]:
    """Median of the per-round ratios ``ours[i] / theirs[i]`` and its 95% bootstrap interval.

    :func:`alternate` runs both in every round, moments apart, so a round's ratio cancels the
    machine's slow and fast phases that the two medians alone would not. Unpaired sample lists
    (different lengths) fall back to the ratio of medians with no interval.
    """
    if len(ours_ms) != len(theirs_ms) or not ours_ms:
        r = statistics.median(ours_ms) / statistics.median(theirs_ms)
        return r, r, r
    ratios = [a / b for a, b in zip(ours_ms, theirs_ms)]
    rng = random.Random(seed)
    n = len(ratios)
    boots = sorted(statistics.median(rng.choices(ratios, k=n)) for _ in range(resamples))
    return statistics.median(ratios), boots[int(0.025 * resamples)], boots[int(0.975 * resamples) - 1]


@dataclasses.dataclass
class Table:
    """The timings of one workload and mode, plus the run's context."""

    workload: str
    mode: str
    info: dict[str, Any]
    timings: list[Timing]
    context: dict[str, Any]

    def get(self, label: str) -> Timing | None:
        return next((t for t in self.timings if t.label == label), None)

    def rows(self) -> list[dict[str, Any]]:
        """One row per method: ours vs PEFT and both against the floor."""
        out = []
        for mine in [t for t in self.timings if t.library == "peftatlas"]:  # one row per label
            m = mine.method
            theirs = next((t for t in self.timings if t.method == m and t.library == "peft"), None)
            fl = next((t for t in self.timings if t.library == "floor" and t.group == mine.group), None)
            row = {"method": m, "label": mine.label, "config": mine.config, "ours_ms": mine.median,
                   "ours_spread": mine.spread, "ours_trainable": mine.n_trainable, "ours_mem": mine.memory}
            if fl is not None:
                row["ours_x_floor"] = mine.median / fl.median
            if theirs is not None:
                ratio, lo, hi = paired_ratio(mine.samples_ms, theirs.samples_ms)
                row.update(peft_ms=theirs.median, peft_spread=theirs.spread, peft_trainable=theirs.n_trainable,
                           peft_mem=theirs.memory, ours_over_peft=ratio, ours_over_peft_ci=(lo, hi),
                           max_abs_diff=theirs.max_abs_diff_vs_ours)
                if fl is not None:
                    row["peft_x_floor"] = theirs.median / fl.median
            out.append(row)
        return out


def combine(tables: Sequence[Table]) -> Table:
    """One table from several measured separately (e.g. one method at a time on a GPU, where every
    model pair cannot be resident at once); each row keeps the floor measured in its own group."""
    if not tables:
        raise ValueError("combine() needs at least one table")
    timings = []
    for i, t in enumerate(tables):
        for tm in t.timings:
            timings.append(dataclasses.replace(tm, group=str(i)))
    first = tables[0]
    return Table(first.workload, first.mode, first.info, timings, first.context)


def context() -> dict[str, Any]:
    """Versions, device and load of the machine (shared machines make absolute times noisy)."""
    import transformers

    try:
        import peft as peft_lib
        peft_version = peft_lib.__version__
    except ImportError:
        peft_version = None
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft_version,
        "peftatlas": pa.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "loadavg": load,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def alternate(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int, device: str = "cpu",
              seed: int = 0) -> dict[str, list[float]]:
    """Run every function ``warmup`` times, then ``repeats`` rounds in shuffled order; ms per call.

    Each round calls every function once, in a fresh (seeded) random order, so a slow phase of a
    shared machine lands on all of them alike and no function always runs right after the same
    one. (A fixed rotation made PEFT's candidate always follow ours for the same method. Position
    matters at the scale being measured: timing the same (IA)³ pair in fixed order, ours/PEFT was
    0.985 with ours first and 1.025 with PEFT first, on a 2-core CPU.)
    """
    items = list(fns.items())
    for _, fn in items:
        for _ in range(warmup):
            fn()
    _sync(device)
    samples: dict[str, list[float]] = {k: [] for k, _ in items}
    rng = random.Random(seed)
    for _ in range(repeats):
        for label, fn in rng.sample(items, len(items)):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            samples[label].append((time.perf_counter() - t0) * 1e3)
    return samples


def measure(cands: Sequence[Candidate], mode: str = "train", warmup: int = 3, repeats: int = 10,
            check: bool = True) -> Table:
    """Time ``cands`` alternately (shuffled order each round); median of ``repeats`` after ``warmup``.

    ``mode`` is ``"train"`` (forward + backward + optimizer step) or ``"infer"`` (unmerged forward).
    With ``check``, every PEFT candidate's output is compared with ours for the same method first.
    """
    if mode not in ("train", "infer"):
        raise ValueError(f"mode must be 'train' or 'infer', got {mode!r}")
    if not cands:
        raise ValueError("measure() needs at least one candidate")
    step: Callable[[Candidate], Any] = train_step if mode == "train" else infer_step
    device = cands[0].workload.device
    diffs = _agreement(cands) if check else {}
    memory = {c.label: memory_of_step(c, step) for c in cands}
    samples = alternate({c.label: (lambda c=c: step(c)) for c in cands}, repeats, warmup, device)
    wl = cands[0].workload
    timings = [Timing(c.label, c.library, c.method, samples[c.label], memory[c.label], c.n_trainable, c.config,
                      diffs.get(c.label)) for c in cands]
    return Table(wl.name, mode, dict(wl.info, device=wl.device, dtype=str(wl.dtype).replace("torch.", "")),
                 timings, context())


def _agreement(cands: Sequence[Candidate]) -> dict[str, float]:
    """Max |y_peft − y_ours| for each PEFT candidate whose method also has an ours candidate."""
    out: dict[str, float] = {}
    mine = {c.method: c for c in cands if c.library == "peftatlas"}
    for c in cands:
        if c.library == "peft" and c.method in mine:
            # no_grad, not inference_mode: a tensor a method caches during this check must stay usable
            # by the training steps that follow
            a, b = (_as_tensor(infer_step(x, inference_mode=False)) for x in (mine[c.method], c))
            out[c.label] = float((a.float() - b.float()).abs().max())
    return out


def _as_tensor(out: Any) -> Tensor:
    if isinstance(out, Tensor):
        return out
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


# --- mixed-adapter serving ---------------------------------------------------------------------------

def mixed_batch_timings(wl: Workload, method: str = "lora", n_adapters: Sequence[int] = (1, 8, 64, 512),
                        repeats: int = 10, warmup: int = 2, with_peft: Sequence[int] = (1, 8, 64),
                        **hp: Any) -> dict[str, Any]:
    """Inference on one batch whose rows use ``n`` distinct adapters, vs one merged adapter.

    The batch is the workload's input (dim 0 = rows); row *i* uses adapter ``i mod n``. The
    reference is the same batch through one adapter merged into the weights. PEFT's
    ``adapter_names`` path is timed for the ``with_peft`` counts. Everything alternates.
    ``max_abs_diff`` compares PEFT's rows with ours (PEFT ignores ``adapter_names`` for every
    tuner but the LoRA family, so a large value there is PEFT routing every row to one adapter).
    """
    rows_total = next(iter(wl.inputs.values())).shape[0]
    if max(n_adapters) > rows_total:
        raise ValueError(f"{max(n_adapters)} distinct adapters need ≥ that many rows; the batch has {rows_total}")
    merged = ours(wl, method, label="merged", **hp)
    _perturb(merged.model, 0)
    merged.model.merge()
    mixed = ours(wl, method, label="mixed", name="a0", **hp)
    model = mixed.model
    for i in range(1, max(n_adapters)):
        model.add_adapter(f"a{i}", method, targets=wl.targets, seed=i, **hp)
    _perturb(model, 1, only={f"a{i}" for i in range(max((*with_peft, 8)))})  # the adapters PEFT is checked on
    names = {n: [f"a{i % n}" for i in range(rows_total)] for n in n_adapters}
    fns: dict[str, Callable[[], Any]] = {"merged": lambda: infer_step(merged)}
    for n in n_adapters:
        fns[f"ours-{n}"] = lambda n=n: infer_step(mixed, adapter_names=names[n])
    theirs = _peft_with_adapters(wl, model, max(with_peft)) if with_peft else None
    diffs: dict[int, float] = {}
    for n in with_peft:
        fns[f"peft-{n}"] = lambda n=n: infer_step(theirs, adapter_names=names[n])
        diffs[n] = float((_as_tensor(infer_step(theirs, adapter_names=names[n])).float()
                          - _as_tensor(infer_step(mixed, adapter_names=names[n])).float()).abs().max())
    samples = alternate(fns, repeats, warmup, wl.device)
    merged_ms = statistics.median(samples["merged"])
    by_n = []
    for n in n_adapters:
        entry: dict[str, Any] = {"n": n, "ours_ms": statistics.median(samples[f"ours-{n}"]),
                                 "ours_samples": samples[f"ours-{n}"]}
        entry.update(_x_merged("ours", samples[f"ours-{n}"], samples["merged"]))
        if n in with_peft:
            entry.update(peft_ms=statistics.median(samples[f"peft-{n}"]), peft_samples=samples[f"peft-{n}"],
                         max_abs_diff=diffs[n])
            entry.update(_x_merged("peft", samples[f"peft-{n}"], samples["merged"]))
        by_n.append(entry)
    return {"workload": wl.name, "info": wl.info, "method": method, "config": hp, "rows": rows_total,
            "merged_ms": merged_ms, "merged_samples": samples["merged"], "by_n": by_n, "context": context()}


def _x_merged(who: str, ms: Sequence[float], merged_ms: Sequence[float]) -> dict[str, Any]:
    """``{who}_x_merged`` (median per-round ratio to the merged run) and its 95% interval."""
    ratio, lo, hi = paired_ratio(ms, merged_ms)
    return {f"{who}_x_merged": ratio, f"{who}_x_merged_ci": (lo, hi)}


def _peft_with_adapters(wl: Workload, model: pa.AdaptedModel, n: int) -> Candidate:
    """A PEFT model holding our adapters ``a0 … a{n-1}`` (exported and loaded one by one)."""
    from peft import PeftModel

    from peftatlas.interop import export_peft

    with tempfile.TemporaryDirectory() as tmp:
        export_peft(model, Path(tmp) / "a0", name="a0", include_head=False)
        pm = PeftModel.from_pretrained(wl.build(), Path(tmp) / "a0", adapter_name="a0")
        for i in range(1, n):
            export_peft(model, Path(tmp) / f"a{i}", name=f"a{i}", include_head=False)
            pm.load_adapter(Path(tmp) / f"a{i}", adapter_name=f"a{i}")
    return Candidate("peft-mixed", "peft", None, pm, wl, [])


def _perturb(model: pa.AdaptedModel, seed: int, scale: float = 0.02, only: set[str] | None = None) -> None:
    """Move adapters (all, or those named in ``only``) off their init so outputs differ per adapter."""
    g = torch.Generator().manual_seed(seed)
    for ln in sorted(model.adapted_layers()):
        layer = model.adapted_layers()[ln]
        for an in sorted(layer.adapters):
            if only is None or an in only:
                layer.adapters[an].perturb_(g, scale)


# --- reporting -----------------------------------------------------------------------------------------

def _fmt(x: Any, nd: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _ci(ci: tuple[float, float] | None) -> str:
    return "–" if ci is None else f"{ci[0]:.2f}–{ci[1]:.2f}"


def _mem(m: dict[str, float] | None) -> str:
    if not m:
        return "–"
    return ", ".join(f"{v:.1f}" for v in m.values())


def markdown(tables: Sequence[Table], mixed: Sequence[dict[str, Any]] = ()) -> str:
    """Markdown tables of ratios: one per workload and mode, then mixed-adapter serving."""
    lines: list[str] = []
    for t in tables:
        fl = t.get("floor")
        mem_kind = next(iter(fl.memory), "mem") if fl else "mem"
        lines += [f"### {t.workload} — {t.mode}", "",
                  f"{_describe(t.info)}; floor {_fmt(fl.median if fl else None, 1)} ms "
                  f"(spread {_fmt(fl.spread if fl else None)}); memory column = {mem_kind} (MB); "
                  f"load {t.context.get('loadavg')}", "",
                  "| method | config | ours ms | PEFT ms | ours/PEFT | 95% CI | ours ×floor | PEFT ×floor "
                  "| ours mem | PEFT mem | params ours/PEFT | max abs diff | spread ours/PEFT |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in t.rows():
            cfg = ", ".join(f"{k}={v}" for k, v in r["config"].items())
            params = f"{r['ours_trainable']:,}/{r['peft_trainable']:,}" if "peft_trainable" in r \
                else f"{r['ours_trainable']:,}"
            lines.append(
                f"| {r['method']} | {cfg} | {_fmt(r['ours_ms'], 1)} | {_fmt(r.get('peft_ms'), 1)} | "
                f"**{_fmt(r.get('ours_over_peft'))}** | {_ci(r.get('ours_over_peft_ci'))} | "
                f"{_fmt(r.get('ours_x_floor'))} | "
                f"{_fmt(r.get('peft_x_floor'))} | "
                f"{_mem(r['ours_mem'])} | {_mem(r.get('peft_mem'))} | {params} | "
                f"{_fmt(r.get('max_abs_diff'), 7) if r.get('max_abs_diff') is not None else '–'} | "
                f"{_fmt(r['ours_spread'])}/{_fmt(r.get('peft_spread'))} |")
        lines.append("")
    for m in mixed:
        lines += [f"### mixed-adapter batch — {m['workload']}, {m['method']} {m['config']}, {m['rows']} rows", "",
                  f"{_describe(m['info'])}; one merged adapter: {_fmt(m['merged_ms'], 1)} ms", "",
                  "×merged: median of the per-round ratios to the merged run, with its 95% bootstrap interval", "",
                  "| distinct adapters | ours ms | ours ×merged | 95% CI | PEFT ms | PEFT ×merged | 95% CI "
                  "| max abs diff |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for e in m["by_n"]:
            lines.append(f"| {e['n']} | {_fmt(e['ours_ms'], 1)} | **{_fmt(e['ours_x_merged'])}** | "
                         f"{_ci(e.get('ours_x_merged_ci'))} | "
                         f"{_fmt(e.get('peft_ms'), 1)} | {_fmt(e.get('peft_x_merged'))} | "
                         f"{_ci(e.get('peft_x_merged_ci'))} | "
                         f"{_fmt(e.get('max_abs_diff'), 7) if 'max_abs_diff' in e else '–'} |")
        lines.append("")
    return "\n".join(lines)


def _describe(info: dict[str, Any]) -> str:
    keep = ("shape", "preset", "d_in", "d_out", "tokens", "hidden_size", "num_hidden_layers", "batch", "seq",
            "device", "dtype")
    return ", ".join(f"{k}={info[k]}" for k in keep if info.get(k) is not None)


def write_report(tables: Sequence[Table], path: str | os.PathLike, mixed: Sequence[dict[str, Any]] = (),
                 note: str = "") -> tuple[Path, Path]:
    """Write ``<path>.json`` (every sample) and ``<path>.md`` (ratio tables)."""
    base = Path(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    data = {"note": note, "context": context(),
            "tables": [dict(dataclasses.asdict(t), rows=t.rows()) for t in tables], "mixed": list(mixed)}
    json_path, md_path = base.with_suffix(".json"), base.with_suffix(".md")
    json_path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    header = f"# Benchmark {base.name}\n\n{note}\n\n" if note else f"# Benchmark {base.name}\n\n"
    md_path.write_text(header + markdown(tables, mixed) + "\n")
    return json_path, md_path


@contextlib.contextmanager
def threads(n: int | None):
    """Temporarily set torch's intra-op thread count (``None`` leaves it)."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


__all__ = [
    "LLAMA_PRESETS",
    "Candidate",
    "Table",
    "Timing",
    "Workload",
    "alternate",
    "combine",
    "context",
    "floor",
    "infer_step",
    "linear_workload",
    "llama_workload",
    "markdown",
    "measure",
    "memory_of_step",
    "mixed_batch_timings",
    "ours",
    "peft",
    "threads",
    "train_step",
    "write_report",
]
