"""GOFT / qGOFT: tree layout, orthogonality for any d, input-side convention, fast path vs dense R,
the qGOFT penalty, and the paper's parameter count on a config-built DeBERTaV3-base."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import peftatlas as pa
from peftatlas.ops import (
    givens_rotation_apply,
    givens_tree_apply,
    givens_tree_dense,
    givens_tree_level_sizes,
    givens_tree_pairs,
)
from peftatlas.ops.givens import rotation_blocks

F64 = torch.float64


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_tree_layout_is_the_papers_binary_tree_for_d8():
    assert givens_tree_pairs(8) == [(0, 1), (2, 3), (4, 5), (6, 7), (0, 2), (4, 6), (0, 4)]
    assert givens_tree_level_sizes(8) == [4, 2, 1]
    # d = 6: level 2 drops (4, 6) because 6 ≥ d; level 3 keeps (0, 4)
    assert givens_tree_pairs(6) == [(0, 1), (2, 3), (4, 5), (0, 2), (0, 4)]


@pytest.mark.parametrize("d", [*range(1, 40), 768, 3072])
def test_tree_has_d_minus_1_blocks_each_index_partnered_once(d):
    pairs = givens_tree_pairs(d)
    assert len(pairs) == d - 1 == sum(givens_tree_level_sizes(d))
    assert sorted(j for _, j in pairs) == list(range(1, d))
    assert len(givens_tree_level_sizes(d)) == (math.ceil(math.log2(d)) if d > 1 else 0)


@pytest.mark.parametrize("d", [2, 3, 7, 12, 16, 33])
def test_fast_tree_matches_dense_R_and_R_is_a_rotation(d):
    theta = torch.rand(d - 1, dtype=F64, generator=_g(d)) * 6 - 3
    blocks = rotation_blocks(theta)
    R = givens_tree_dense(blocks, d)
    torch.testing.assert_close(R @ R.T, torch.eye(d, dtype=F64), atol=1e-12, rtol=0)
    assert abs(torch.linalg.det(R).item() - 1.0) < 1e-10
    x = torch.randn(5, 2, d, dtype=F64, generator=_g(1))
    torch.testing.assert_close(givens_tree_apply(x, blocks), x @ R.T, atol=1e-12, rtol=0)
    torch.testing.assert_close(givens_tree_apply(x, blocks, transpose=True), x @ R, atol=1e-12, rtol=0)
    free = torch.randn(d - 1, 2, 2, dtype=F64, generator=_g(2))  # qGOFT blocks: same wiring, no orthogonality
    Q = givens_tree_dense(free, d)
    torch.testing.assert_close(givens_tree_apply(x, free, transpose=True), x @ Q, atol=1e-12, rtol=0)


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("d", [1, 2, 7, 12])
def test_hand_written_backward_passes_gradcheck(d, transpose):
    x = torch.randn(3, d, dtype=F64, generator=_g(10), requires_grad=True)
    blocks = torch.randn(d - 1, 2, 2, dtype=F64, generator=_g(11), requires_grad=True)
    theta = torch.randn(d - 1, dtype=F64, generator=_g(12), requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: givens_tree_apply(a, b, transpose), (x, blocks))
    assert torch.autograd.gradcheck(lambda a, t: givens_rotation_apply(a, t, transpose), (x, theta))
    torch.testing.assert_close(givens_rotation_apply(x, theta, transpose),
                               givens_tree_apply(x, rotation_blocks(theta), transpose), atol=1e-12, rtol=0)


def test_in_place_edit_of_the_output_is_detected():
    x = torch.randn(4, 8, requires_grad=True)
    theta = torch.randn(7, requires_grad=True)
    y = givens_rotation_apply(x, theta, transpose=True)
    with pytest.raises(RuntimeError, match="inplace"):  # refused at the edit or at backward, never silent
        y.mul_(2.0)
        y.sum().backward()
    z = givens_tree_apply(x, torch.eye(2).repeat(7, 1, 1), transpose=True)
    with pytest.raises(RuntimeError, match="inplace"):
        z.mul_(2.0)
        z.sum().backward()


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("kind", ["tree", "rotation"])
def test_a_finished_step_frees_its_graph_node(kind, transpose):
    """A custom Function whose ctx keeps a view of its own output forms a reference cycle through the
    output's grad_fn that neither refcounting nor gc frees: qGOFT leaked each adapted layer's
    activations every training step (≈ 13 MB a call at 2,048 × 384, the catalog run's worker grew to
    15 GB and was killed). After backward and ``del``, the node must be gone."""
    import gc
    import weakref

    x = torch.randn(6, 9, requires_grad=True)
    if kind == "tree":
        y = givens_tree_apply(x, torch.randn(8, 2, 2, requires_grad=True), transpose)
    else:
        y = givens_rotation_apply(x, torch.randn(8, requires_grad=True), transpose)
    node = y.grad_fn
    while "Givens" not in type(node).__name__:  # under the reshape view
        node = node.next_functions[0][0]
    alive = weakref.ref(node)
    del node
    y.sum().backward()
    del y
    gc.collect()
    assert alive() is None


def test_tree_rejects_wrong_block_count():
    with pytest.raises(ValueError, match="R\\^8 has 7 blocks"):
        givens_tree_apply(torch.randn(2, 8), torch.randn(6, 2, 2))


def _layer(method: str, d_in: int = 12, d_out: int = 7, **hp):
    torch.manual_seed(0)
    model = pa.attach(nn.Sequential(nn.Linear(d_in, d_out)), method, targets=["0"], **hp)
    return model, model.adapted_layers()["0"]


@pytest.mark.parametrize("method", ["goft", "qgoft"])
@pytest.mark.exactness
def test_input_side_convention_y_equals_W0_Rt_x(method):
    model, layer = _layer(method, d_in=12, d_out=7)
    adapter = layer.adapters["default"]
    adapter.perturb_(_g(3), 0.5)
    R = adapter.dense_rotation()
    W0, b = layer.base.weight.detach().clone(), layer.base.bias.detach().clone()
    x = torch.randn(4, 12, generator=_g(4))
    with torch.no_grad():
        torch.testing.assert_close(model(x), x @ (W0 @ R.T).T + b, atol=1e-5, rtol=1e-5)
        model.merge()
        torch.testing.assert_close(layer.base.weight, W0 @ R.T, atol=1e-5, rtol=1e-5)
    model.unmerge()
    assert torch.equal(layer.base.weight, W0)


def test_goft_preserves_neuron_norms_and_angles_and_bounds_angles():
    model, layer = _layer("goft", d_in=24, d_out=10)
    adapter = layer.adapters["default"]
    with torch.no_grad():
        adapter.phi.copy_(torch.randn(23, generator=_g(5)) * 3)
    assert adapter.angles().abs().max() < math.pi
    W0 = layer.base.weight.detach().clone()
    model.merge()
    W = layer.base.weight.detach()
    torch.testing.assert_close(W @ W.T, W0 @ W0.T, atol=1e-5, rtol=1e-5)  # neuron Gram matrix unchanged
    assert (W - W0).abs().max() > 0.1


def test_goft_star_scaling_counts_and_applies():
    model, layer = _layer("goft", d_in=12, d_out=5, scaling=True)
    adapter = layer.adapters["default"]
    assert pa.get_method("goft").param_count(layer.base, adapter.cfg) == 2 * 12 - 1
    adapter.perturb_(_g(6), 0.3)
    x = torch.randn(3, 12, generator=_g(7))
    with torch.no_grad():
        torch.testing.assert_close(model(x), adapter.reference_forward(x, layer.base), atol=1e-5, rtol=1e-5)


def test_forward_never_builds_R(monkeypatch):
    import peftatlas.methods.goft as goft_module

    model, layer = _layer("goft", d_in=33, d_out=8)
    layer.adapters["default"].perturb_(_g(8), 0.5)

    def forbidden(*a, **k):
        raise AssertionError("the dense rotation was built in the forward pass")

    monkeypatch.setattr(goft_module, "givens_tree_dense", forbidden)
    x = torch.randn(6, 33, requires_grad=True)
    model(x).sum().backward()
    assert layer.adapters["default"].phi.grad.abs().sum() > 0


def test_qgoft_penalty_value_gradient_and_extra_loss():
    model, layer = _layer("qgoft", d_in=5, d_out=3, orth_lambda=0.05)
    adapter = layer.adapters["default"]
    assert adapter.orthogonality_penalty().item() == 0.0  # identity blocks
    with torch.no_grad():
        adapter.quasi[0] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # α = (1, 3), β = (2, 4): ⟨α, β⟩ = 14
        adapter.quasi[2] = torch.tensor([[0.6, -0.8], [0.8, 0.6]])  # a rotation: orthogonal columns
    assert adapter.orthogonality_penalty().item() == pytest.approx(196.0)
    assert model.extra_loss().item() == pytest.approx(0.05 * 196.0)
    model.extra_loss().backward()
    grad = adapter.quasi.grad
    assert grad[0].abs().sum() > 0 and grad[2].abs().sum() == 0
    assert pa.get_method("goft").Config and layer.adapters["default"].extra_loss() is not None


@pytest.mark.exactness
def test_qgoft_non_orthogonal_merge_and_exact_unmerge():
    model, layer = _layer("qgoft", d_in=9, d_out=4)
    with torch.no_grad():
        layer.adapters["default"].quasi.mul_(1.5)
    W0 = layer.base.weight.detach().clone()
    x = torch.randn(3, 9, generator=_g(9))
    with torch.no_grad():
        y = model(x)
        model.merge()
        torch.testing.assert_close(model(x), y, atol=1e-5, rtol=1e-5)
    model.unmerge()
    assert torch.equal(layer.base.weight, W0)


def test_qgoft_config_error():
    with pytest.raises(pa.MethodError, match="orth_lambda"):
        _layer("qgoft", orth_lambda=-1.0)


def _deberta_v3_base():
    from transformers import DebertaV2Config, DebertaV2Model

    cfg = DebertaV2Config(vocab_size=128100, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                          intermediate_size=3072, relative_attention=True, position_buckets=256,
                          norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type=["p2c", "c2p"],
                          max_relative_positions=-1, position_biased_input=False)
    with torch.device("meta"):
        return DebertaV2Model(cfg)


def test_goft_and_qgoft_reproduce_published_deberta_v3_base_counts():
    """GOFT Table 1: 0.08M (12·(5·767 + 3071) = 82,872) and qGOFT 0.33M (×4), all encoder linear layers."""
    model = _deberta_v3_base()
    assert 180e6 < sum(p.numel() for p in model.parameters()) < 190e6  # "184M" in the paper
    m = pa.attach(model, "goft")
    assert len(m.adapted_layers()) == 72
    assert m.count_parameters().adapter == 82_872
    m.add_adapter("q", "qgoft")
    assert m.count_parameters("q").adapter == 331_488
