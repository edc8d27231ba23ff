"""One training run of a sequence classifier: the loop every arena run uses.

Pseudocode::

    groups   = [adapter params: lr, weight_decay],  [head params: head_lr (default lr)]
    opt      = AdamW(groups);  lr(t) = peak · t/warmup  then  peak · (T − t)/(T − warmup)   (linear)
    for epoch, for each batch of a seeded permutation, grouped by length (DDP: rank r takes rows r::world):
        loss = CE(model(x), y) + model.extra_loss()          # regulariser, when the method has one
        loss.backward();  clip ‖g‖ ≤ grad_clip;  opt.step();  sched.step()
        model.on_train_step(step, T)                          # cross-layer schedules (AdaLoRA, ...)
        at each evaluation point: accuracy on validation → curve; keep the best trainable state
    restore the best state;  evaluate test (+ OOD sets) there

The loop is assembled from named pieces:

* :func:`wrap_for_ranks` — DistributedDataParallel under ``torchrun``, the model itself otherwise;
* :class:`FullForward` / :class:`CachedFeaturesHead` (chosen by :func:`forward_path`) — how a batch's
  logits and a split's evaluation are computed. Head-only runs (nothing but the classifier trains,
  no adapter attached) are linear probes: the frozen encoder's pooled features are computed once per
  split in eval mode and kept in a :class:`FeatureCache` that the caller owns and passes in (an
  executor shares one across its runs, on disk across its worker processes);
* :class:`StepHooks` — the per-method hooks the model declares (extra loss, after-step schedule).

Runs are deterministic for a seed (data order, dropout, head init). Under ``torchrun`` with an
initialised process group, the model is wrapped in DistributedDataParallel; the loss of each
rank is scaled so the synchronised gradient equals the single-process gradient of the same global
batch, and evaluation counts are all-reduced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import Split, TaskData


class TrainError(ValueError):
    """A training configuration cannot run (no trainable parameters, empty data, bad value)."""


@dataclasses.dataclass
class TrainConfig:
    """Hyperparameters of one run. ``head_lr=None`` trains the head at ``lr``."""

    lr: float = 1e-3
    head_lr: float | None = None
    epochs: int = 3
    batch_size: int = 32
    eval_batch_size: int = 128
    warmup_ratio: float = 0.06
    weight_decay: float = 0.0
    max_length: int = 64
    seed: int = 0
    evals_per_epoch: int = 1
    min_steps: int = 0  # small training sets get more epochs so that at least this many steps run
    grad_clip: float | None = 1.0
    target_acc: float | None = None  # for steps_to_target
    device: str | None = None  # default: cuda (this rank's device) if available, else cpu
    ddp_find_unused: bool = False  # DDP: set for methods with parameters a forward may not use
    group_by_length: bool = True  # batches of similar lengths (less padding); see epoch_batches
    encoder_dropout: float | None = None  # dropout inside the pretrained encoder, set when the model is built

    def validate(self) -> None:
        checks = [
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.head_lr is None or self.head_lr > 0, f"head_lr must be > 0, got {self.head_lr}"),
            (self.epochs >= 1, f"epochs must be ≥ 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be ≥ 1, got {self.batch_size}"),
            (0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}"),
            (self.evals_per_epoch >= 1, f"evals_per_epoch must be ≥ 1, got {self.evals_per_epoch}"),
            (self.max_length >= 2, f"max_length must be ≥ 2, got {self.max_length}"),
            (self.encoder_dropout is None or 0 <= self.encoder_dropout < 1,
             f"encoder_dropout must be in [0, 1), got {self.encoder_dropout}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise TrainError(msg)


@dataclasses.dataclass
class TrainResult:
    """Metrics at the best validation point, the evaluation curve, and bookkeeping."""

    metrics: dict[str, float]
    curve: list[dict[str, float]]
    steps: int
    wall_seconds: float
    items: dict[str, list[bool]] = dataclasses.field(default_factory=dict)  # held-out set → per-item correct


# --- distributed helpers ------------------------------------------------------------------------
def dist_info() -> tuple[int, int]:
    """(rank, world size); (0, 1) when no process group is initialised."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _all_reduce(t: Tensor) -> Tensor:
    if dist_info()[1] > 1:
        torch.distributed.all_reduce(t)
    return t


# --- tokenisation and batches -------------------------------------------------------------------
_TOKEN_CACHE: dict[tuple[int, int, tuple[str, ...]], tuple[Any, list[list[int]]]] = {}


