"""The plans of the causal-LM and vision settings: a CPU profile each, a GPU profile each, and their cost.

Each plan is an arena :class:`~peftatlas.evidence.profiles.Profile` (same fields, same fairness
rules: budget-matched size knobs, each method's own LR sweep on validation, ≥ 5 seeds on test,
learning curves), plus the setting's own target-module names (:data:`SETTING_TARGETS`; SmolLM2
and transformers-5 DINOv2 both call their attention projections ``q_proj``/``k_proj``/``v_proj``).

CPU profiles (seed methods and references, plus DoRA, OFT, (IA)³):

* ``lm_cpu`` — SmolLM2-135M on question → answer type; 384 training questions, one epoch at batch
  8 (48 steps), validation 100, test 200, both shifted formats 100 each; budget 0.2 % of the model;
  the lower reference ``head_only`` is the frozen model (a causal LM's head is its tied input
  embedding), learning curves over 64 / 256 questions;
* ``vit_cpu`` — DINOv2-S/14 on 10-shot MNIST at 56 × 56 px (4 × 4 patches); 10 epochs at batch 20
  (50 steps), validation 10 per class, test 50 per class, 500 digits + 500 rotated; budget 0.4 %
  of the backbone; learning curves over 1 / 2 / 5 shots per class.

GPU profiles: every registered method that applies, budgets 0.1 % and 1 %, five LRs, five seeds,
the whole training split (LM) or 224 px images (ViT), learning curves.

The four profiles are defined in :mod:`peftatlas.evidence.profiles` (so ``peftatlas run --profile``
lists them) and re-exported here. In the vision profiles ``train_size`` and ``learning_curve_sizes``
count shots per class, ``val_size``/``test_size`` rows per class, ``ood_size`` rows per shifted set,
and ``setting={"image_size": px}`` is the input resolution (it enters each run's data fingerprint).
The planner takes each method's target candidates from :func:`setting_targets`.

:func:`estimate` turns a profile and per-step / per-row costs into a wall-time estimate:

    run(m)      = steps(m) · step_s(m) + evals · val_rows · val_row_s
    heldout     = (test_rows + Σ ood_rows) · test_row_s
    per arm     = |LR grid| · sweep_seeds · run  +  (|seeds| − sweep_seeds) · run  +  |seeds| · heldout
                  + |curve sizes| · curve_seeds · (run(at size) + heldout)
    wall        = Σ over arms (each method's configurations + matched-LoRA arms) / workers

(the plan's rules: the LR is chosen on the mean over the first ``sweep_seeds`` seeds, whose sweep runs
are reused as seeds; each fixed-size method gets LoRA arms of its count, priced like LoRA without
curves; grid extensions past an edge are not counted).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from ...core.method import get_method
from ..budget import TargetSpec
from ..profiles import LM_CPU, LM_GPU, SETTING_CPU_METHODS, VIT_CPU, VIT_GPU, Profile, method_plan

QV: tuple[str, ...] = ("q_proj", "v_proj")
CPU_METHODS = SETTING_CPU_METHODS
SEEDS5 = (0, 1, 2, 3, 4)

# target candidates in order of preference, as in the encoder's METHOD_PLANS (budget solver takes the first
# set that lands within ±10 %); methods not listed use their own default targets
SETTING_TARGETS: dict[str, tuple[TargetSpec, ...]] = {
    "lora": (QV, "all-linear", ("v_proj",)),
    "dora": (QV, "all-linear", ("v_proj",)),
    "vera": ("all-linear", QV),
    "surm_circulant": (QV, ("q_proj",)),
    "goft": (QV,),
    "oft": (QV, "all-linear"),
}

ENCODER_NAMES = {"query": "q_proj", "key": "k_proj", "value": "v_proj"}  # BERT's → Llama's / DINOv2's


def setting_targets(method: str) -> tuple[TargetSpec, ...]:
    """Target candidates of ``method`` on SmolLM2 / DINOv2: :data:`SETTING_TARGETS`, else the encoder plan's
    candidates (:func:`~peftatlas.evidence.profiles.method_plan`) with BERT's attention names renamed."""
    name = get_method(method).name
    if name in SETTING_TARGETS:
        return SETTING_TARGETS[name]
    return tuple(_renamed(spec) for spec in method_plan(name).targets)


def _renamed(spec: TargetSpec) -> TargetSpec:
    if spec is None or isinstance(spec, str):  # the method's default, "all-linear", a pattern
        return spec
    return tuple(ENCODER_NAMES.get(n, n) for n in spec)


SETTING_PROFILES: dict[str, Profile] = {p.name: p for p in (LM_CPU, VIT_CPU, LM_GPU, VIT_GPU)}


