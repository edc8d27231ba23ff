"""The run plan: every run of a profile as a pure, serialisable spec, with its store key and dependencies.

The schedule lives here and only here; executors (:mod:`.executors`) run what :meth:`Plan.ready`
hands them and never derive a run themselves. Pseudocode, per arm (one method at one budget on one
task)::

    grid    = lr_grid(method)                                          # the profile's factors × the method's centre
    repeat:
        sweep  = [run(lr, s) for lr in grid for s in sweep_seeds]      # experiment "lr_sweep", validation only
        mean(lr) = mean over sweep_seeds of val_acc(lr, s)             # failed runs left out
        lr*    = argmax mean; ties → the smaller LR
        if lr* is the lowest rate and < lr_extend points were added below: grid += [lr* / step]; continue
        if lr* is the highest rate and < lr_extend points were added above: grid += [lr* · step]; continue
        break                                                          # lr* interior, or the bound reached
    main   = [run(lr*, s) for s in seeds]        # a seed of the sweep is *completed* (test/OOD from its saved
                                                  # adapter), not retrained
    curve  = [run(lr*, s, n) for n in curve sizes for s in the first curve seeds]

``step`` is the ratio of neighbouring rates of the initial grid (3 for a one-point grid). The sweep
is a *dynamic* dependency: :meth:`Plan.ready` is a pure function of the finished records, so the
same records always give the same next runs, whichever executor ran them and in whichever order.

Arms: every method at each of the profile's budgets (solved size knob), fixed-size methods at their
size (budget ``"fixed"``), references (full fine-tuning, head-only; budget None), and — for each
fixed-size method, each budget-solved method whose closest size misses the budget (OFT on the ViT:
103,680 for a 0.4 % budget of 88,226), and each budget-solved method whose target modules differ from
LoRA's arm at that budget or whose count is more than ±10 % from it (VeRA on every linear layer against
LoRA on the value projections) — **matched LoRA arms** on the same target modules: every LoRA
rank whose count is within ±10 % of the method's; when no rank lands there (rank 1 is already too big
for GOFT: 4,596 parameters on MiniLM's q, v against 9,216 for LoRA r = 1), LoRA on the same module
types in an evenly spaced subset of the layers, the most layers that land within ±10 % (GOFT: r = 1 on
q, v of 3 of the 6 layers, 4,608); failing that, the nearest rank below and above (``budget_met``
false). Targets are the method's own (its ``targets``, else its default targets, e.g. (IA)³'s keys,
values and feed-forward outputs). Identical matched arms are shared: ``arm["matches"]`` lists every
method an arm matches. What a record says about its arm is documented on :class:`~.store.RunRecord`.

Models: the plan builds what the runs build — data through the model's
:class:`~.execute.Setting` (``setting_for(profile.model).task``), the model that budgets are counted
on through its ``model`` — so the sentence encoders, the causal LM (``smollm2``) and the vision
transformer (``dinov2_s14``) are planned by one code path. Percentages refer to the model's
parameters outside its task head (:func:`reference_params`: the encoder, the whole LM, the ViT
backbone); target candidates are the method plan's (:func:`arena_plan`, renamed for the settings'
``q_proj``/``v_proj``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..core.method import get_method
from ..core.targeting import head_module_names
from .budget import BudgetError, count_params, solve_budget, target_modules
from .execute import SETTING_MODULES, _Labels, setting_for
from .models import model_info
from .profiles import MethodPlan, Profile, method_plan, profile_methods
from .runspec import RunSpec
from .store import RunRecord, config_key
from .train import TrainConfig

SWEEP, MAIN, CURVE = "lr_sweep", "main", "learning_curve"
MATCH_TOLERANCE = 0.10  # matched-LoRA arms: within ±10 % of the matched method's adapter parameters
MAX_LORA_RANK = 64


@dataclasses.dataclass(frozen=True)
class Arm:
    """One configuration: a method at one budget on one task; what its sweep and seeds share."""

    task: str
    method: str
    budget: str | None  # "0.1%", "fixed", "matched", None (reference)
    hyperparameters: dict[str, Any]  # the method's hyperparameters, "targets" included when set
    role: str  # "method" | "reference" | "matched_lora"
    adapter_params: int
    budget_target: int | None = None
    budget_met: bool | None = None
    matches: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # method → params, budget_met
    note: str = ""

    def label(self) -> str:
        size = ", ".join(f"{k}={v}" for k, v in self.hyperparameters.items() if k != "targets")
        return " ".join(x for x in (self.method, size, f"@{self.budget}" if self.budget else "") if x)

    def record_info(self) -> dict[str, Any]:
        """The arm part of a record (see :class:`~.store.RunRecord`)."""
        return {"role": self.role, "targets": self.hyperparameters.get("targets"), "budget": self.budget,
                "adapter_params": self.adapter_params, "budget_target": self.budget_target,
                "budget_met": self.budget_met, "matches": dict(self.matches)}


class NotInArena(Exception):
    """A registered method the arena does not run; the message says why (``MethodPlan.skip``)."""


# --- the model, by setting ----------------------------------------------------------------------------
def counting_model(profile: Profile, num_labels: int) -> nn.Module:
    """A fresh ``profile.model`` as its runs build it (``setting_for(model).model``, head from seed 0): what
    budgets are counted and LoRA ranks matched on."""
    model, _ = setting_for(profile.model).model(profile.model, _Labels(num_labels), 0, TrainConfig(**profile.train))
    return model


def reference_params(model: nn.Module) -> int:
    """Parameters outside the task head (``head="auto"``), each shared tensor once: what a percentage budget
    is a percentage of (MiniLM: its encoder; SmolLM2: the whole LM, embedding tied to the output; DINOv2:
    the backbone)."""
    heads = head_module_names(model, "auto")
    head_params = {id(p) for h in heads for p in model.get_submodule(h).parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in head_params)


def model_source(model: str) -> str:
    """The model as a run's key names it: the encoder's resolved source, or a setting's prepared asset."""
    if model in SETTING_MODULES:
        from .settings.assets import source_label

        return source_label(model)
    return model_info(model)["source"]


