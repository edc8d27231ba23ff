"""Budget matching: parsing, solving the size knob, target fallbacks, fixed sizes, and real counts."""

from __future__ import annotations

import pytest

import peftatlas as pa
from peftatlas.evidence.budget import BudgetError, count_params, parse_budget, solve_budget, target_modules
from peftatlas.testing import tiny_model

QV = ("query", "value")


@pytest.fixture
def bert():
    return tiny_model("bert").model  # hidden 32, 2 layers, intermediate 64


def test_parse_budget():
    assert parse_budget("0.1%", 22_565_376) == 22_565
    assert parse_budget("1%", 1000) == 10
    assert parse_budget("2500", 10**6) == 2500
    assert parse_budget(2500, 10**6) == 2500
    assert parse_budget(0.01, 10**6) == 10_000  # a fraction
    for bad in ("lots", "0.00001%"):
        with pytest.raises(BudgetError):
            parse_budget(bad, 1000)


def test_lora_lands_and_matches_the_real_count(bert):
    # q, v are 32×32: LoRA has 64·r per module, 4 modules → 256·r; 2,000 → r = 8 (2,048, +2.4%)
    sol = solve_budget(bert, "lora", "2000", 10**6, [QV])
    assert (sol.knob, sol.value, sol.achieved, sol.met) == ("r", 8, 2048, True)
    assert sol.rel_error == pytest.approx(0.024)
    model = pa.attach(bert, "lora", targets=list(QV), **sol.hyperparameters)
    assert model.count_parameters().adapter == sol.achieved


def test_first_target_option_that_lands_wins(bert):
    # 1,150 on q,v (256·r): r=4 → 1,024 (−11%), r=5 → 1,280 (+11%) both miss;
    # value only (2 modules, 128·r): r=9 → 1,152 (+0.2%) lands.
    sol = solve_budget(bert, "lora", "1150", 10**6, [QV, ("value",)])
    assert sol.targets == ("value",) and sol.value == 9 and sol.met
    # with q,v alone the closest is reported as a miss, never silently accepted
    miss = solve_budget(bert, "lora", "1150", 10**6, [QV])
    assert miss.met is False and miss.value == 4 and "budget missed" in miss.note


def test_unreachable_budget_is_flagged(bert):
    sol = solve_budget(bert, "lora", "10000000", 10**6, [QV], max_value=64)
    # LoRA's rank cannot exceed the layers' width (32): the closest valid rank is reported, never 64
    assert sol.met is False and sol.value == 32 and "budget missed" in sol.note


def test_fixed_size_and_reference_methods(bert):
    head = solve_budget(bert, "head_only", None, 10**6)
    assert head.achieved == 0 and head.met is None and head.budget is None
    full = solve_budget(bert, "full", None, 10**6)
    assert full.achieved == sum(p.numel() for n, p in bert.named_parameters() if not n.startswith("classifier"))
    bitfit = solve_budget(bert, "bitfit", "1%", 10**6)
    assert bitfit.knob is None and "fixed size" in bitfit.note and bitfit.met is not None


def test_knob_given_twice_is_an_error(bert):
    with pytest.raises(BudgetError, match="do not also fix"):
        solve_budget(bert, "lora", "1%", 10**6, [QV], hyperparameters={"r": 4})


def test_no_matching_targets(bert):
    with pytest.raises(BudgetError, match="matches a module"):
        solve_budget(bert, "lora", "1%", 10**6, [("no_such_module",)])


KNOBBED = [m for m, c in pa.registered_methods().items() if c.size_knob and "bert" not in c.test_skip]


@pytest.mark.parametrize("method", KNOBBED)
def test_every_knobbed_method_solves_to_its_real_count(method, bert):
    """For every method with a size knob: the solved closed-form count is what attach() builds."""
    cls = pa.get_method(method)
    modules = target_modules(bert, cls, None)
    if not modules:
        pytest.skip(f"{method} selects no module of a tiny BERT by default")
    fixed = {k: v for k, v in cls.test_config.items() if k != cls.size_knob}
    small = None
    for v in range(1, 65):  # the smallest valid knob value (some need ≥ 2, even, divisors, ...)
        try:
            small = count_params(cls, modules, {**fixed, cls.size_knob: v})
            break
        except ValueError:
            continue
    assert small is not None, f"{method}: no valid {cls.size_knob} in 1..64 on a tiny BERT"
    sol = solve_budget(bert, method, str(max(4 * small, 1)), 10**6, [None], hyperparameters=fixed, max_value=256)
    model = pa.attach(bert, method, **sol.hyperparameters)
    assert model.count_parameters().adapter == sol.achieved


@pytest.mark.parametrize("method", ["c3a", "randlora"])
def test_knob_whose_count_falls_as_it_grows(bert, method):
    """C3A's block size and RandLoRA's basis rank buy fewer parameters as they grow; the solver must still land."""
    cls = pa.get_method(method)
    modules = target_modules(bert, cls, None)
    fixed = {k: v for k, v in cls.test_config.items() if k != cls.size_knob}
    counts = {}
    for v in range(1, 65):
        try:
            counts[v] = count_params(cls, modules, {**fixed, cls.size_knob: v})
        except ValueError:
            continue
    values = sorted(counts)
    assert counts[values[-1]] < counts[values[0]], f"{method}: expected the count to fall as {cls.size_knob} grows"
    wanted = values[len(values) // 2]  # a value in the middle: the old upward scan stopped at the first one
    sol = solve_budget(bert, method, str(counts[wanted]), 10**6, [None], hyperparameters=fixed, max_value=64)
    assert sol.met, sol.note
    assert abs(sol.achieved - counts[wanted]) <= 0.10 * counts[wanted]
    assert sol.value != values[0]