def encode(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of ``texts`` (truncated to ``max_length``), cached per tokenizer and text tuple."""
    key = (id(tokenizer), max_length, tuple(texts))
    hit = _TOKEN_CACHE.get(key)
    if hit is None or hit[0] is not tokenizer:
        ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"] if texts else []
        _TOKEN_CACHE[key] = hit = (tokenizer, [list(x) for x in ids])
    return hit[1]


def collate(ids: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> dict[str, Tensor]:
    """Pad a batch to its longest row: ``input_ids`` and ``attention_mask``."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, :len(x)] = torch.tensor(x, dtype=torch.long)
        mask[i, :len(x)] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}


def logits_of(output: Any) -> Tensor:
    return output if isinstance(output, Tensor) else output.logits


# --- evaluation ------------------------------------------------------------------------------------
def _confusion(gold: Tensor, pred: Tensor, num_labels: int) -> Tensor:
    confusion = torch.zeros(num_labels, num_labels, dtype=torch.float64)
    confusion.index_put_((gold, pred), torch.ones(len(gold), dtype=torch.float64), accumulate=True)
    return confusion


@torch.no_grad()
def predict(model: nn.Module, tokenizer: Any, split: Split, cfg: TrainConfig, device: torch.device) -> Tensor:
    """Predicted label of every item of ``split`` in its order (``-1`` where another DDP rank predicted it;
    :func:`evaluate` all-reduces)."""
    if len(split) == 0:
        raise TrainError("cannot evaluate on an empty split")
    rank, world = dist_info()
    ids = encode(tokenizer, split.texts, cfg.max_length)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))[rank::world]  # length-sorted: less padding
    out = torch.full((len(ids),), -1, dtype=torch.long)
    was_training = model.training
    model.eval()
    pad = tokenizer.pad_token_id or 0
    for start in range(0, len(order), cfg.eval_batch_size):
        rows = order[start:start + cfg.eval_batch_size]
        out[torch.tensor(rows)] = logits_of(model(**collate([ids[i] for i in rows], pad, device))).argmax(-1).cpu()
    model.train(was_training)
    return out


@dataclasses.dataclass
class Evaluation:
    """Accuracy and macro-F1 of one split, and which items were answered correctly (in split order)."""

    metrics: dict[str, float]
    correct: list[bool]


def score(pred: Tensor, split: Split, num_labels: int) -> Evaluation:
    """:class:`Evaluation` of complete predictions (one label per item; DDP shards already merged)."""
    gold = torch.tensor(split.labels)
    return Evaluation(classification_metrics(_confusion(gold, pred, num_labels)), (pred == gold).tolist())


def evaluate_split_full(model: nn.Module, tokenizer: Any, split: Split, num_labels: int, cfg: TrainConfig,
                        device: torch.device) -> Evaluation:
    """Evaluate by the full forward; rows sharded over DDP ranks, predictions merged across them."""
    pred = predict(model, tokenizer, split, cfg, device)
    if dist_info()[1] > 1:  # every item was predicted by exactly one rank; the others hold -1
        pred = (_all_reduce((pred + 1).to(device)).cpu() - 1)
    return score(pred, split, num_labels)


def evaluate(model: nn.Module, tokenizer: Any, split: Split, num_labels: int, cfg: TrainConfig,
             device: torch.device) -> dict[str, float]:
    """Accuracy and macro-F1 on ``split`` (rows sharded over DDP ranks)."""
    return evaluate_split_full(model, tokenizer, split, num_labels, cfg, device).metrics