def data_identity(data: Any) -> str:
    """The data part of a run's key, the same on every CPU: ``data.fingerprint()``, except that a set
    computed by floating-point code whose last bits depend on the CPU enters by what it is computed from.

    The ViT task's ``rotated`` set is ``rotate(test, 30°)``, and ``affine_grid``'s matrix product rounds
    differently on an Intel CPU with AVX-512 than on an AMD one without (2026-12-04: every vit_cpu key of
    the AMD machine changed on an Intel one; ``MKL_CBWR=AVX2`` restored them). It enters as (its length,
    the angle, its labels); its source, the test set, is hashed pixel by pixel and the rotation's code is
    in the run's code version. Token ids and the other image sets (integer pixels ÷ 255 or ÷ 16) are exact.
    """
    vision = sys.modules.get("peftatlas.evidence.settings.vision")  # not imported here: an encoder run never loads it
    if vision is None or not isinstance(data, vision.ImageTask):
        return data.fingerprint()
    ROTATION_DEGREES = vision.ROTATION_DEGREES
    h = hashlib.sha256(f"{data.name}:{data.shots}:{data.split_seed}:{data.image_size}px".encode())
    for tag, split in [("train", data.train), ("val", data.val), ("test", data.test),
                       *[(f"ood/{k}", data.ood[k]) for k in sorted(data.ood)]]:
        h.update(tag.encode())
        if tag == "ood/rotated":
            h.update(f"rotate(test[:{len(split)}], {ROTATION_DEGREES} degrees)".encode())
        else:
            h.update(split.images.numpy().tobytes())
        h.update(split.labels.numpy().tobytes())
    return "portable:" + h.hexdigest()


def arena_plan(model: str, method: str) -> MethodPlan:
    """:func:`~.profiles.method_plan` with the settings' target candidates (``settings.profiles.setting_targets``)
    on their models; the encoders' unchanged."""
    plan = method_plan(method)
    if model not in SETTING_MODULES:
        return plan
    from .settings.profiles import setting_targets

    return dataclasses.replace(plan, targets=setting_targets(method))


