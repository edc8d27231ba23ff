"""The run plan: LR choice on several seeds with a bounded grid extension, matched-LoRA arms, and code
versions that cover every module a run imports. Plans are pure functions of finished records, so most
of this is tested with hand-made records and no training."""

from __future__ import annotations

import dataclasses
import json
import textwrap
import time
from pathlib import Path

import pytest

from peftatlas.evidence.codeversion import ImportGraph, compute_code_versions, method_module, package_root
from peftatlas.evidence.plan import CURVE, MAIN, SWEEP, build_plan
from peftatlas.evidence.profiles import PROFILES
from peftatlas.evidence.runspec import RunSpec
from peftatlas.evidence.store import RunRecord

SMOKE = PROFILES["smoke"]


def fake(spec: RunSpec, val_acc: float, status: str = "done") -> RunRecord:
    return RunRecord(key=spec.key, experiment=spec.experiment, model=spec.model, task=spec.task, method=spec.method,
                     hyperparameters=spec.hyperparameters, budget=spec.budget, trainable_params=1, lr=spec.lr,
                     seed=spec.seed, train_size=spec.train_size, metrics={"val_acc": val_acc}, curve=[],
                     status=status, error=None, artifact=spec.artifact, code_version=spec.code_version,
                     created=time.time(), wall_seconds=1.0, profile=spec.profile, train_key=spec.train_key)


@pytest.fixture(scope="module")
def head_plan():
    profile = dataclasses.replace(SMOKE, name="plan-lr", methods=("head_only",), lr_factors=(1.0, 3.0, 9.0),
                                  seeds=(0, 1, 2, 3, 4), sweep_seeds=2, lr_extend=2, learning_curve_sizes=())
    return build_plan(profile)


def settle(plan, done, score):
    """Finish every ready sweep run with ``score(lr, seed)``; return the other ready runs."""
    while True:
        ready = plan.ready(done)
        sweep = [s for s in ready if s.experiment == SWEEP]
        if not sweep:
            return ready
        for s in sweep:
            done[s.key] = fake(s, score(s.lr, s.seed))


def test_lr_is_chosen_on_the_mean_of_two_seeds(head_plan):
    grid = head_plan.profile.lr_grid("head_only")
    # seed 0 alone prefers the top rate; the mean over seeds 0 and 1 prefers the middle one (interior)
    table = {(grid[0], 0): 0.60, (grid[1], 0): 0.70, (grid[2], 0): 0.72,
             (grid[0], 1): 0.60, (grid[1], 1): 0.70, (grid[2], 1): 0.60}
    done: dict = {}
    first = head_plan.ready(done)
    assert sorted((s.lr, s.seed) for s in first) == sorted(table)  # 3 rates × 2 seeds, nothing else yet
    follow = settle(head_plan, done, lambda lr, seed: table[lr, seed])
    assert {s.lr for s in follow} == {grid[1]} and sorted(s.seed for s in follow) == [0, 1, 2, 3, 4]
    kinds = {s.seed: s.kind for s in follow}
    assert kinds == {0: "complete", 1: "complete", 2: "train", 3: "train", 4: "train"}  # sweep seeds are reused
    info = follow[0].arm
    assert info["lr_grid"] == grid and info["lr_seeds"] == [0, 1] and not info["lr_at_edge"]
    assert info["lr_means"][repr(grid[1])] == pytest.approx(0.70)


def test_grid_is_extended_past_an_edge_until_the_best_is_interior(head_plan):
    grid = head_plan.profile.lr_grid("head_only")
    peak = grid[0] / 3  # the best rate lies one step below the grid
    done: dict = {}
    follow = settle(head_plan, done, lambda lr, seed: 0.9 - abs(lr - peak))
    assert len({s.lr for s in follow}) == 1 and follow[0].lr == pytest.approx(peak, rel=1e-2)
    info = follow[0].arm
    assert len(info["lr_grid"]) == len(grid) + 2 and info["lr_grid"][2:] == grid  # two points added below
    assert info["lr_grid"][1] == follow[0].lr and not info["lr_at_edge"]
    assert len([r for r in done.values() if r.experiment == SWEEP]) == 2 * (len(grid) + 2)


