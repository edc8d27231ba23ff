"""Direction vs strength (DoRA, DeLoRA): the decompositions hold as stated."""

from __future__ import annotations

import pytest
import torch

import peftatlas as pa
from peftatlas.core.method import MethodError
from peftatlas.testing import tiny_model


def _fc2(method: str, **hp):
    tm = tiny_model("mlp")
    model = pa.attach(tm.model, method, targets=["fc2"], **hp)
    return tm, model, model.adapted_layers()["fc2"].adapters["default"]


def test_dora_gram_row_norms_equal_dense_norms():
    _, _, a = _fc2("dora", r=3, alpha=6)
    a.perturb_(torch.Generator().manual_seed(0), 0.3)
    W = a._base.weight.detach()
    dense = (W + a.scale * a.dora_B @ a.dora_A).norm(dim=1)
    torch.testing.assert_close(a.row_norms(), dense, atol=1e-5, rtol=1e-5)


def test_dora_magnitude_starts_at_row_norms_and_is_the_merged_row_norm():
    tm, model, a = _fc2("dora", r=3)
    W = tm.model.fc2.weight.detach().clone()
    torch.testing.assert_close(a.dora_m.detach(), W.norm(dim=1), atol=1e-6, rtol=1e-6)
    a.perturb_(torch.Generator().manual_seed(1), 0.3)
    model.merge()
    # DoRA's decomposition: after merging, each neuron's norm is exactly its magnitude |m|
    merged_norms = tm.model.fc2.weight.detach().norm(dim=1)
    torch.testing.assert_close(merged_norms, a.dora_m.detach().abs(), atol=1e-5, rtol=1e-5)


def test_dora_norm_is_a_constant_in_backprop_unless_asked():
    for detach in (True, False):
        tm, model, a = _fc2("dora", r=3, detach_norm=detach)
        a.perturb_(torch.Generator().manual_seed(2), 0.3)
        out = model(**tm.make_inputs(4, 0))
        out.pow(2).sum().backward()
        g_detached = a.dora_A.grad.clone()
        assert torch.isfinite(g_detached).all() and g_detached.abs().sum() > 0
        if detach:
            first = g_detached
        else:
            assert not torch.allclose(first, g_detached), "detach_norm should change A's gradient"


def test_dora_cannot_be_stacked():
    _, model, _ = _fc2("dora", r=2)
    model.add_adapter("b", "lora", targets=["fc2"], r=2)
    with pytest.raises(MethodError, match="not stackable.*stacked on fc2"):  # refused when activated
        model.set_active(["b", "default"])


def test_delora_update_is_bounded_by_lambda_and_the_weight_norm():
    _, _, a = _fc2("delora", r=4, lambda_init=3.0)
    a.perturb_(torch.Generator().manual_seed(3), 2.0)  # large moves: the bound must still hold
    trained = a._dense(a.delora_A, a.delora_B, a.delora_lambda).detach()
    bound = a.delora_lambda.abs().item() * a.w_col_norm.max().item()
    assert trained.norm().item() <= bound * (1 + 1e-5)
    # and the learned part's strength is carried by λ alone: scaling A and B changes nothing
    with torch.no_grad():
        before = a.delta_weight(a.w_col_norm.new_zeros(1)).clone()
        a.delora_A.mul_(7.0)
        a.delora_B.mul_(0.2)
        torch.testing.assert_close(a.delta_weight(a.w_col_norm.new_zeros(1)), before, atol=1e-5, rtol=1e-5)


@pytest.mark.exactness
def test_delora_is_an_exact_noop_at_init_with_random_factors():
    tm = tiny_model("mlp")
    x = tm.make_inputs(3, 0)
    with torch.no_grad():
        y0 = tm.model(**x)
    model = pa.attach(tm.model, "delora", r=4)
    a = model.adapted_layers()["fc1"].adapters["default"]
    assert a.delora_B.abs().sum() > 0, "DeLoRA starts from random (not zero) factors"
    with torch.no_grad():
        assert torch.equal(model(**x), y0)