# --- building the arms ---------------------------------------------------------------------------------
def solve_arms(profile: Profile, task: str, method: str, num_labels: int) -> list[Arm]:
    """The method's arms on ``task``: each budget (or its fixed size, or the reference run).

    Raises :class:`NotInArena` for a method the arena does not run (``MethodPlan.skip``) and
    :class:`ValueError` for one that cannot be configured on this model."""
    cls = get_method(method)
    plan = arena_plan(profile.model, method)
    if plan.skip:
        raise NotInArena(plan.skip)
    model = counting_model(profile, num_labels)
    reference = reference_params(model)
    fixed_hp = {**(plan.derive(model) if plan.derive else {}), **plan.hyperparameters}
    if cls.family == "reference" and cls.size_knob is None and method in ("full", "head_only"):
        budgets: list[str | None] = [None]
    elif cls.size_knob is None:
        budgets = ["fixed"]
    else:
        budgets = list(profile.budgets)
    arms = []
    for b in budgets:
        sol = solve_budget(model, method, None if b in (None, "fixed") else b, reference, plan.targets,
                           fixed_hp, tol=profile.budget_tolerance, max_value=plan.max_knob)
        hp = dict(sol.hyperparameters)
        if sol.targets is not None:
            hp["targets"] = sol.targets if isinstance(sol.targets, str) else list(sol.targets)
        note = sol.note if b != "fixed" else f"fixed size: {cls.name} has no size knob ({sol.achieved:,} parameters)"
        role = "reference" if b is None else "method"
        arms.append(Arm(task, cls.name, b, hp, role, sol.achieved, sol.target, sol.met, note=note))
    return arms


def needs_matched_lora(arm: Arm) -> bool:
    """Whether BL needs LoRA arms at this arm's own size whatever LoRA's budget arm is: a fixed-size method,
    or a budget-solved one that missed the budget (the budget's LoRA arm is then not at its parameter count).
    A budget-solved arm within its budget may need them too (:func:`may_need_matched_lora`)."""
    if arm.role != "method" or arm.method == "lora":
        return False
    return arm.budget == "fixed" or arm.budget_met is False


def may_need_matched_lora(arm: Arm) -> bool:
    """A method arm other than LoRA that BL compares with LoRA: it needs matched arms unless LoRA's own arm
    at the same budget adapts the same modules within ±10 % of its count (VeRA on every linear layer at
    0.1 % does not match LoRA's budget arm on the value projections: it gets LoRA on every linear layer at
    its own count). :func:`matched_lora_arms` decides, given LoRA's budget arms."""
    return arm.role == "method" and arm.method != "lora" and arm.budget is not None


def _layer_index(name: str) -> tuple[str, int, str] | None:
    """``"model.layers.12.self_attn.q_proj"`` → ``("model.layers", 12, "self_attn.q_proj")``: the first
    dotted integer is the block index. None for a module outside the stack of blocks."""
    parts = name.split(".")
    for i, p in enumerate(parts):
        if p.isdigit():
            return ".".join(parts[:i]), int(p), ".".join(parts[i + 1:])
    return None


def layer_subset_match(model: nn.Module, lora: Any, modules: dict[str, nn.Module], n: int
                       ) -> tuple[int, str, int, str] | None:
    """LoRA on ``modules`` restricted to an evenly spaced subset of the blocks, within ±10 % of ``n``
    parameters: ``(rank, targets regex, count, "k of L blocks")`` with the most blocks (ties: the count
    closest to ``n``), or None. Blocks ``round(linspace(0, L - 1, k))``; the regex names exactly the chosen modules."""
    parsed = {name: _layer_index(name) for name in modules}
    if not parsed or any(v is None for v in parsed.values()) or len({v[0] for v in parsed.values()}) != 1:  # type: ignore[index]
        return None
    stack = next(iter(parsed.values()))[0]  # type: ignore[index]
    layers = sorted({v[1] for v in parsed.values()})  # type: ignore[index]
    suffixes = sorted({v[2] for v in parsed.values()})  # type: ignore[index]
    best: tuple[tuple[int, float], tuple[int, str, int, str]] | None = None
    for k in range(len(layers) - 1, 0, -1):
        picked = sorted({layers[round(i * (len(layers) - 1) / max(k - 1, 1))] for i in range(k)})
        chosen = {name: m for name, m in modules.items() if parsed[name][1] in picked}  # type: ignore[index]
        for r in range(1, MAX_LORA_RANK + 1):
            c = count_params(lora, chosen, {"r": r})
            if c > n * (1 + MATCH_TOLERANCE):
                break
            if abs(c - n) <= MATCH_TOLERANCE * n:
                regex = (re.escape(stack) + r"\.(" + "|".join(map(str, picked)) + r")\.(" +
                         "|".join(map(re.escape, suffixes)) + ")")
                if set(target_modules(model, lora, regex)) != set(chosen):
                    continue
                score = (len(picked), -abs(c - n))
                if best is None or score > best[0]:
                    best = (score, (r, regex, c, f"{len(picked)} of {len(layers)} blocks"))
        if best is not None:
            return best[1]
    return None