def test_grid_extension_is_bounded(head_plan):
    grid = head_plan.profile.lr_grid("head_only")
    done: dict = {}
    follow = settle(head_plan, done, lambda lr, seed: lr)  # larger is always better
    info = follow[0].arm
    assert len(info["lr_grid"]) == len(grid) + 2 and info["lr_grid"][:3] == grid  # at most 2 points above
    assert follow[0].lr == info["lr_grid"][-1] and info["lr_at_edge"]  # recorded as still at the edge


def test_failed_sweep_runs_leave_the_mean_and_an_arm_without_any_ends(head_plan):
    done: dict = {}
    for s in head_plan.ready(done):
        done[s.key] = fake(s, 0.5, status="failed")
    assert head_plan.ready(done) == []  # nothing to choose from: no main runs
    assert {r.key for r in head_plan.covered(done)} == set(done)


def test_every_arms_main_runs_come_before_any_learning_curve_run():
    profile = dataclasses.replace(SMOKE, name="plan-order", methods=("lora", "head_only"), lr_factors=(1.0,),
                                  seeds=(0, 1), sweep_seeds=1, lr_extend=0, learning_curve_sizes=(16,),
                                  learning_curve_methods=(), matched_lora=False)
    plan = build_plan(profile)
    ready = settle(plan, {}, lambda lr, seed: 0.7)
    kinds = [s.experiment for s in ready]
    assert {s.method for s in ready if s.experiment == MAIN} == {"lora", "head_only"}
    assert {s.method for s in ready if s.experiment == CURVE} == {"lora", "head_only"}
    # an arm's curves no longer run before the next arm's main runs: a window that ends early leaves graded arms
    assert kinds == sorted(kinds, key=lambda k: k == CURVE), kinds


def test_run_specs_are_pure_and_serialisable(head_plan):
    spec = head_plan.ready({})[0]
    again = RunSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    other = build_plan(head_plan.profile).ready({})[0]
    assert other.key == spec.key and other.train_key == spec.train_key  # same profile → same keys
    main = head_plan.spec(head_plan.arms[0], MAIN, spec.lr, spec.seed)
    assert main.train_key == spec.train_key and main.key != spec.key


def test_matched_lora_arms_for_fixed_size_methods():
    """GOFT and SURM-circulant have no size knob: the plan adds LoRA on the same targets with every rank
    within ±10 % of their count, or the nearest ranks around it (marked as missing the budget)."""
    from peftatlas.evidence.budget import count_params, target_modules
    from peftatlas.evidence.models import load_classifier

    profile = dataclasses.replace(SMOKE, name="plan-match", methods=("goft", "surm_circulant", "lora"),
                                  matched_lora=True)
    plan = build_plan(profile)
    fixed = {a.method: a for a in plan.arms if a.budget == "fixed"}
    matched = [a for a in plan.arms if a.role == "matched_lora"]
    assert set(fixed) == {"goft", "surm_circulant"} and matched
    model, _ = load_classifier(profile.model, 2)
    lora = __import__("peftatlas").get_method("lora")
    for method, arm in fixed.items():
        mine = [a for a in matched if method in a.matches]
        assert mine, method
        own = set(target_modules(model, lora, arm.hyperparameters["targets"]))
        for m in mine:
            assert m.method == "lora" and m.budget == "matched"
            chosen = set(target_modules(model, lora, m.hyperparameters["targets"]))
            if m.hyperparameters["targets"] != arm.hyperparameters["targets"]:  # a subset of the layers
                assert chosen < own and "blocks" in m.note
            built = count_params(lora, target_modules(model, lora, m.hyperparameters["targets"]),
                                 {"r": m.hyperparameters["r"]})
            assert m.adapter_params == built
            within = abs(built - arm.adapter_params) <= 0.10 * arm.adapter_params
            assert m.matches[method] == {"params": arm.adapter_params, "budget_met": within}
    surm = [a for a in matched if "surm_circulant" in a.matches]
    assert any(a.matches["surm_circulant"]["budget_met"] for a in surm)  # r=1 on q,v has exactly SURM's count
    spec = plan.spec(surm[0], SWEEP, 1e-3, 0)
    assert spec.arm["role"] == "matched_lora" and spec.arm["matches"] == surm[0].matches
    assert spec.key != plan.spec(next(a for a in plan.arms if a.budget == "0.2%"), SWEEP, 1e-3, 0).key
    # the matched arms run before the methods they match: each one unlocks BL and OOD of those already run
    order = [(s.arm["role"], s.method) for s in plan.ready({})]
    last_matched = max(i for i, (role, _) in enumerate(order) if role == "matched_lora")
    assert all(i > last_matched for i, (role, m) in enumerate(order) if role == "method" and m != "lora"), order


