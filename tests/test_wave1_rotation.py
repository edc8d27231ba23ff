"""Rotation family (OFT, OFTv2, BOFT, HRA, ETHER, ETHER+, RoAd): orthogonality after training,
structure of the fast paths against explicit dense constructions, and hyperparameter errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import peftatlas as pa
from peftatlas.core.method import MethodError
from peftatlas.methods._rotation import (
    butterfly_apply,
    butterfly_dense,
    cayley,
    householder_apply,
    householder_dense,
    householder_wy,
    orthogonality_report,
    skew,
)
from peftatlas.testing import tiny_model


def _train(model, tm, steps: int = 8, lr: float = 0.2, seed: int = 0) -> None:
    """A few aggressive Adam steps on a random objective (moves every rotation far from I)."""
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    model.train()
    for step in range(steps):
        out = tm.output(model(**tm.make_inputs(4, step)))
        target = torch.randn(out.shape, generator=torch.Generator().manual_seed(100 + step))
        loss = (out - target).pow(2).mean()
        extra = model.extra_loss()
        if extra is not None:
            loss = loss + extra
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


EXACT = [
    ("oft", {"block_size": 8}),
    ("boft", {"block_size": 4, "n_factors": 3}),
    ("hra", {"r": 6}),
    ("ether", {"n_blocks": 2}),
    ("psoft", {"r": 8}),  # the Cayley factor (magnitude vectors excluded)
    ("ssvd", {"r": 8, "rotation": "cayley"}),
    ("antipasto", {"r": 8, "rotate_u": True}),
]


@pytest.mark.parametrize(("method", "hp"), EXACT)
def test_exact_variants_stay_orthogonal_after_training(method, hp):
    tm = tiny_model("bert")
    model = pa.attach(tm.model, method, **hp)
    before = {k: v.detach().clone() for k, v in model.adapter_parameters().items()}
    _train(model, tm)
    moved = max((v.detach() - before[k]).abs().max().item() for k, v in model.adapter_parameters().items())
    assert moved > 0.1, "training did not move the rotation parameters"
    report = orthogonality_report(model, "default")
    assert report, "no layer reported its orthogonality"
    assert max(report.values()) < 1e-5, report


@pytest.mark.parametrize(("method", "hp"), [
    ("oftv2", {"block_size": 8}),
    ("oft", {"block_size": 8, "cayley": "neumann", "neumann_terms": 3}),
    ("ssvd", {"r": 8, "rotation": "first_order"}),
    ("psoft", {"r": 8, "cayley": "neumann"}),
])
def test_approximate_variants_report_their_true_error(method, hp):
    tm = tiny_model("bert")
    model = pa.attach(tm.model, method, **hp)
    assert max(orthogonality_report(model, "default").values()) < 1e-6  # identity at init
    _train(model, tm)
    report = orthogonality_report(model, "default")
    assert max(report.values()) > 1e-4, f"{method}: an approximate rotation after training should be visibly off"
    # the reported number is the real ‖RᵀR − I‖ of the matrices the forward uses
    layer = next(iter(model.adapted_layers().values()))
    adapter = layer.adapters["default"]
    R = adapter.rotation_blocks() if hasattr(adapter, "rotation_blocks") else adapter.rotation()
    R = R.detach().double().reshape(-1, R.shape[-1], R.shape[-1])
    eye = torch.eye(R.shape[-1], dtype=R.dtype)
    true = torch.linalg.matrix_norm(R.transpose(-1, -2) @ R - eye).max().item()
    assert adapter.orthogonality_error() == pytest.approx(true, rel=1e-9, abs=1e-12)


def test_neumann_error_grows_with_generator_norm_and_exact_does_not():
    g = torch.Generator().manual_seed(0)
    P = torch.randn(4, 28, generator=g)
    errs = []
    for scale in (0.01, 0.05, 0.2):
        Q = skew(P * scale, 8)
        R = cayley(Q, "neumann", 5)
        E = cayley(Q, "exact")
        errs.append(torch.linalg.matrix_norm(R.mT @ R - torch.eye(8)).max().item())
        assert torch.linalg.matrix_norm(E.mT @ E - torch.eye(8)).max().item() < 1e-5
    assert errs[0] < errs[1] < errs[2]
    assert errs[0] < 1e-6 and errs[2] > 1e-3


def test_butterfly_factor_equals_permuted_block_diagonal_and_mixes_blocks():
    g = torch.Generator().manual_seed(1)
    d, b = 16, 2
    for stride in (1, 2, 4):
        R = cayley(skew(torch.randn(d // b, 1, generator=g), b))
        x = torch.randn(3, d, generator=g)
        dense = butterfly_dense(R, stride)
        torch.testing.assert_close(butterfly_apply(x, R, stride), x @ dense.T, atol=1e-6, rtol=0)
        torch.testing.assert_close(butterfly_apply(x, R, stride, transpose=True), x @ dense, atol=1e-6, rtol=0)
    # two factors couple coordinates that a single block diagonal keeps apart
    tm = tiny_model("mlp")
    model = pa.attach(tm.model, "boft", block_size=2, n_factors=3, targets=["fc2"])
    adapter = model.adapted_layers()["fc2"].adapters["default"]
    with torch.no_grad():
        adapter.boft_q.normal_(0, 0.5, generator=g)
    W_eff = adapter.merged_params({"weight": torch.eye(24)})["weight"]  # = R
    reach = (W_eff.abs() > 1e-8).sum(dim=1)
    assert int(reach.min()) == 2**3, "3 butterfly factors of 2×2 blocks should couple 8 coordinates"


def test_boft_needs_divisible_span():
    tm = tiny_model("mlp")
    with pytest.raises(MethodError, match="divisible by block_size"):
        pa.attach(tm.model, "boft", block_size=4, n_factors=3, targets=["fc1"])  # d_in = 12, span 16


def test_householder_wy_matches_explicit_product_and_rank():
    g = torch.Generator().manual_seed(2)
    U = torch.randn(5, 20, generator=g)  # odd r is fine for the math
    V, T = householder_wy(U)
    H = householder_dense(U)
    x = torch.randn(7, 20, generator=g)
    torch.testing.assert_close(householder_apply(x, V, T), x @ H.T, atol=1e-5, rtol=0)
    torch.testing.assert_close(householder_apply(x, V, T, transpose=True), x @ H, atol=1e-5, rtol=0)
    assert torch.linalg.matrix_rank(H - torch.eye(20)) <= 5
    torch.testing.assert_close(H.T @ H, torch.eye(20), atol=1e-5, rtol=0)


def test_hra_update_has_rank_at_most_r_and_paired_init_is_identity():
    tm = tiny_model("mlp")
    model = pa.attach(tm.model, "hra", r=4, targets=["fc2"])
    adapter = model.adapted_layers()["fc2"].adapters["default"]
    H0 = adapter.rotation_matrix()
    assert (H0 - torch.eye(24)).abs().max() < 1e-6
    adapter.perturb_(torch.Generator().manual_seed(3), 0.5)
    W = tm.model.fc2.weight.detach()
    delta = adapter.merged_params({"weight": W})["weight"] - W
    assert torch.linalg.matrix_rank(delta, atol=1e-5) <= 4
    assert adapter.extra_loss() is None  # lam = 0 by default


def test_hra_regulariser_is_zero_for_orthonormal_vectors():
    tm = tiny_model("mlp")
    model = pa.attach(tm.model, "hra", r=2, lam=0.5, targets=["fc2"])
    adapter = model.adapted_layers()["fc2"].adapters["default"]
    assert adapter.extra_loss().item() == pytest.approx(0.5 * 2.0, rel=1e-5)  # paired init: VVᵀ = all-ones (2×2)
    with torch.no_grad():
        adapter.hra_u.copy_(torch.eye(24)[:2])
    assert adapter.extra_loss().item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("r", [0, 3])
def test_hra_rejects_odd_or_zero_r(r):
    with pytest.raises(MethodError, match="even"):
        pa.attach(tiny_model("mlp").model, "hra", r=r)


def test_oft_block_size_must_divide_input():
    with pytest.raises(MethodError, match="does not divide"):
        pa.attach(tiny_model("mlp").model, "oft", block_size=5)


def test_ether_is_a_reflection_and_ether_plus_starts_at_identity():
    tm = tiny_model("mlp")
    model = pa.attach(tm.model, "ether", n_blocks=3, targets=["fc2"])
    H = model.adapted_layers()["fc2"].adapters["default"].transform_matrix()
    torch.testing.assert_close(H @ H, torch.eye(24), atol=1e-6, rtol=0)
    for blk in range(3):  # ‖H_n − I‖_F = 2 for every block, whatever u is
        sl = slice(8 * blk, 8 * blk + 8)
        assert torch.linalg.matrix_norm(H[sl, sl] - torch.eye(8)).item() == pytest.approx(2.0, rel=1e-5)
    tm2 = tiny_model("mlp")
    plus = pa.attach(tm2.model, "ether_plus", n_blocks=3, two_sided=True, targets=["fc2"])
    adapter = plus.adapted_layers()["fc2"].adapters["default"]
    assert torch.equal(adapter.transform_matrix(), torch.eye(24))


@pytest.mark.parametrize("variant", ["road_1", "road_2", "road_4"])
def test_road_variants_dense_merge_and_counts(variant):
    tm = tiny_model("mlp")
    model = pa.attach(tm.model, "road", variant=variant, group_size=4)
    g = torch.Generator().manual_seed(4)
    for layer in model.adapted_layers().values():
        adapter = layer.adapters["default"]
        adapter.perturb_(g, 0.3)
        expected = pa.get_method("road").param_count(layer.base, adapter.cfg)
        assert sum(p.numel() for p in adapter.parameters()) == expected
        x = torch.randn(5, layer.base.in_features, generator=g)
        with torch.no_grad():
            torch.testing.assert_close(adapter(x, layer.base), adapter.reference_forward(x, layer.base),
                                       atol=1e-5, rtol=1e-4)
    x = tm.make_inputs(3, 0)
    with torch.no_grad():
        y = model(**x)
        model.merge()
        torch.testing.assert_close(model(**x), y, atol=1e-5, rtol=1e-4)


def test_road_rotation_is_orthogonal_when_scales_are_one():
    tm = tiny_model("mlp")
    model = pa.attach(tm.model, "road", variant="road_1", group_size=8, targets=["fc2"])
    adapter = model.adapted_layers()["fc2"].adapters["default"]
    with torch.no_grad():
        adapter.road_theta.uniform_(-3, 3, generator=torch.Generator().manual_seed(5))
    assert adapter.orthogonality_error() < 1e-5
    with torch.no_grad():
        adapter.road_alpha.fill_(1.5)
    assert adapter.orthogonality_error() > 1.0


def test_road_group_size_must_divide_output():
    with pytest.raises(MethodError, match="group_size"):
        pa.attach(tiny_model("mlp").model, "road", group_size=10)


def test_stacked_output_side_rotations_compose_with_a_bias_changing_adapter():
    """ETHER+ (two-sided) and BOFT keep the bias out of their output transform, even above RoAd (which rotates it)."""
    for method, hp in (("ether_plus", {"two_sided": True, "n_blocks": 2}), ("boft", {"block_size": 2})):
        tm = tiny_model("mlp")
        model = pa.attach(tm.model, "road", name="a", group_size=4, targets=["fc2"])
        model.add_adapter("b", method, targets=["fc2"], **hp)
        g = torch.Generator().manual_seed(6)
        layer = model.adapted_layers()["fc2"]
        for a in layer.adapters.values():
            a.perturb_(g, 0.2)
        model.set_active(["a", "b"])
        x = tm.make_inputs(4, 0)
        with torch.no_grad():
            y = model(**x)
            model.merge()
            torch.testing.assert_close(model(**x), y, atol=1e-5, rtol=1e-4)


def test_rotations_never_receive_gradients_into_the_base():
    tm = tiny_model("mlp")
    model = pa.attach(tm.model, "oft", block_size=4)
    assert all(not p.requires_grad for n, p in tm.model.named_parameters() if ".adapters." not in n
               and not n.startswith("classifier"))
    assert isinstance(model.adapted_layers()["fc1"].base, nn.Linear)