def _lora_modules(model: nn.Module, lora: Any, targets: Any) -> dict[str, nn.Module] | None:
    try:
        return target_modules(model, lora, targets)
    except (ValueError, BudgetError):
        return None


def matched_lora_arms(profile: Profile, fixed: list[Arm], num_labels: int, budget_lora: Sequence[Arm] = ()
                      ) -> list[Arm]:
    """LoRA arms with the parameter count of each arm in ``fixed`` on its targets (module docstring). An arm
    that :func:`needs_matched_lora` does not flag (a budget-solved one within budget) is skipped when one of
    ``budget_lora`` (LoRA's own arms) at its task and budget adapts the same modules within ±10 % of its
    count: that arm is already its comparator."""
    lora = get_method("lora")
    model = counting_model(profile, num_labels)
    defaults = target_modules(model, lora, None)
    found: dict[tuple, Arm] = {}
    where: dict[str, str] = {}  # a layer-subset arm's targets → "k of L blocks"
    for arm in fixed:
        targets = arm.hyperparameters.get("targets", get_method(arm.method).default_targets)
        modules = _lora_modules(model, lora, targets)
        if not modules:
            continue
        n = arm.adapter_params
        if not needs_matched_lora(arm) and any(
                (b.task, b.budget) == (arm.task, arm.budget) and abs(b.adapter_params - n) <= MATCH_TOLERANCE * n
                and set(_lora_modules(model, lora, b.hyperparameters.get("targets")) or ()) == set(modules)
                for b in budget_lora):
            continue
        if targets is not None and set(modules) == set(defaults):
            targets = None  # LoRA's own defaults ("all-linear" on these models): one arm, not two identical ones
        counts = {r: count_params(lora, modules, {"r": r}) for r in range(1, MAX_LORA_RANK + 1)}
        choices: list[tuple[int, Any]] = [(r, targets) for r, c in counts.items()
                                          if abs(c - n) <= MATCH_TOLERANCE * n]
        if not choices:
            subset = layer_subset_match(model, lora, modules, n)
            if subset is not None:
                counts[subset[0]] = subset[2]
                choices = [(subset[0], subset[1])]
                where[subset[1]] = subset[3]
        if not choices:
            below = [r for r, c in counts.items() if c < n]
            above = [r for r, c in counts.items() if c > n]
            choices = [(r, targets) for r in ([max(below)] if below else []) + ([min(above)] if above else [])]
        for r, arm_targets in choices:
            hp = {"r": r, **({"targets": arm_targets} if arm_targets is not None else {})}
            ident = (arm.task, repr(hp))
            prev = found.get(ident)
            within = abs(counts[r] - n) <= MATCH_TOLERANCE * n
            matches = {**(prev.matches if prev else {}), arm.method: {"params": n, "budget_met": within}}
            met = all(m["budget_met"] for m in matches.values())
            note = "matched LoRA for " + ", ".join(f"{k} ({v['params']:,}{'' if v['budget_met'] else ', outside ±10%'})"
                                                  for k, v in sorted(matches.items()))
            if isinstance(arm_targets, str) and arm_targets in where:
                note += f"; r={r} on {where[arm_targets]}, {counts[r]:,} parameters"
            found[ident] = Arm(arm.task, "lora", "matched", hp, "matched_lora", counts[r], n, met,
                               dict(sorted(matches.items())), note)
    return list(found.values())


def _target_spec(arm: Arm) -> Any:
    """The arm's target modules as configured: its ``targets``, else its method's defaults (LoRA's are
    "all-linear", so a default-target LoRA arm and a VeRA arm on "all-linear" adapt the same modules)."""
    targets = arm.hyperparameters.get("targets")
    if targets is None:
        targets = get_method(arm.method).default_targets
    return targets if isinstance(targets, str) else tuple(targets)