# --- head-only: a linear probe on cached frozen features -------------------------------------------
def _save_features(features: Tensor, path: Path) -> None:
    """Write atomically (a temporary file renamed into place): a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        safetensors.torch.save_file({"features": features.detach().cpu().contiguous()}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _disk_key(key: tuple, ids: list[list[int]]) -> str:
    """A stable name for a feature set: the encoder fingerprint, pooling and the token ids themselves."""
    text = json.dumps([repr(key[0]), key[1], ids], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class FeatureCache:
    """Frozen pooled features of head-only runs, kept in memory (``capacity`` splits) and, with a
    ``folder``, on disk (one safetensors file per encoder and split, written atomically) so that
    several worker processes compute them once. Its owner (an executor) passes it to each run:
    nothing is switched on for the whole process."""

    def __init__(self, folder: str | Path | None = None, capacity: int = 16) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.capacity = capacity
        self.memory: dict[tuple, Tensor] = {}

    def features(self, clf: nn.Module, tokenizer: Any, split: Split, cfg: TrainConfig,
                 device: torch.device) -> Tensor:
        """Pooled encoder features ``(n, hidden)`` of ``split`` in eval mode."""
        key = (_encoder_fingerprint(clf.encoder), clf.pooling, cfg.max_length, id(tokenizer), tuple(split.texts))
        disk: Path | None = None
        if key not in self.memory and self.folder is not None:
            disk = self.folder / f"{_disk_key(key, encode(tokenizer, split.texts, cfg.max_length))}.safetensors"
            if disk.is_file():
                with contextlib.suppress(OSError, KeyError, safetensors.SafetensorError):  # unreadable: recompute
                    self.memory[key] = safetensors.torch.load_file(str(disk))["features"]
        if key not in self.memory:
            out = _encode_features(clf, tokenizer, split, cfg, device)
            if len(self.memory) >= self.capacity:
                self.memory.pop(next(iter(self.memory)))
            self.memory[key] = out
            if disk is not None:
                _save_features(out, disk)
        return self.memory[key].to(device)


@torch.no_grad()
def _encode_features(clf: nn.Module, tokenizer: Any, split: Split, cfg: TrainConfig, device: torch.device) -> Tensor:
    ids = encode(tokenizer, split.texts, cfg.max_length)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    was_training = clf.training
    clf.eval()
    pad = tokenizer.pad_token_id or 0
    out: Tensor | None = None
    for start in range(0, len(order), cfg.eval_batch_size):
        rows = order[start:start + cfg.eval_batch_size]
        batch = collate([ids[i] for i in rows], pad, device)
        hidden = clf.encoder(**batch)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden.last_hidden_state
        pooled = clf.pool(hidden, batch.get("attention_mask")).to(clf.classifier.weight.dtype)
        if out is None:
            out = pooled.new_empty(len(ids), pooled.shape[-1])
        out[torch.tensor(rows, device=device)] = pooled
    clf.train(was_training)
    assert out is not None
    return out


def probe_classifier(model: nn.Module, world: int = 1) -> nn.Module | None:
    """The classifier to train on cached features, when ``model`` trains only its head.

    That is: a :class:`~peftatlas.evidence.models.SequenceClassifier` (possibly wrapped by an
    :class:`~peftatlas.AdaptedModel` with no adapter layers), every trainable parameter inside its
    ``classifier``, no method loss, and a single process. Otherwise None (the full forward runs).
    """
    from .models import SequenceClassifier

    inner = model
    if hasattr(model, "adapted_layers"):
        if model.adapted_layers() or StepHooks.declared_by(model).loss() is not None:
            return None
        inner = model.model
    if world != 1 or not isinstance(inner, SequenceClassifier):
        return None
    head = {id(p) for p in inner.classifier.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable or any(id(p) not in head for p in trainable):
        return None
    return inner


def _encoder_fingerprint(encoder: nn.Module) -> tuple:
    """What the cached features depend on: every encoder tensor's name, shape, dtype, device and sum."""
    with torch.no_grad():
        return tuple((n, tuple(t.shape), str(t.dtype), str(t.device), float(t.double().sum()))
                     for n, t in [*encoder.named_parameters(), *encoder.named_buffers()])


def classification_metrics(confusion: Tensor) -> dict[str, float]:
    """Accuracy and macro-F1 from a (gold × predicted) confusion matrix."""
    tp = confusion.diagonal()
    acc = float(tp.sum() / confusion.sum())
    precision = tp / confusion.sum(0).clamp_min(1)
    recall = tp / confusion.sum(1).clamp_min(1)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), torch.zeros_like(tp))
    return {"acc": acc, "macro_f1": float(f1.mean())}


