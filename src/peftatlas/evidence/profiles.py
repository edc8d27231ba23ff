"""Experiment plans: ``smoke`` (CI, seconds), ``quick`` (real MiniLM on a 2-core CPU), ``catalog`` (every
method on the quick setting, hours on a CPU, resumable), ``full`` (a GPU or a Ray cluster).

New settings register a profile with :func:`register_profile` (and methods' arena choices with
:data:`METHOD_PLANS`). The causal-LM and vision settings' profiles (``lm_cpu``, ``vit_cpu``, ``lm_gpu``,
``vit_gpu``) are defined here so that ``peftatlas run --profile`` lists them; their rationale and cost
model live in :mod:`.settings.profiles`.

A profile fixes the model, the data (task, OOD sets, subset sizes), the training schedule, the
parameter budgets, each method's LR grid (``lr_center(method) × lr_factors``), the seeds, the
learning-curve sizes and the accuracy target for steps-to-target. Every value enters each run's key,
so changing a profile never silently reuses results computed under other settings.

Per-method choices (:data:`METHOD_PLANS`): candidate target modules in order of preference (the
budget solver takes the first set on which the method lands within ±10%), fixed hyperparameters,
and the centre of its LR grid. LR centres sit at the upper end of the papers' reported ranges, since
the CPU profiles train briefly (full fine-tuning 1e-4, LoRA 3e-3, VeRA 1e-2, FourierFT 5e-2); a
method may also declare ``suggested_lr``. The head trains at ``head_lr`` in every method but
head-only, whose swept LR is the head's.

The ``quick`` profile switches dropout inside the encoder off (``encoder_dropout=0``): on a CPU,
drawing the dropout masks costs a third of a training step (it also bars the fused attention
kernel), and one epoch of 128 steps (batch 16) is far from over-fitting. The head keeps its own dropout.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import nn

from ..core.method import get_method, registered_methods
from .budget import TargetSpec

ATTENTION_QV: tuple[str, ...] = ("query", "value")


@dataclasses.dataclass(frozen=True)
class MethodPlan:
    """How the arena runs one method: target candidates, fixed hyperparameters, LR grid centre."""

    targets: tuple[TargetSpec, ...] = (None,)  # None = the method's default targets
    hyperparameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    lr: float | None = None  # None = by method attribute `suggested_lr`, then by family
    max_knob: int = 4096
    # hyperparameters read off the model the arm runs on (e.g. CLOVER's attention head size)
    derive: Callable[[nn.Module], dict[str, Any]] | None = None
    skip: str | None = None  # why the arena cannot run the method at all (the plan records it as skipped)


def attention_shape(model: nn.Module) -> tuple[int, bool]:
    """(attention head size d_h, whether positions are rotary) from the first transformers config in ``model``.

    ``d_h = config.head_dim`` when set, else ``hidden_size / num_attention_heads``; rotary when the config
    carries RoPE settings (``rope_theta`` or ``rope_parameters``)."""
    for module in model.modules():
        cfg = getattr(module, "config", None)
        heads = getattr(cfg, "num_attention_heads", None)
        if heads:
            head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
            rotary = getattr(cfg, "rope_theta", None) is not None or getattr(cfg, "rope_parameters", None) is not None
            return int(head_dim), rotary
    raise ValueError(f"{type(model).__name__} has no transformers config with num_attention_heads")


def clover_shape(model: nn.Module) -> dict[str, Any]:
    """CLOVER's structural hyperparameters: the head size; only the V-O pair under RoPE (the Q-K update would
    act before the rotation, see :mod:`peftatlas.methods.clover`)."""
    head_dim, rotary = attention_shape(model)
    return {"head_dim": head_dim, **({"pairs": "vo"} if rotary else {})}


LR_BY_FAMILY = {"reference": 1e-3, "low-rank": 2e-3, "random-subspace": 1e-2, "rotation": 3e-3,
                "structured": 3e-3, "structured-full-rank": 3e-3, "activation": 3e-3}

METHOD_PLANS: dict[str, MethodPlan] = {
    "full": MethodPlan(lr=1e-4),
    "head_only": MethodPlan(lr=1e-2),
    "bitfit": MethodPlan(lr=1e-3),
    "lora": MethodPlan(targets=(ATTENTION_QV, "all-linear", ("value",)), lr=3e-3),
    # VeRA's count is d_out + r per layer, so big budgets need a big shared rank; all-linear keeps r small
    "vera": MethodPlan(targets=("all-linear", ATTENTION_QV), lr=1e-2, max_knob=2048),
    "surm_circulant": MethodPlan(targets=(ATTENTION_QV,), lr=3e-3),
    "goft": MethodPlan(targets=(ATTENTION_QV,), lr=3e-3),
    "qgoft": MethodPlan(targets=(ATTENTION_QV,), lr=3e-3),
    "fourierft": MethodPlan(targets=(ATTENTION_QV,), lr=5e-2),
    "c3a": MethodPlan(targets=(ATTENTION_QV,), lr=1e-1),
    "clover": MethodPlan(derive=clover_shape),
    "trainable_tokens": MethodPlan(skip="it trains the embedding rows of given token ids (token_indices: tokens a "
                                        "task adds to the vocabulary); the arena's tasks add none, so no set of "
                                        "rows is the method's to train under a parameter budget"),
}


def method_plan(method: str) -> MethodPlan:
    """The plan of ``method`` (a registered name): explicit entry, else attention q/v targets when linear."""
    cls = get_method(method)
    plan = METHOD_PLANS.get(cls.name)
    if plan is None:
        targets: tuple[TargetSpec, ...] = (ATTENTION_QV, None) if cls.default_targets == "all-linear" else (None,)
        plan = MethodPlan(targets=targets)
    return plan


def lr_center(method: str) -> float:
    cls = get_method(method)
    plan = method_plan(method)
    if plan.lr is not None:
        return plan.lr
    suggested = cls.suggested_lr
    if isinstance(suggested, int | float) and suggested > 0:
        return float(suggested)
    return LR_BY_FAMILY.get(cls.family, 1e-3)


@dataclasses.dataclass(frozen=True)
class Profile:
    """One experiment plan (see the module docstring)."""

    name: str
    model: str
    task: str
    methods: tuple[str, ...]  # in run order; names not registered are skipped with a note
    budgets: tuple[str, ...]  # for methods with a size knob; fixed-size methods run once
    lr_factors: tuple[float, ...]
    seeds: tuple[int, ...]
    train: dict[str, Any]  # TrainConfig fields other than lr, head_lr and seed
    head_lr: float  # for every method but head_only (whose swept LR is the head's)
    train_size: int | None = None
    val_size: int | None = None
    test_size: int | None = None
    ood_size: int | None = None
    extra_tasks: tuple[str, ...] = ()  # further in-distribution tasks (no OOD), same plan
    learning_curve_sizes: tuple[int | None, ...] = ()  # None = the whole training subset
    learning_curve_methods: tuple[str, ...] = ()  # () = every method of the profile
    learning_curve_seeds: int = 1
    target_acc: float | dict[str, float] | None = None  # a float applies to `task`; a dict maps task → target
    budget_tolerance: float = 0.10
    sweep_seeds: int = 2  # the LR is chosen on the mean validation accuracy over the first this-many seeds
    lr_extend: int = 2  # at most this many rates added beyond each edge of the grid while the best sits there
    matched_lora: bool = True  # add LoRA arms at the count and on the targets of each method BL has no LoRA arm for
    full_ft_artifacts: str = "all"  # "all" | "probed": keep only what the geometry probes read (see .artifacts)
    probe_matrices: int | None = None  # matrices the geometry probes read per full-FT update (None = all)
    description: str = ""
    setting: dict[str, Any] = dataclasses.field(default_factory=dict)  # the model's setting options (spec.data)

    def __post_init__(self) -> None:
        if len(self.lr_factors) < 1 or len(self.seeds) < 1:
            raise ValueError(f"profile {self.name}: needs at least one LR and one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"profile {self.name}: seeds must be distinct, got {self.seeds}")

    def target_for(self, task: str) -> float | None:
        """The validation accuracy whose first crossing is ``steps_to_target`` on ``task``."""
        if isinstance(self.target_acc, dict):
            return self.target_acc.get(task)
        return self.target_acc if task == self.task else None

    def lr_grid(self, method: str) -> list[float]:
        center = lr_center(method)
        return [float(f"{center * f:.3g}") for f in self.lr_factors]


SEED_METHODS = ("surm_circulant", "goft")
# the CPU schedule of the quick and catalog profiles: one epoch at batch 16, no dropout inside the encoder
QUICK_TRAIN: dict[str, Any] = {"epochs": 1, "batch_size": 16, "evals_per_epoch": 2, "max_length": 64,
                               "encoder_dropout": 0.0}  # the seed papers' methods, in every CPU profile when registered

PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke", model="tiny-bert", task="mr",
        methods=("full", "head_only", "lora", "vera"),
        budgets=("0.2%",), lr_factors=(1.0, 3.0), seeds=(0, 1),
        train={"epochs": 1, "batch_size": 16, "evals_per_epoch": 2, "max_length": 32, "min_steps": 4},
        head_lr=3e-3, train_size=64, val_size=32, test_size=32, ood_size=16,
        learning_curve_sizes=(16,), learning_curve_methods=("lora",), target_acc=0.5, sweep_seeds=1, lr_extend=0,
        matched_lora=False,  # CI's pipeline check: no comparator arms (VeRA's BL is "not measured" here)
        description="tiny config-built BERT on 64 real movie-review sentences: the pipeline end to end in seconds"),
    "quick": Profile(
        name="quick", model="minilm", task="mr",
        methods=("full", "head_only", "lora", "vera", *SEED_METHODS),
        budgets=("0.1%",), lr_factors=(1 / 3, 1.0, 3.0), seeds=(0, 1, 2, 3, 4),
        train=QUICK_TRAIN, head_lr=1e-2, train_size=2048, val_size=300, test_size=1000, ood_size=200,
        target_acc=0.75, full_ft_artifacts="probed", probe_matrices=12,
        description="pretrained MiniLM-L6 on movie-review sentiment (2,048 training sentences, one epoch, no dropout "
                    "inside the encoder), OOD on Amazon/tweets/NYT; budget 0.1% of the encoder, matched-LoRA arms "
                    "for the fixed-size methods and VeRA, LR chosen on 2 seeds, 5 seeds; fits a 2-core CPU"),
    "catalog": Profile(
        name="catalog", model="minilm", task="mr",
        methods=(),  # () = every registered method; those that cannot be configured for the encoder are skipped
        budgets=("0.1%",), lr_factors=(1 / 3, 1.0, 3.0), seeds=(0, 1, 2, 3, 4),
        train=QUICK_TRAIN, head_lr=1e-2, train_size=2048, val_size=300, test_size=1000, ood_size=200,
        learning_curve_sizes=(64, 256, 1024, None), learning_curve_seeds=5,  # the rubric grades arms with ≥ 5 seeds
        target_acc=0.75, full_ft_artifacts="probed", probe_matrices=12,
        description="every registered method that applies to the encoder, on the quick profile's data and schedule: "
                    "budget 0.1%, matched-LoRA arms, LR chosen on 2 seeds with the grid extended past an edge, "
                    "5 seeds, OOD, learning curves over 64/256/1024/2048 sentences (5 seeds)"),
    "full": Profile(
        name="full", model="minilm", task="mr",
        methods=(),  # () = every registered method
        budgets=("0.1%", "1%"), lr_factors=(0.1, 1 / 3, 1.0, 3.0, 10.0), seeds=(0, 1, 2, 3, 4),
        train={"epochs": 3, "batch_size": 32, "evals_per_epoch": 2, "max_length": 64},
        head_lr=1e-2, extra_tasks=("trec6", "sms_spam"),
        learning_curve_sizes=(64, 256, 1024, None), learning_curve_seeds=5,
        target_acc={"mr": 0.8, "trec6": 0.9, "sms_spam": 0.97},
        description="every method, budgets 0.1% and 1%, 5-point LR sweeps, 5 seeds, MR + TREC-6 + SMS spam, "
                    "OOD, learning curves; meant for a GPU"),
}

# --- the causal-LM and vision settings (evidence/settings/; rationale and cost model in settings/profiles.py) ---
SETTING_CPU_METHODS = ("full", "head_only", "lora", "vera", "surm_circulant", "goft", "dora", "oft", "ia3")
# Learning curves for the seed methods, LoRA and full fine-tuning: DE compares a method's curve with full
# fine-tuning's (and the matched LoRA's), so without full FT's curve no arm's DE can be measured.
CURVE_METHODS = ("full", "lora", "vera", *SEED_METHODS)

LM_CPU = Profile(
    name="lm_cpu", model="smollm2", task="trec_answer_type", methods=SETTING_CPU_METHODS,
    budgets=("0.2%",), lr_factors=(1 / 3, 1.0, 3.0), seeds=(0, 1, 2, 3, 4),
    train={"epochs": 1, "batch_size": 8, "eval_batch_size": 32, "evals_per_epoch": 2, "max_length": 64},
    head_lr=1e-2, train_size=384, val_size=100, test_size=200, ood_size=100,
    learning_curve_sizes=(64, 256), learning_curve_methods=CURVE_METHODS, learning_curve_seeds=5,
    full_ft_artifacts="probed", probe_matrices=12,  # a whole full-FT adapter of the LM is 538 MB
    description="SmolLM2-135M-Instruct: TREC question → answer type in words (exact match of greedy generation, "
                "held-out loss), 384 questions, one epoch; OOD lower-cased and reworded prompts; budget 0.2%")

VIT_CPU = Profile(
    name="vit_cpu", model="dinov2_s14", task="mnist_fewshot", methods=SETTING_CPU_METHODS,
    budgets=("0.4%",), lr_factors=(1 / 3, 1.0, 3.0), seeds=(0, 1, 2, 3, 4),
    train={"epochs": 10, "batch_size": 20, "eval_batch_size": 100, "evals_per_epoch": 1},
    head_lr=1e-2, train_size=10, val_size=10, test_size=50, ood_size=500,  # sizes per class (shots), OOD rows
    learning_curve_sizes=(1, 2, 5), learning_curve_methods=CURVE_METHODS, learning_curve_seeds=5,
    full_ft_artifacts="probed", probe_matrices=12, setting={"image_size": 56},
    description="DINOv2-S/14: 10-shot MNIST (VeRA protocol) at 56 px, held-out test 50/class; OOD scikit-learn "
                "8x8 digits and 30°-rotated MNIST; budget 0.4%")

LM_GPU = dataclasses.replace(
    LM_CPU, name="lm_gpu", methods=(), budgets=("0.1%", "1%"), lr_factors=(0.1, 1 / 3, 1.0, 3.0, 10.0),
    train={"epochs": 3, "batch_size": 16, "eval_batch_size": 128, "evals_per_epoch": 2, "max_length": 64},
    train_size=None, val_size=300, test_size=500, ood_size=500,
    learning_curve_sizes=(256, 1024, None), learning_curve_methods=(), learning_curve_seeds=5,
    description="every applicable method on SmolLM2-135M, all 4,579 training questions, 3 epochs, budgets 0.1% "
                "and 1%, 5 LRs, 5 seeds, learning curves; a GPU")

VIT_GPU = dataclasses.replace(
    VIT_CPU, name="vit_gpu", methods=(), budgets=("0.1%", "1%"), lr_factors=(0.1, 1 / 3, 1.0, 3.0, 10.0),
    train={"epochs": 20, "batch_size": 20, "eval_batch_size": 256, "evals_per_epoch": 1},
    test_size=300, ood_size=None, learning_curve_sizes=(1, 2, 5), learning_curve_methods=(),
    learning_curve_seeds=5, setting={"image_size": 224},
    description="every applicable method on DINOv2-S/14 at 224 px, 10-shot MNIST, test 300/class, both shifted "
                "sets whole, budgets 0.1% and 1%, 5 LRs, 5 seeds, shot curves; a GPU")

PROFILES.update({p.name: p for p in (LM_CPU, VIT_CPU, LM_GPU, VIT_GPU)})


def register_profile(profile: Profile, replace: bool = False) -> Profile:
    """Add ``profile`` to :data:`PROFILES` (``peftatlas run --profile NAME``); an existing name needs ``replace``."""
    if profile.name in PROFILES and not replace:
        raise ValueError(f"profile {profile.name!r} is already registered")
    PROFILES[profile.name] = profile
    return profile


def get_profile(name: str | Profile) -> Profile:
    if isinstance(name, Profile):
        return name
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose from {', '.join(PROFILES)}")
    return PROFILES[name]


def profile_methods(profile: Profile, methods: list[str] | None = None) -> tuple[list[str], list[str]]:
    """(registered methods to run, requested names that are not registered)."""
    everything = sorted(registered_methods(), key=lambda m: (m not in ("full", "head_only"), m))  # references first
    wanted = list(methods) if methods else list(profile.methods) or everything
    known, missing = [], []
    for m in wanted:
        try:
            name = get_method(m).name
        except ValueError:
            missing.append(m)
            continue
        if name not in known:
            known.append(name)
    return known, missing