def gets_learning_curves(profile: Profile, arm: Arm, arms: Sequence[Arm]) -> bool:
    """Whether ``arm`` runs the profile's learning curves: an arm of a curved method (every method when the
    profile names none) on the profile's main task. A matched-LoRA arm is curved only when it was matched
    within ±10 % to a curved method, or a curved method's arm among ``arms`` has its target modules and a
    count within ±10 % of it — DE compares a
    curve with the matched LoRA's at equal size only, so a curve at another size would never be read."""
    if arm.task != profile.task:
        return False

    def curved(method: str) -> bool:
        return not profile.learning_curve_methods or method in profile.learning_curve_methods

    if arm.role != "matched_lora":
        return curved(arm.method)
    if curved("lora") and any(curved(m) and v.get("budget_met") for m, v in arm.matches.items()):
        return True  # matched within ±10 % to a curved method (on a subset of its layers, say)
    return curved("lora") and any(
        a.role == "method" and a.method != "lora" and a.task == arm.task and curved(a.method)
        and _target_spec(a) == _target_spec(arm)
        and abs(arm.adapter_params - a.adapter_params) <= MATCH_TOLERANCE * a.adapter_params for a in arms)


# --- the plan ------------------------------------------------------------------------------------------
class Plan:
    """The runs of a profile (see the module docstring). Build with :func:`build_plan`."""

    def __init__(self, profile: Profile, arms: list[Arm], tasks: dict[str, Any],
                 code_versions: dict[str, str], artifacts: str = "artifacts", skipped: list[str] | None = None) -> None:
        self.profile = profile
        self.arms = arms
        self.tasks = tasks
        self.code_versions = code_versions
        self.artifacts = artifacts.rstrip("/")
        self.skipped = skipped or []
        self._model_source = model_source(profile.model)
        self._specs: dict[tuple, RunSpec] = {}
        self.last_grid: list[float] = []

    # --- specs -------------------------------------------------------------------------------------
    def spec(self, arm: Arm, experiment: str, lr: float, seed: int, train_size: int | None = None,
             lr_info: dict[str, Any] | None = None) -> RunSpec:
        """The run of ``arm`` at (lr, seed, training-set size) in ``experiment``, with its keys."""
        memo = (id(arm), experiment, lr, seed, train_size, repr(lr_info))
        if memo not in self._specs:
            self._specs[memo] = self._spec(arm, experiment, lr, seed, train_size, lr_info)
        return self._specs[memo]

    def _spec(self, arm: Arm, experiment: str, lr: float, seed: int, train_size: int | None,
              lr_info: dict[str, Any] | None) -> RunSpec:
        p = self.profile
        task = self.tasks[arm.task]
        if covers_training_set(task, train_size):
            train_size = None
        data = task if train_size is None else task.subset(train=train_size)
        head_lr = None if arm.method == "head_only" else p.head_lr
        train = {"lr": lr, "head_lr": head_lr, "seed": seed, "target_acc": p.target_for(arm.task), **p.train}
        identity = {
            "model": self._model_source, "task": task.name, "data": data_identity(data),
            "split_seed": task.split_seed, "method": arm.method, "hyperparameters": arm.hyperparameters,
            "budget": arm.budget, "train": _train_identity(train), "train_size": train_size, "profile": p.name,
            "code_version": self.code_versions[arm.method],
        }
        train_key = config_key(identity)
        key = config_key({**identity, "experiment": experiment})
        sizes = data_sizes(p, arm.task, train_size)
        return RunSpec(key=key, train_key=train_key, kind="train", experiment=experiment, profile=p.name,
                       model=p.model, task=task.name, data=sizes, method=arm.method,
                       hyperparameters=arm.hyperparameters, budget=arm.budget, lr=lr, seed=seed, train_size=train_size,
                       train=train, code_version=self.code_versions[arm.method], evaluate_test=experiment != SWEEP,
                       artifact=f"{self.artifacts}/{key[:24]}", arm={**arm.record_info(), **(lr_info or {})})

    # --- the schedule ------------------------------------------------------------------------------
    def sweep_seeds(self) -> tuple[int, ...]:
        return self.profile.seeds[: max(1, self.profile.sweep_seeds)]

    def choose_lr(self, arm: Arm, done: Mapping[str, RunRecord]) -> tuple[list[RunSpec], dict[str, Any] | None]:
        """(sweep runs still to settle, the LR choice once every needed sweep run has settled).

        The choice is ``{"lr": lr*, "lr_grid": [...], "lr_means": {lr: mean}, "lr_seeds": [...],
        "lr_at_edge": bool}`` or None while sweep runs are pending or when every sweep run failed
        (then the list is empty). The grid reached so far is kept in ``self.last_grid``.
        """
        grid = self.profile.lr_grid(arm.method)
        step = grid[1] / grid[0] if len(grid) > 1 else 3.0
        added = {"below": 0, "above": 0}
        seeds = self.sweep_seeds()
        while True:
            self.last_grid = grid
            specs = [self.spec(arm, SWEEP, lr, s) for lr in grid for s in seeds]
            pending = [s for s in specs if s.key not in done]
            if pending:
                return pending, None
            means: dict[float, float] = {}
            for lr in grid:
                vals = [done[s.key].metrics["val_acc"] for s in specs if s.lr == lr and done[s.key].status == "done"]
                if vals:
                    means[lr] = statistics.fmean(vals)
            if not means:
                return [], None
            best = max(means, key=lambda lr: (means[lr], -lr))
            if best == grid[0] and added["below"] < self.profile.lr_extend:
                grid = [_round_lr(grid[0] / step), *grid]
                added["below"] += 1
                continue
            if best == grid[-1] and added["above"] < self.profile.lr_extend:
                grid = [*grid, _round_lr(grid[-1] * step)]
                added["above"] += 1
                continue
            return [], {"lr": best, "lr_grid": grid, "lr_means": {repr(k): v for k, v in means.items()},
                        "lr_seeds": list(seeds), "lr_at_edge": best in (grid[0], grid[-1])}

    def arm_runs(self, arm: Arm, done: Mapping[str, RunRecord]) -> tuple[list[RunSpec], bool]:
        """(runs of ``arm`` whose dependencies have settled and that have not, whether the arm is complete)."""
        pending, choice = self.choose_lr(arm, done)
        if choice is None:
            return pending, not pending
        lr = choice.pop("lr")
        # runs that share a training computation: a sweep seed and the main seed; a main seed and a learning-curve
        # point on the whole training set. The later one completes (or copies) the earlier, never retrains it.
        twins = {self.spec(arm, SWEEP, lr, s).train_key: self.spec(arm, SWEEP, lr, s).key for s in self.sweep_seeds()}
        follow = [self.spec(arm, MAIN, lr, s, lr_info=choice) for s in self.profile.seeds]
        p = self.profile
        if gets_learning_curves(p, arm, self.arms):
            for spec in follow:
                twins.setdefault(spec.train_key, spec.key)
            follow += [self.spec(arm, CURVE, lr, s, n, lr_info=choice) for n in p.learning_curve_sizes
                       for s in p.seeds[: p.learning_curve_seeds]]
        out = []
        for spec in follow:
            if spec.key in done:
                continue
            twin_key = twins.get(spec.train_key)
            if twin_key == spec.key:
                twin_key = None
            if twin_key is not None:
                twin = done.get(twin_key)
                if twin is None or twin.status != "done" or (spec.experiment == CURVE and "test_acc" not in
                                                             twin.metrics):
                    continue  # waits for its twin (or the twin failed: nothing to complete)
                spec = dataclasses.replace(spec, kind="complete", depends_on=(twin_key,),
                                           twin=dataclasses.asdict(twin), artifact=twin.artifact or spec.artifact)
            out.append(spec)
        return out, not out

    def ready(self, done: Mapping[str, RunRecord]) -> list[RunSpec]:
        """Every run whose dependencies have settled in ``done`` (key → record, failed ones included) and that
        is not in ``done`` itself, in a fixed order: every arm's LR sweep and main runs before any learning-curve
        run (a window that ends early leaves graded arms whose DE waits, not arms half done), and within that,
        reference arms' long runs first, then the matched-LoRA arms, head-only last."""
        out: list[RunSpec] = []
        for arm in sorted(self.arms, key=_cost_order):
            out += self.arm_runs(arm, done)[0]
        return sorted(out, key=lambda spec: spec.experiment == CURVE)  # stable: the arm order stays within each

    def covered(self, done: Mapping[str, RunRecord]) -> list[RunRecord]:
        """The records of ``done`` that belong to this plan, in plan order (arm by arm: sweep, main, curve)."""
        keys: list[str] = []
        for arm in self.arms:
            _, choice = self.choose_lr(arm, done)
            grid = self.last_grid
            keys += [self.spec(arm, SWEEP, lr, s).key for lr in grid for s in self.sweep_seeds()]
            if choice:
                lr = choice["lr"]
                keys += [self.spec(arm, MAIN, lr, s).key for s in self.profile.seeds]
                p = self.profile
                if gets_learning_curves(p, arm, self.arms):
                    keys += [self.spec(arm, CURVE, lr, s, n).key for n in p.learning_curve_sizes
                             for s in p.seeds[: p.learning_curve_seeds]]
        seen: set[str] = set()
        return [done[k] for k in keys if k in done and not (k in seen or seen.add(k))]