# --- training ------------------------------------------------------------------------------------
def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: the adapter (``lr``, weight decay) and the task head (``head_lr``, no decay)."""
    head = getattr(model, "head_parameters", dict)()
    head_ids = {id(p) for p in head.values()}
    body = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    head_params = [p for p in head.values() if p.requires_grad]
    groups = []
    if body:
        groups.append({"params": body, "lr": cfg.lr, "weight_decay": cfg.weight_decay})
    if head_params:
        groups.append({"params": head_params, "lr": cfg.head_lr or cfg.lr, "weight_decay": 0.0})
    if not groups:
        raise TrainError("the model has no trainable parameters")
    return groups


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups`; the fused kernel where the parameters allow it (≈8× less optimizer
    time on CPU for full fine-tuning), else the default implementation."""
    groups = param_groups(model, cfg)
    try:
        return torch.optim.AdamW(groups, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.AdamW(param_groups(model, cfg))


def linear_schedule(total: int, warmup: int) -> Callable[[int], float]:
    """Multiplier of the peak LR: linear warmup over ``warmup`` steps, then linear decay to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def batch_starts(n_train: int, batch_size: int, world: int = 1) -> list[int]:
    """Start rows of one epoch's batches; a last batch with fewer rows than ranks is dropped."""
    return [s for s in range(0, n_train, batch_size) if min(batch_size, n_train - s) >= world]


GROUP = 16  # batches per length-sorted group


def epoch_batches(perm: list[int], lengths: Sequence[int], cfg: TrainConfig, world: int,
                  generator: torch.Generator) -> list[list[int]]:
    """One epoch's batches (row indices) from a seeded permutation.

    With ``group_by_length``: consecutive groups of ``GROUP · batch_size`` rows of the permutation
    are sorted by length and cut into batches, whose order is then shuffled (less padding, same
    number and sizes of batches as without grouping).
    """
    b = cfg.batch_size
    batches = [perm[s:s + b] for s in batch_starts(len(perm), b, world)]
    if cfg.group_by_length:
        grouped: list[list[int]] = []
        for s in range(0, len(perm), GROUP * b):
            chunk = sorted(perm[s:s + GROUP * b], key=lambda i: -lengths[i])
            grouped += [chunk[j:j + b] for j in range(0, len(chunk), b)]
        grouped = [x for x in grouped if len(x) >= world]
        batches = [grouped[i] for i in torch.randperm(len(grouped), generator=generator).tolist()]
    return batches


def plan_steps(n_train: int, cfg: TrainConfig, world: int = 1) -> tuple[int, int, list[int]]:
    """(epochs, steps per epoch, evaluation steps) for ``n_train`` rows."""
    per_epoch = len(batch_starts(n_train, cfg.batch_size, world))
    if per_epoch == 0:
        raise TrainError(f"{n_train} training rows cannot fill a batch on each of {world} ranks")
    epochs = max(cfg.epochs, math.ceil(cfg.min_steps / per_epoch)) if cfg.min_steps else cfg.epochs
    evals = set()
    for e in range(epochs):
        for k in range(1, cfg.evals_per_epoch + 1):
            evals.add(e * per_epoch + max(1, round(k * per_epoch / cfg.evals_per_epoch)))
    return epochs, per_epoch, sorted(evals)


def trainable_state(model: nn.Module) -> dict[str, Tensor]:
    """Trainable parameters and every buffer: schedules keep state in buffers (AdaLoRA's rank masks,
    Delta-LoRA's last factors), which must travel with the parameters to the best step."""
    state = {f"p:{n}": p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    state.update({f"b:{n}": b.detach().clone() for n, b in model.named_buffers()})
    return state


@torch.no_grad()
def restore_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    tensors = {f"p:{n}": p for n, p in model.named_parameters()} | {f"b:{n}": b for n, b in model.named_buffers()}
    for n, v in state.items():
        tensors[n].copy_(v)


def _progress(total: int, enabled: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, disable=not (enabled and sys.stderr.isatty()),
                dynamic_ncols=True)


# --- the named pieces of a run ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StepHooks:
    """The per-method hooks a model declares to the loop: a loss term added to the task loss
    (e.g. qGOFT's orthogonality penalty) and a call after every optimizer step (cross-layer schedules
    such as AdaLoRA's rank budget). An :class:`~peftatlas.AdaptedModel` declares both (its methods
    forward to the adapters); any other module declares none."""

    extra_loss: Callable[[], Tensor | None] | None = None
    on_step: Callable[[int, int], None] | None = None

    @classmethod
    def declared_by(cls, model: nn.Module) -> StepHooks:
        from ..core.model import AdaptedModel

        if isinstance(model, AdaptedModel):
            return cls(extra_loss=model.extra_loss, on_step=model.on_train_step)
        return cls()

    def loss(self) -> Tensor | None:
        return self.extra_loss() if self.extra_loss is not None else None

    def after_step(self, step: int, total: int) -> None:
        if self.on_step is not None:
            self.on_step(step, total)


def wrap_for_ranks(model: nn.Module, device: torch.device, cfg: TrainConfig) -> nn.Module:
    """The module the forward runs through: ``model`` itself in one process; DistributedDataParallel
    over it under an initialised process group (``torchrun``)."""
    if dist_info()[1] == 1:
        return model
    on = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=on, find_unused_parameters=cfg.ddp_find_unused)


class FullForward:
    """Training rows through the whole model (``net``: the model or its DDP wrapper)."""

    def __init__(self, model: nn.Module, net: nn.Module, tokenizer: Any, task: TaskData, cfg: TrainConfig,
                 device: torch.device) -> None:
        self.model, self.net, self.tokenizer = model, net, tokenizer
        self.task, self.cfg, self.device = task, cfg, device
        self.ids = encode(tokenizer, task.train.texts, cfg.max_length)
        self.pad = tokenizer.pad_token_id or 0

    def logits(self, rows: list[int]) -> Tensor:
        return logits_of(self.net(**collate([self.ids[i] for i in rows], self.pad, self.device)))

    def evaluate(self, split: Split) -> Evaluation:
        return evaluate_split_full(self.model, self.tokenizer, split, self.task.num_labels, self.cfg, self.device)


class CachedFeaturesHead:
    """Head-only runs as a linear probe: the classifier (with its dropout) on the frozen encoder's
    cached pooled features; same batches, optimizer, schedule and evaluation points as :class:`FullForward`."""

    def __init__(self, clf: nn.Module, cache: FeatureCache, tokenizer: Any, task: TaskData, cfg: TrainConfig,
                 device: torch.device) -> None:
        self.clf, self.cache, self.tokenizer = clf, cache, tokenizer
        self.task, self.cfg, self.device = task, cfg, device
        self.train_features = cache.features(clf, tokenizer, task.train, cfg, device)

    def logits(self, rows: list[int]) -> Tensor:
        return self.clf.classifier(self.clf.dropout(self.train_features[torch.tensor(rows, device=self.device)]))

    @torch.no_grad()
    def evaluate(self, split: Split) -> Evaluation:
        if len(split) == 0:
            raise TrainError("cannot evaluate on an empty split")
        feats = self.cache.features(self.clf, self.tokenizer, split, self.cfg, self.device)
        return score(self.clf.classifier(feats).argmax(-1).cpu(), split, self.task.num_labels)


def forward_path(model: nn.Module, net: nn.Module, tokenizer: Any, task: TaskData, cfg: TrainConfig,
                 device: torch.device, features: FeatureCache | None) -> FullForward | CachedFeaturesHead:
    """:class:`CachedFeaturesHead` when the model trains only its head in one process, else :class:`FullForward`."""
    clf = probe_classifier(model, dist_info()[1])
    if clf is not None:
        return CachedFeaturesHead(clf, features if features is not None else FeatureCache(), tokenizer, task, cfg,
                                  device)
    return FullForward(model, net, tokenizer, task, cfg, device)



def optimizer_step(loss: Tensor, reg: Tensor | None, opt: torch.optim.Optimizer, sched: Any,
                   grad_clip: float | None) -> Tensor:
    """One update on ``loss + reg`` (``reg`` a method's regulariser or None): clear the gradients,
    backpropagate, clip the global gradient norm to ``grad_clip`` when set, step the optimizer and the
    schedule. Returns the loss that was minimised (with its regulariser)."""
    if reg is not None:
        loss = loss + reg
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], grad_clip)
    opt.step()
    sched.step()
    return loss