@dataclasses.dataclass(frozen=True)
class Costs:
    """Measured (or assumed) unit costs, in seconds on one worker."""

    step_s: Mapping[str, float]  # per training step, by method
    val_row_s: float  # one validation row (LM: a teacher-forced pass; ViT: a forward)
    test_row_s: float  # one test / OOD row (LM: generation + a teacher-forced pass; ViT: a forward)
    val_rows: int
    heldout_rows: int  # test + every OOD set
    steps: int  # training steps of one main run
    evals: int  # validation points per run
    workers: int = 2


def estimate(profile: Profile, costs: Costs, configurations: Mapping[str, int] | None = None,
             curve_steps: Mapping[int | None, int] | None = None, matched_arms: int = 0,
             matched_curves: bool = False) -> dict[str, float]:
    """Seconds per phase and in total (see the module docstring); ``configurations`` = configurations per
    method (default 1: one budget), ``curve_steps`` = training steps at each learning-curve size,
    ``matched_arms`` = LoRA arms the plan adds to match fixed-size methods, with learning curves when
    ``matched_curves`` (the plan gives them LoRA's curves when LoRA is a curve method)."""
    default_step = max(costs.step_s.values())
    lrs, seeds = len(profile.lr_factors), len(profile.seeds)
    sweep_seeds = min(seeds, max(1, getattr(profile, "sweep_seeds", 1)))
    curve_methods = profile.learning_curve_methods or profile.methods

    def run(method: str, steps: int) -> float:
        return steps * costs.step_s.get(method, default_step) + costs.evals * costs.val_rows * costs.val_row_s

    heldout = costs.heldout_rows * costs.test_row_s
    sweep = main = curves = 0.0
    arms = [(m, (configurations or {}).get(m, 1), True) for m in profile.methods]
    arms += [("lora", matched_arms, matched_curves)] if matched_arms else []
    for method, n, with_curves in arms:
        if costs.step_s.get(method) == 0.0:  # nothing trains (the frozen LM): one evaluation
            main += n * (costs.val_rows * costs.val_row_s + heldout)
            continue
        sweep += n * lrs * sweep_seeds * run(method, costs.steps)
        main += n * ((seeds - sweep_seeds) * run(method, costs.steps) + seeds * heldout)
        if with_curves and method in curve_methods:
            for size in profile.learning_curve_sizes:
                steps = (curve_steps or {}).get(size, costs.steps)
                curves += n * profile.learning_curve_seeds * (run(method, steps) + heldout)
    total = sweep + main + curves
    return {"sweep_s": sweep / costs.workers, "main_s": main / costs.workers, "curves_s": curves / costs.workers,
            "total_s": total / costs.workers, "total_h": total / costs.workers / 3600}


# The per-step and per-row costs measured for docs/evidence.md (one-thread CPU time, medians of steps 2–4; the
# ViT's evaluation cost per image is the median no-grad forward), and the training steps at each curve size.
LM_CPU_COSTS = Costs(step_s={"lora": 1.85, "full": 2.97, "vera": 3.23, "surm_circulant": 2.32, "goft": 2.25,
                             "dora": 2.49, "oft": 2.53, "ia3": 2.16, "head_only": 0.0},
                     val_row_s=0.144, test_row_s=0.285, val_rows=100, heldout_rows=200 + 2 * 100, steps=48, evals=2)
VIT_CPU_COSTS = Costs(step_s={"lora": 0.74, "full": 0.85, "vera": 2.22, "surm_circulant": 0.78, "goft": 0.83,
                              "dora": 0.81, "oft": 0.82, "ia3": 0.72, "head_only": 0.01},
                      val_row_s=0.0153, test_row_s=0.0153, val_rows=100, heldout_rows=500 + 2 * 500, steps=50, evals=10)
CURVE_STEPS: dict[str, dict[int | None, int]] = {"lm_cpu": {64: 8, 256: 32},  # batch 8, one epoch
                                                  "vit_cpu": {1: 10, 2: 10, 5: 30}}  # batch 20, 10 epochs


def runs_in(profile: Profile, methods: int | None = None, matched_arms: int = 0, matched_curves: bool = False) -> int:
    """Training runs of a profile with one configuration per method (sweep + extra seeds + curves)."""
    m = methods if methods is not None else len(profile.methods)
    seeds = len(profile.seeds)
    sweep_seeds = min(seeds, max(1, getattr(profile, "sweep_seeds", 1)))
    curve = len(profile.learning_curve_methods) if profile.learning_curve_methods else m
    per_arm = len(profile.lr_factors) * sweep_seeds + seeds - sweep_seeds
    curve += matched_arms if matched_curves else 0
    return (m + matched_arms) * per_arm + curve * len(profile.learning_curve_sizes) * profile.learning_curve_seeds


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{math.ceil(seconds / 60)} min"