def _train_identity(train: dict[str, Any]) -> dict[str, Any]:
    """The TrainConfig fields as they enter a key: every field, defaults included (as ``dataclasses.asdict``)."""
    from .train import TrainConfig

    return dataclasses.asdict(TrainConfig(**train))


def _round_lr(lr: float) -> float:
    return float(f"{lr:.3g}")


def _cost_order(arm: Arm) -> tuple[bool, bool, bool]:
    """Full fine-tuning first (the longest runs), then the matched-LoRA arms (short; each one unlocks BL and
    OOD of every method it matches, so the grades of arms already run do not wait for the end), head-only
    last (seconds once its features are cached)."""
    return (arm.method == "head_only", arm.method != "full", arm.role != "matched_lora")


def data_sizes(profile: Profile, task: str, curve: int | None = None) -> dict[str, Any]:
    """``RunSpec.data`` of a run on ``task``: the profile's sizes, OOD on its main task only, the learning curve's
    training size, and the setting's options (``Profile.setting``, e.g. the vision resolution)."""
    return {"task": task, "ood": task == profile.task, "train": profile.train_size, "val": profile.val_size,
            "test": profile.test_size, "ood_size": profile.ood_size, "curve": curve, **profile.setting}


@dataclasses.dataclass(frozen=True)
class _DataOnly:
    """What :meth:`~.execute.Setting.task` reads of a run spec: its ``data``."""

    data: dict[str, Any]