def train_classifier(model: nn.Module, tokenizer: Any, task: TaskData, cfg: TrainConfig, *,
                     evaluate_test: bool = True, progress: bool = False, desc: str = "train",
                     features: FeatureCache | None = None, hooks: StepHooks | None = None) -> TrainResult:
    """Train ``model`` (usually an :class:`~peftatlas.AdaptedModel`) on ``task.train``; see the module docstring.

    The model is left in its best validation state. Metrics: ``val_acc``, ``val_f1``, ``best_epoch``,
    ``best_step``, ``steps``, ``train_loss``; with ``evaluate_test`` also ``test_acc``, ``test_f1`` and
    ``ood_acc/<name>`` for each OOD set (and their per-item correctness in ``TrainResult.items``);
    ``steps_to_target`` when ``cfg.target_acc`` was reached. ``features`` caches head-only features
    across runs (default: within this call only); ``hooks`` default to those the model declares.
    """
    cfg.validate()
    if len(task.train) == 0 or len(task.val) == 0:
        raise TrainError(f"task {task.name} needs non-empty train and val splits")
    t0 = time.time()
    rank, world = dist_info()
    device = torch.device(cfg.device) if cfg.device else default_device()
    model.to(device)
    torch.manual_seed(cfg.seed * 7919 + rank)  # dropout; identical data order on every rank comes from `order`
    hooks = hooks if hooks is not None else StepHooks.declared_by(model)
    path = forward_path(model, wrap_for_ranks(model, device, cfg), tokenizer, task, cfg, device, features)
    opt = make_optimizer(model, cfg)
    epochs, per_epoch, eval_steps = plan_steps(len(task.train), cfg, world)
    total = epochs * per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_schedule(total, round(cfg.warmup_ratio * total)))
    lengths = [len(x) for x in encode(tokenizer, task.train.texts, cfg.max_length)]
    labels = torch.tensor(task.train.labels)
    order = torch.Generator().manual_seed(cfg.seed)

    curve: list[dict[str, float]] = []
    best: tuple[float, dict[str, float], dict[str, Tensor]] | None = None
    step, loss_sum, loss_n = 0, 0.0, 0
    model.train()
    bar = _progress(total, progress and rank == 0, desc)
    for _ in range(epochs):
        perm = torch.randperm(len(lengths), generator=order).tolist()
        for rows in epoch_batches(perm, lengths, cfg, world, order):
            mine = rows[rank::world]
            # sum over this rank's rows / global rows, × world: DDP's gradient mean is the global-batch mean
            loss = F.cross_entropy(path.logits(mine).float(), labels[mine].to(device), reduction="sum") \
                * world / len(rows)
            loss = optimizer_step(loss, hooks.loss(), opt, sched, cfg.grad_clip)
            step += 1
            hooks.after_step(step, total)
            loss_sum += float(_all_reduce(loss.detach().clone()).item()) / world
            loss_n += 1
            bar.update(1)
            if step in eval_steps:
                val = path.evaluate(task.val).metrics
                point = {"epoch": round(step / per_epoch, 4), "step": step, "val_acc": val["acc"],
                         "val_f1": val["macro_f1"], "train_loss": loss_sum / max(1, loss_n)}
                curve.append(point)
                bar.set_postfix(val_acc=f"{val['acc']:.3f}")
                loss_sum, loss_n = 0.0, 0
                if best is None or val["acc"] > best[0]:
                    best = (val["acc"], point, trainable_state(model))
    bar.close()
    assert best is not None
    restore_state(model, best[2])
    metrics = {"val_acc": best[1]["val_acc"], "val_f1": best[1]["val_f1"], "best_epoch": best[1]["epoch"],
               "best_step": float(best[1]["step"]), "steps": float(total), "train_loss": curve[-1]["train_loss"]}
    if cfg.target_acc is not None:
        metrics["target_acc"] = cfg.target_acc
        hit = next((p["step"] for p in curve if p["val_acc"] >= cfg.target_acc), None)
        if hit is not None:
            metrics["steps_to_target"] = float(hit)
    items: dict[str, list[bool]] = {}
    if evaluate_test:
        held, items = heldout(path.evaluate, task)
        metrics.update(held)
    return TrainResult(metrics, curve, total, time.time() - t0, items)


def heldout(evaluate_split: Callable[[Split], Evaluation], task: TaskData) -> tuple[dict[str, float],
                                                                                    dict[str, list[bool]]]:
    """``test_acc``, ``test_f1`` and ``ood_acc/<name>`` for each OOD set of ``task``; and the per-item
    correctness of each set (``"test"``, ``"ood/<name>"``)."""
    test = evaluate_split(task.test)
    metrics = {"test_acc": test.metrics["acc"], "test_f1": test.metrics["macro_f1"]}
    items = {"test": test.correct}
    for name in sorted(task.ood):
        ev = evaluate_split(task.ood[name])
        metrics[f"ood_acc/{name}"] = ev.metrics["acc"]
        items[f"ood/{name}"] = ev.correct
    return metrics, items


def evaluate_heldout(model: nn.Module, tokenizer: Any, task: TaskData, cfg: TrainConfig) -> tuple[
        dict[str, float], dict[str, list[bool]]]:
    """:func:`heldout` of a trained model as it is (e.g. one rebuilt from its saved adapter)."""
    device = torch.device(cfg.device) if cfg.device else default_device()
    model.to(device)
    return heldout(lambda split: evaluate_split_full(model, tokenizer, split, task.num_labels, cfg, device), task)