# --- code versions ------------------------------------------------------------------------------------------
def make_package(root: Path) -> Path:
    pkg = root / "fakepkg"
    (pkg / "methods").mkdir(parents=True)
    files = {
        "__init__.py": "from .methods import a, b\n__version__ = '1'\n",
        "kernel.py": "def add(x, y):\n    return x + y\n",
        "methods/__init__.py": "",
        "methods/a.py": "from ..kernel import add\n",
        "methods/b.py": "from .. import __version__\n\ndef f():\n    import math\n    return math.pi\n",
        "methods/c.py": "def g():\n    from fakepkg.methods import a\n    return a\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(textwrap.dedent(text))
    return pkg


def test_closure_follows_imports_through_the_package(tmp_path):
    pkg = make_package(tmp_path)
    graph = ImportGraph(pkg, package="fakepkg")
    assert graph.closure(["fakepkg.methods.a"]) == {"fakepkg.methods.a", "fakepkg.kernel"}
    # `from .. import __version__` reads the package initialiser's text but not what it imports
    assert graph.closure(["fakepkg.methods.b"]) == {"fakepkg.methods.b", "fakepkg"}
    # a lazy import inside a function counts, transitively
    assert graph.closure(["fakepkg.methods.c"]) == {"fakepkg.methods.c", "fakepkg.methods.a", "fakepkg.kernel"}
    before = {m: graph.digest(graph.closure([m])) for m in ("fakepkg.methods.a", "fakepkg.methods.b",
                                                            "fakepkg.methods.c")}
    (pkg / "kernel.py").write_text("def add(x, y):\n    return y + x\n")
    graph = ImportGraph(pkg, package="fakepkg")
    after = {m: graph.digest(graph.closure([m])) for m in before}
    assert after["fakepkg.methods.a"] != before["fakepkg.methods.a"]
    assert after["fakepkg.methods.c"] != before["fakepkg.methods.c"]
    assert after["fakepkg.methods.b"] == before["fakepkg.methods.b"]


def test_real_closures_cover_shared_kernels_and_the_training_loop():
    graph = ImportGraph(package_root())
    vera = graph.closure([method_module("vera")])
    assert "peftatlas.methods.lora" in vera and "peftatlas.serving" in vera  # add_lowrank, the row kernels
    assert "peftatlas.methods.lora" in graph.closure([method_module("lora_fa")])  # LoRA-FA subclasses LoRA
    assert "peftatlas.methods.lora" not in graph.closure([method_module("goft")])
    loop = graph.closure(["peftatlas.evidence.execute"])
    assert {"peftatlas.evidence.train", "peftatlas.core.model", "peftatlas.core.io"} <= loop
    assert "peftatlas.evidence.plan" not in loop and "peftatlas.evidence.profiles" not in loop


def test_editing_a_shared_kernel_changes_dependent_keys_only():
    """A changed methods/lora.py (e.g. add_lowrank) gives LoRA and VeRA runs new keys, so stored results are
    not reused; GOFT and full fine-tuning keep theirs."""
    methods = ("full", "lora", "vera", "goft")
    lora_file = package_root() / "methods" / "lora.py"

    def edited(path: Path) -> bytes:
        data = path.read_bytes()
        return data + b"\n# add_lowrank changed\n" if path == lora_file else data

    profile = dataclasses.replace(SMOKE, name="plan-version", methods=methods, matched_lora=False)
    plain = build_plan(profile, code_versions=compute_code_versions(methods))
    changed = build_plan(profile, code_versions=compute_code_versions(methods, read=edited))
    for a, b in zip(plain.arms, changed.arms):
        same = plain.spec(a, SWEEP, 1e-3, 0).key == changed.spec(b, SWEEP, 1e-3, 0).key
        assert same == (a.method in ("full", "goft")), a.method


def test_catalog_and_quick_profiles_follow_the_rubric_needs():
    """catalog: every registered method, matched LoRA, 5 seeds, LR on ≥ 2 seeds with extension, OOD, learning
    curves over several sizes; quick: 5 seeds for its graded arms; both keep a light full-FT footprint."""
    from peftatlas.evidence.profiles import get_profile, profile_methods, register_profile

    catalog = get_profile("catalog")
    assert profile_methods(catalog)[0] == profile_methods(get_profile("full"))[0]  # every registered method
    for p in (catalog, get_profile("quick")):
        assert len(p.seeds) >= 5 and p.sweep_seeds >= 2 and p.lr_extend >= 1 and p.matched_lora
        assert p.task == "mr" and p.ood_size and p.full_ft_artifacts == "probed" and p.probe_matrices
    assert len([n for n in catalog.learning_curve_sizes if n is not None]) >= 3 and catalog.learning_curve_seeds >= 2
    with pytest.raises(ValueError, match="already registered"):
        register_profile(catalog)
    mine = register_profile(dataclasses.replace(catalog, name="test-registered"))
    assert get_profile("test-registered") is mine
    PROFILES.pop("test-registered")


def test_solved_arms_are_cached_beside_the_store(tmp_path, monkeypatch):
    """A resumed profile reads its solved arms from the cache instead of solving the budgets again; a changed
    profile or code version gets its own entry."""
    import peftatlas.evidence.plan as plan_mod

    profile = dataclasses.replace(SMOKE, name="plan-cache", methods=("goft", "lora"))
    first = build_plan(profile, cache=tmp_path)
    assert len(list(tmp_path.glob("arms-*.json"))) == 1

    def no_solving(*args, **kwargs):
        raise AssertionError("budgets solved again")

    monkeypatch.setattr(plan_mod, "_solve_all", no_solving)
    again = build_plan(profile, cache=tmp_path)
    assert again.arms == first.arms
    assert again.ready({})[0].key == first.ready({})[0].key
    with pytest.raises(AssertionError, match="solved again"):
        build_plan(dataclasses.replace(profile, budgets=("0.5%",)), cache=tmp_path)


def test_progress_counts_runs_and_estimates_the_time_left_from_this_sessions_pace():
    """The log prefix of `peftatlas run`: finished runs against the plan's count and an ETA at the current pace."""
    from peftatlas.evidence.executors import Progress

    now = [100.0]
    p = Progress(total=10, already=4, clock=lambda: now[0])
    assert p.line() == "[4/10]"
    now[0] += 120.0
    p.step()
    p.step()
    assert p.line() == "[6/10, ETA 4m]"  # 60 s a run, 4 left
    for _ in range(5):
        p.step()
    assert p.line() == "[11/10+, ETA 0m]"  # extensions ran past the plan's count: the real k, marked


def test_progress_of_a_resumed_plan_counts_the_runs_that_are_really_left():
    """A resume after grid extensions, with learning curves whose whole-set points are copies of main seeds:
    ``total − finished`` is exactly what the drive loop still executes. (The catalog resume of 2026-12-05 showed
    ``[1753/1753+, ETA 0m]`` with about 480 runs left: finished extension sweeps and copies were counted as
    done but were not in the total.)"""
    from peftatlas.evidence.executors import Progress

    profile = dataclasses.replace(SMOKE, name="plan-progress", methods=("head_only",), lr_factors=(1.0, 3.0, 9.0),
                                  seeds=(0, 1, 2, 3, 4), sweep_seeds=2, lr_extend=2, learning_curve_methods=(),
                                  learning_curve_sizes=(16, None), learning_curve_seeds=5)
    plan = build_plan(profile)
    order: list[str] = []
    done: dict = {}
    while ready := plan.ready(done):  # one run at a time, as a drive loop with one worker
        spec = ready[0]
        rec = fake(spec, val_acc=spec.lr)  # the highest rate always wins: the grid is extended upward, twice
        done[spec.key] = dataclasses.replace(rec, metrics={"val_acc": spec.lr, "test_acc": 0.5})
        order.append(spec.key)
    sweeps = [k for k in order if done[k].experiment == SWEEP]
    assert len(sweeps) == 3 * 2 + 2 * 2  # the initial grid, then two extension rates, on 2 seeds
    assert any(done[k].experiment == CURVE and done[k].train_size is None for k in order)  # the copies ran
    fresh = Progress.of(plan, plan.covered({}))
    assert fresh.total == len(order) - 4  # extensions are not known before they happen: `k/N+` then
    for cut in range(len(sweeps), len(order) + 1):
        resumed = Progress.of(plan, plan.covered({k: done[k] for k in order[:cut]}))
        assert resumed.total == len(order) and resumed.total - resumed.finished == len(order) - cut


def test_a_budget_solved_arm_that_misses_its_budget_gets_matched_lora_arms_too():
    """OFT on the ViT lands 17.5 % above its budget: the budget's LoRA arm is not at its size, so the plan
    adds LoRA on its targets around its own count — as for a fixed-size method. Arms within budget, LoRA
    itself and references get none."""
    from peftatlas.evidence.plan import Arm, matched_lora_arms, needs_matched_lora

    missed = Arm("mr", "oft", "0.2%", {"block_size": 2, "targets": ["query", "value"]}, "method", 3000,
                 budget_target=2000, budget_met=False)
    met = dataclasses.replace(missed, budget_met=True)
    assert needs_matched_lora(missed) and not needs_matched_lora(met)
    assert not needs_matched_lora(dataclasses.replace(missed, method="lora"))
    assert not needs_matched_lora(dataclasses.replace(missed, role="reference", budget=None))
    assert needs_matched_lora(dataclasses.replace(met, budget="fixed"))
    arms = matched_lora_arms(SMOKE, [missed], 2)
    assert arms and all(a.hyperparameters["targets"] == ["query", "value"] and "oft" in a.matches for a in arms)
    below = [a for a in arms if a.adapter_params < 3000]
    above = [a for a in arms if a.adapter_params > 3000]
    within = [a for a in arms if abs(a.adapter_params - 3000) <= 300]
    assert within or (below and above)  # a rank within ±10 %, else the nearest rank on each side


def test_matched_lora_on_all_linear_shares_the_default_target_arm():
    """LoRA's default targets are every linear layer: a method on "all-linear" and one on its own defaults
    (IA³-style, targets None) are matched by one LoRA arm, not two arms that train the same model."""
    from peftatlas.evidence.plan import Arm, matched_lora_arms

    oft = Arm("mr", "oft", "0.2%", {"block_size": 2, "targets": "all-linear"}, "method", 5000,
              budget_target=4000, budget_met=False)
    hra = Arm("mr", "hra", "fixed", {}, "method", 5000)  # HRA's default targets are "all-linear"
    arms = matched_lora_arms(SMOKE, [oft, hra], 2)
    assert arms and all("targets" not in a.hyperparameters for a in arms)
    assert all(set(a.matches) == {"oft", "hra"} for a in arms)


def test_matched_lora_targets_the_methods_own_default_modules():
    """(IA)³ with no ``targets`` adapts keys, values and the feed-forward output: its matched LoRA adapts
    those (not LoRA's every linear layer, as before 2026-12-04)."""
    from peftatlas.evidence.budget import target_modules
    from peftatlas.evidence.models import load_classifier
    from peftatlas.evidence.plan import Arm, matched_lora_arms

    lora, ia3 = (__import__("peftatlas").get_method(m) for m in ("lora", "ia3"))
    model, _ = load_classifier(SMOKE.model, 2)
    own = set(target_modules(model, ia3, None))
    arms = matched_lora_arms(SMOKE, [Arm("mr", "ia3", "fixed", {}, "method", 3 * len(own) * 64)], 2)
    assert arms
    for a in arms:
        chosen = set(target_modules(model, lora, a.hyperparameters.get("targets")))
        assert chosen <= own and a.matches["ia3"]["budget_met"]


def test_layer_subset_match_lands_within_tolerance_on_the_most_blocks():
    """When even rank 1 on every block is too big (GOFT: about half of LoRA r = 1), the matched arm is
    LoRA on an evenly spaced subset of the blocks, the most blocks that land within ±10 %, named by a
    regex that selects exactly those modules; a size below one block's rank-1 count has no match."""
    from peftatlas.evidence.budget import count_params, target_modules
    from peftatlas.evidence.models import load_classifier
    from peftatlas.evidence.plan import _layer_index, layer_subset_match

    lora = __import__("peftatlas").get_method("lora")
    model, _ = load_classifier(SMOKE.model, 2)
    modules = target_modules(model, lora, ["query", "value"])
    blocks = sorted({_layer_index(n)[1] for n in modules})
    per_block = count_params(lora, modules, {"r": 1}) // len(blocks)
    for k in range(1, len(blocks)):
        n = k * per_block
        r, regex, count, where = layer_subset_match(model, lora, modules, n)
        chosen = target_modules(model, lora, regex)
        assert set(chosen) < set(modules) and count == count_params(lora, chosen, {"r": r}) == n
        assert r == 1 and where == f"{k} of {len(blocks)} blocks"
    assert layer_subset_match(model, lora, modules, per_block // 3) is None
    assert _layer_index("model.layers.12.self_attn.q_proj") == ("model.layers", 12, "self_attn.q_proj")
    assert _layer_index("classifier") is None


def test_learning_curves_go_to_curved_methods_and_the_matched_lora_arms_de_reads():
    """A matched-LoRA arm runs curves only when a curved method sits within ±10 % of it on its targets (DE
    compares curves at equal size): on the ViT plan, r = 1 on q, v (SURM's size) and r = 1 on every linear
    layer (VeRA's 88,200 all-linear, −6 %) are curved; r = 2 on every linear layer (OFT's, uncurved) is not."""
    from peftatlas.evidence.plan import Arm, gets_learning_curves

    profile = dataclasses.replace(SMOKE, task="mnist_fewshot", learning_curve_methods=("full", "lora", "vera",
                                                                                       "surm_circulant"))

    def arm(method, params, role="method", targets=None, **hp):
        return Arm("mnist_fewshot", method, "x", {**hp, **({"targets": targets} if targets else {})}, role, params)

    surm = arm("surm_circulant", 18432, targets=["q_proj", "v_proj"])
    vera = arm("vera", 88200, targets="all-linear", r=649)
    oft = arm("oft", 103680, targets="all-linear", block_size=6)
    qv1 = arm("lora", 18432, "matched_lora", ["q_proj", "v_proj"], r=1)
    all1 = arm("lora", 82944, "matched_lora", r=1)
    all2 = arm("lora", 165888, "matched_lora", r=2)
    arms = [arm("full", 22_000_000), surm, vera, oft, qv1, all1, all2]
    curved = {id(a) for a in arms if gets_learning_curves(profile, a, arms)}
    assert curved == {id(arms[0]), id(surm), id(vera), id(qv1), id(all1)}
    assert not gets_learning_curves(profile, all1, [a for a in arms if a is not vera])  # only OFT near it
    assert not gets_learning_curves(dataclasses.replace(profile, task="other"), surm, arms)


def test_data_identity_is_the_same_on_every_cpu():
    """The ViT task's rotated OOD set comes from a matrix product whose last bits differ between CPUs (AMD
    without AVX-512, Intel with it): a one-ulp change there must not change a run's key, while any change
    to a set hashed by its pixels (or to the rotated set's labels or length) must. Text tasks keep their
    own fingerprint."""
    from types import SimpleNamespace

    import torch

    from peftatlas.evidence.plan import data_identity
    from peftatlas.evidence.settings.vision import ImageSplit, ImageTask, rotate

    g = torch.Generator().manual_seed(0)

    def split(n):
        return ImageSplit(torch.rand(n, 8, 8, generator=g), torch.arange(n) % 10)

    test = split(20)
    rotated = ImageSplit(rotate(test.images, 30.0), test.labels)
    task = ImageTask("mnist_fewshot", 2, split(20), split(10), test, {"rotated": rotated, "digits": split(5)})
    key = data_identity(task)
    nudged = ImageSplit(torch.nextafter(rotated.images, torch.full_like(rotated.images, 2.0)), rotated.labels)
    assert not torch.equal(nudged.images, rotated.images)
    assert data_identity(ImageTask(**{**vars(task), "ood": {**task.ood, "rotated": nudged}})) == key
    bumped = test.images.clone()
    bumped[0, 0, 0] += 1e-3
    assert data_identity(ImageTask(**{**vars(task), "test": ImageSplit(bumped, test.labels)})) != key
    short = ImageSplit(rotated.images[:10], rotated.labels[:10])
    assert data_identity(ImageTask(**{**vars(task), "ood": {**task.ood, "rotated": short}})) != key
    assert data_identity(task.subset(1)) != key
    assert data_identity(SimpleNamespace(fingerprint=lambda: "abc")) == "abc"


def test_a_method_within_budget_on_other_modules_than_loras_budget_arm_gets_matched_lora_arms():
    """VeRA on every linear layer at 0.1 % meets its budget, but LoRA's 0.1 % arm adapts other modules, so
    BL would have no comparator: the plan adds LoRA on VeRA's modules at VeRA's count. When LoRA's budget
    arm adapts the same modules within ±10 %, that arm is the comparator and nothing is added."""
    from peftatlas.evidence.plan import Arm, matched_lora_arms, may_need_matched_lora

    vera = Arm("mr", "vera", "0.1%", {"r": 8, "targets": "all-linear"}, "method", 3000, budget_target=3000,
               budget_met=True)
    lora_qv = Arm("mr", "lora", "0.1%", {"r": 1, "targets": ["query", "value"]}, "method", 3000,
                  budget_target=3000, budget_met=True)
    assert may_need_matched_lora(vera) and not may_need_matched_lora(lora_qv)
    assert not may_need_matched_lora(dataclasses.replace(vera, role="reference", budget=None))
    arms = matched_lora_arms(SMOKE, [vera], 2, [lora_qv])
    assert arms and all("vera" in a.matches for a in arms)  # every linear layer, or a subset of its blocks
    assert any(abs(a.adapter_params - 3000) <= 300 for a in arms) or len(arms) == 2
    same = dataclasses.replace(lora_qv, hyperparameters={"r": 1, "targets": "all-linear"})
    assert matched_lora_arms(SMOKE, [vera], 2, [same]) == []  # LoRA's budget arm already matches
    far = dataclasses.replace(same, adapter_params=4000)  # same modules, 1.33×: not a comparator
    assert matched_lora_arms(SMOKE, [vera], 2, [far]) != []
    other_budget = dataclasses.replace(same, budget="0.2%")
    assert matched_lora_arms(SMOKE, [vera], 2, [other_budget]) != []