def profile_tasks(profile: Profile) -> dict[str, Any]:
    """The profile's tasks as its runs load them (its setting's ``task`` at :func:`data_sizes`; OOD sets on
    the main task only): :class:`~.data.TaskData` for the encoders and the LM, an ``ImageTask`` for the ViT."""
    setting = setting_for(profile.model)
    return {name: setting.task(_DataOnly(data_sizes(profile, name))) for name in  # type: ignore[arg-type]
            (profile.task, *profile.extra_tasks)}


def train_units(task: Any) -> int:
    """The size of a task's training set in the units of ``Profile.train_size``: rows, or shots per class
    for a few-shot task (one that has ``shots``)."""
    shots = getattr(task, "shots", None)
    return int(shots) if shots is not None else len(task.train)


def covers_training_set(task: Any, train_size: int | None) -> bool:
    """Whether a run on ``train_size`` units trains on the whole training set (``None`` means all): such a
    learning-curve point is the same run as a main seed, so its spec drops the size and its record is a copy."""
    return train_size is None or train_size >= train_units(task)


def build_plan(profile: Profile, methods: list[str] | None = None, artifacts: str = "artifacts",
               code_versions: dict[str, str] | None = None, log: Any = None, cache: Path | None = None) -> Plan:
    """Solve every arm of ``profile`` (restricted to ``methods``) and return its :class:`Plan`.

    ``code_versions`` (method → version) default to :func:`~.codeversion.method_code_versions`.
    With a ``cache`` folder, the solved arms are kept there in a JSON file named by the hash of
    everything they depend on (profile, methods, code versions, this module and the budget solver), so
    a resumed profile does not solve its budgets again (the catalog's 55 take minutes on a CPU).
    """
    from .codeversion import ImportGraph, method_code_versions, package_root

    say = log or (lambda s: None)
    names, missing = profile_methods(profile, methods)
    versions = dict(code_versions) if code_versions is not None else method_code_versions(profile.model)
    tasks = profile_tasks(profile)
    graph = ImportGraph(package_root())
    ident = config_key({"profile": dataclasses.asdict(profile), "methods": names,
                        "versions": {m: versions.get(get_method(m).name) for m in names},
                        "planner": graph.digest(graph.closure(["peftatlas.evidence.plan"]))})
    cached = _read_arms(cache / f"arms-{ident[:24]}.json") if cache is not None else None
    if cached is not None:
        arms, skipped = cached
    else:
        arms, skipped = _solve_all(profile, names, tasks)
        skipped = [f"{m}: not a registered method; skipped (see `peftatlas methods`)" for m in missing] + skipped
        if cache is not None:
            _write_arms(cache / f"arms-{ident[:24]}.json", arms, skipped, profile.name)
    for line in skipped:
        say(line)
    return Plan(profile, arms, tasks, versions, artifacts, skipped)


def _solve_all(profile: Profile, names: list[str], tasks: dict[str, Any]) -> tuple[list[Arm], list[str]]:
    arms: list[Arm] = []
    skipped: list[str] = []
    for task, data in tasks.items():
        task_arms: list[Arm] = []
        for method in names:
            try:
                task_arms += solve_arms(profile, task, method, data.num_labels)
            except NotInArena as e:
                skipped.append(f"{method}: skipped, the arena does not run it: {e}")
            except (ValueError, NotImplementedError) as e:
                skipped.append(f"{method}: skipped, cannot configure it for {profile.model}: {e}")
        if profile.matched_lora and "lora" in {get_method(m).name for m in _registered_safe()}:
            task_arms += matched_lora_arms(profile, [a for a in task_arms if may_need_matched_lora(a)],
                                           data.num_labels, [a for a in task_arms
                                                             if a.role == "method" and a.method == "lora"])
        arms += task_arms
    return arms, skipped


def _read_arms(path: Path) -> tuple[list[Arm], list[str]] | None:
    try:
        data = json.loads(path.read_text())
        return [Arm(**a) for a in data["arms"]], list(data["skipped"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent or unreadable: solve again


def _write_arms(path: Path, arms: list[Arm], skipped: list[str], profile: str) -> None:
    """Atomically (a temporary file renamed into place); ``profile`` names the profile the arms were solved
    for, so that a shipped folder takes only its own profile's plans (:func:`~.shipped.export`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"profile": profile, "arms": [dataclasses.asdict(a) for a in arms],
                               "skipped": skipped}, indent=1))
    os.replace(tmp, path)


def _registered_safe() -> list[str]:
    from ..core.method import registered_methods

    return list(registered_methods())


def run_counts(plan: Plan) -> dict[str, int]:
    """What the plan will execute, before any result is known (for cost tables).

    ``sweep`` trainings of the initial grids; ``extension_max``: at most this many more sweep trainings
    when grids are extended (one side per arm can extend: ``lr_extend × sweep seeds``); ``main``: seed
    runs trained anew; ``completions``: sweep seeds evaluated on test/OOD from their adapters; ``curve``:
    learning-curve trainings; ``curve_copies``: curve points on the whole training set, copies of a main
    seed's record (no training, but each is a run of the plan).
    """
    p = plan.profile
    seeds = plan.sweep_seeds()
    out = {"arms": len(plan.arms), "sweep": 0, "extension_max": 0, "main": 0, "completions": 0, "curve": 0,
           "curve_copies": 0}
    for arm in plan.arms:
        out["sweep"] += len(p.lr_grid(arm.method)) * len(seeds)
        out["extension_max"] += p.lr_extend * len(seeds)
        out["main"] += len([s for s in p.seeds if s not in seeds])
        out["completions"] += len([s for s in p.seeds if s in seeds])
        if gets_learning_curves(p, arm, plan.arms):
            for n in p.learning_curve_sizes:
                copy = covers_training_set(plan.tasks[arm.task], n)
                out["curve_copies" if copy else "curve"] += len(p.seeds[: p.learning_curve_seeds])
    return out
