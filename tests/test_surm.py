"""SURM: structured kernels against explicit dense matrices, every variant on rectangular layers,
bf16, the adapter form, published counts, and the errors a user can hit."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import peftatlas as pa
from peftatlas.methods.surm import STRUCTURES, kronecker_factor, kronecker_rank_bound
from peftatlas.ops import (
    circulant_dense,
    circulant_matvec,
    good_fft_size,
    kron_dense,
    kron_matvec,
    ldr_dense,
    ldr_matvec,
    nearest_circulant,
    nearest_kronecker,
    nearest_toeplitz,
    skew_circulant_dense,
    skew_circulant_matvec,
    toeplitz_dense,
    toeplitz_matvec,
)

F64 = torch.float64
LORA_FORMS = ["surm_circulant", "surm_toeplitz", "surm_kronecker", "surm_ldr"]
SHAPES = [(16, 16), (12, 24), (24, 12), (5, 7), (7, 5)]  # (d_in, d_out), squares and both rectangles


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- kernels ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 7, 16, 33])
def test_circulant_and_skew_circulant_products_match_dense(n):
    c, x = torch.randn(n, dtype=F64, generator=_g(1)), torch.randn(3, 4, n, dtype=F64, generator=_g(2))
    torch.testing.assert_close(circulant_matvec(c, x), x @ circulant_dense(c).T, atol=1e-12, rtol=0)
    torch.testing.assert_close(skew_circulant_matvec(c, x), x @ skew_circulant_dense(c).T, atol=1e-12, rtol=0)
    assert torch.equal(circulant_dense(c)[:, 0], c), "c is the first column"
    assert torch.equal(skew_circulant_dense(c)[:, 0], c)


@pytest.mark.parametrize("n", [2, 5, 8])
def test_skew_circulant_is_the_minus_one_circulant_and_the_root_matters(n):
    """S(h) = Σ h_k Z₋₁^k; the FFT identity needs η = exp(iπ/n) — the root of x^{n+1}+1 is wrong."""
    h, x = torch.randn(n, dtype=F64, generator=_g(3)), torch.randn(n, dtype=F64, generator=_g(4))
    Zm = torch.roll(torch.eye(n, dtype=F64), 1, 0)
    Zm[0, -1] = -1.0
    S = sum(h[k] * torch.linalg.matrix_power(Zm, k) for k in range(n))
    torch.testing.assert_close(skew_circulant_dense(h), S, atol=1e-12, rtol=0)
    k = torch.arange(n, dtype=F64)
    wrong = torch.polar(torch.ones(n, dtype=F64), math.pi * k / (n + 1))
    y_wrong = (torch.fft.ifft(torch.fft.fft(h * wrong) * torch.fft.fft(x * wrong)) * wrong.conj()).real
    assert (y_wrong - S @ x).abs().max() > 1e-3
    torch.testing.assert_close(skew_circulant_matvec(h, x), S @ x, atol=1e-12, rtol=0)


@pytest.mark.parametrize(("d_in", "d_out"), SHAPES)
def test_toeplitz_and_cropped_products_match_dense(d_in, d_out):
    x = torch.randn(6, d_in, dtype=F64, generator=_g(5))
    t = torch.randn(d_in + d_out - 1, dtype=F64, generator=_g(6))
    T = toeplitz_dense(t, d_out, d_in)
    assert T.shape == (d_out, d_in) and T[0, d_in - 1] == t[0] and T[d_out - 1, 0] == t[-1]
    torch.testing.assert_close(toeplitz_matvec(t, x, d_out), x @ T.T, atol=1e-12, rtol=0)
    n = max(d_in, d_out)
    c = torch.randn(n, dtype=F64, generator=_g(7))
    torch.testing.assert_close(circulant_matvec(c, x, d_out), x @ circulant_dense(c, d_out, d_in).T, atol=1e-12, rtol=0)
    g, h = torch.randn(2, 3, n, dtype=F64, generator=_g(8))
    torch.testing.assert_close(ldr_matvec(g, h, x, d_out), x @ ldr_dense(g, h, d_out, d_in).T, atol=1e-11, rtol=0)


@pytest.mark.parametrize("r", [1, 2, 3])
def test_ldr_has_displacement_rank_at_most_r(r):
    n = 12
    g, h = torch.randn(2, r, n, dtype=F64, generator=_g(9))
    L = ldr_dense(g, h)
    Z1 = torch.roll(torch.eye(n, dtype=F64), 1, 0)
    Zm = Z1.clone()
    Zm[0, -1] = -1.0
    assert torch.linalg.matrix_rank(Z1 @ L - L @ Zm).item() == r
    assert torch.linalg.matrix_rank(L).item() == n, "an LDR matrix is generically full rank"


def test_kronecker_reshape_trick_matches_kron():
    B, A = torch.randn(3, 2, dtype=F64, generator=_g(10)), torch.randn(4, 5, dtype=F64, generator=_g(11))
    x = torch.randn(2, 3, 10, dtype=F64, generator=_g(12))
    torch.testing.assert_close(kron_matvec(B, A, x), x @ kron_dense(B, A).T, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="10 columns"):
        kron_matvec(B, A, torch.randn(2, 9))


def test_good_fft_size_is_smallest_5_smooth():
    assert [good_fft_size(n) for n in (1, 7, 11, 97, 2047)] == [1, 8, 12, 100, 2048]


def test_projections_are_exact_on_their_family_and_optimal():
    d_out, d_in = 6, 9
    t = torch.randn(d_in + d_out - 1, dtype=F64, generator=_g(13))
    torch.testing.assert_close(nearest_toeplitz(toeplitz_dense(t, d_out, d_in)), t)
    c = torch.randn(9, dtype=F64, generator=_g(14))
    torch.testing.assert_close(nearest_circulant(circulant_dense(c, d_out, d_in)), c)
    B, A = torch.randn(2, 3, dtype=F64, generator=_g(15)), torch.randn(3, 3, dtype=F64, generator=_g(16))
    Bf, Af = nearest_kronecker(kron_dense(B, A), (2, 3), (3, 3))
    torch.testing.assert_close(kron_dense(Bf[0], Af[0]), kron_dense(B, A))
    # optimality: the residual of a random target is orthogonal to the family (first-order condition)
    W = torch.randn(d_out, d_in, dtype=F64, generator=_g(17))
    resid = W - toeplitz_dense(nearest_toeplitz(W), d_out, d_in)
    assert nearest_toeplitz(resid).abs().max() < 1e-12


# --- methods on rectangular layers ---------------------------------------------------------------------


def _layer(d_in: int, d_out: int, method: str, dtype=torch.float32, **hp):
    torch.manual_seed(0)
    lin = nn.Linear(d_in, d_out).to(dtype)
    model = pa.attach(nn.Sequential(lin), method, targets=["0"], **hp)
    return model, model.adapted_layers()["0"]


@pytest.mark.parametrize("method", [*LORA_FORMS, "surm_adapter"])
@pytest.mark.parametrize(("d_in", "d_out"), SHAPES)
@pytest.mark.exactness
def test_every_variant_noop_fast_equals_dense_and_counts(method, d_in, d_out):
    hp = {"r": 1} if method == "surm_kronecker" and math.gcd(d_in, d_out) == 1 else {}
    model, layer = _layer(d_in, d_out, method, **hp)
    adapter = layer.adapters["default"]
    x = torch.randn(9, d_in, generator=_g(18))
    with torch.no_grad():
        torch.testing.assert_close(model(x), layer.base(x), atol=0, rtol=0)  # exact no-op at init
    adapter.perturb_(_g(19), 0.3)
    cls = pa.get_method(method)
    assert sum(p.numel() for p in adapter.parameters()) == cls.param_count(layer.base, adapter.cfg)
    with torch.no_grad():
        fast, ref = model(x), adapter.reference_forward(x, layer.base)
    assert (fast - layer.base(x)).abs().max() > 1e-2, "the perturbed adapter must change the output"
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


def test_parameter_formulas_on_a_rectangular_layer():
    base = nn.Linear(768, 3072)
    count = {m: pa.get_method(m).param_count(base, pa.get_method(m).Config()) for m in LORA_FORMS}
    assert count == {"surm_circulant": 2 * 3072, "surm_toeplitz": 768 + 3072 - 1,
                     "surm_kronecker": 768 + 3072, "surm_ldr": 2 * 3072}


def test_toeplitz_is_general_not_symmetric():
    _, layer = _layer(8, 8, "surm_toeplitz")
    adapter = layer.adapters["default"]
    adapter.perturb_(_g(20), 1.0)
    dW = adapter.delta_weight(layer.base.weight)
    assert (dW - dW.T).abs().max() > 0.1


@pytest.mark.parametrize("method", LORA_FORMS)
def test_bf16_model_runs_structured_products_in_fp32(method):
    """bf16 layer: the update is computed in fp32 from the bf16 input and rounded once at the end."""
    model, layer = _layer(24, 12, method, dtype=torch.bfloat16)
    adapter = layer.adapters["default"]
    adapter.perturb_(_g(21), 0.2)
    assert all(p.dtype == torch.float32 for p in adapter.parameters())
    x = torch.randn(7, 24, generator=_g(22)).to(torch.bfloat16)
    with torch.no_grad():
        y = model(x)
        exact = layer.base.float()(x.float()) + x.float() @ adapter.delta_weight(layer.base.weight.float()).T
    assert y.dtype == torch.bfloat16
    err = (y.float() - exact).abs().max() / exact.abs().max()
    assert err < 1e-2, f"bf16 output deviates by {err:.4f} (relative to the output scale)"
    layer.base.float()


def test_kronecker_is_never_materialised_in_forward_or_backward(monkeypatch):
    model, layer = _layer(12, 24, "surm_kronecker")
    layer.adapters["default"].perturb_(_g(23), 0.1)

    def forbidden(*a, **k):
        raise AssertionError("B ⊗ A was materialised")

    monkeypatch.setattr(torch, "kron", forbidden)
    x = torch.randn(5, 12, requires_grad=True)
    model(x).pow(2).sum().backward()
    assert layer.adapters["default"].surm.B.grad is not None


def test_kronecker_factor_choice_and_errors():
    assert kronecker_factor(24, 12) == 4 and kronecker_rank_bound(24, 12, 4) == 12  # full rank reachable
    assert kronecker_rank_bound(768, 768, kronecker_factor(768, 768)) == 576
    assert kronecker_factor(3072, 768, 0) in (32, 48) and kronecker_rank_bound(3072, 768, 48) == 768
    with pytest.raises(pa.MethodError, match=r"r=5 must divide both d_in=12 and d_out=24.*valid r: 1, 2, 3, 4, 6, 12"):
        _layer(12, 24, "surm_kronecker", r=5)


def test_circulant_plain_variant_and_hadamard_parameters():
    _, layer = _layer(10, 10, "surm_circulant", hadamard=False)
    adapter = layer.adapters["default"]
    assert [n for n, _ in adapter.named_parameters()] == ["surm.c"] and adapter.surm.c.abs().sum() == 0
    _, layer = _layer(10, 10, "surm_circulant", init_std=0.5)
    names = sorted(n for n, _ in layer.adapters["default"].named_parameters())
    assert names == ["surm.c_A", "surm.c_B"]


def test_training_a_circulant_fits_a_circulant_target():
    """Gradient descent on ΔW = C(c_A ⊙ c_B) recovers a circulant teacher on a 16×16 layer."""
    model, layer = _layer(16, 16, "surm_circulant")
    target = circulant_dense(torch.randn(16, generator=_g(24)) * 0.3)
    x = torch.randn(256, 16, generator=_g(25))
    y_target = layer.base(x).detach() + x @ target.T
    opt = torch.optim.Adam(model.adapter_parameters().values(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        loss = (model(x) - y_target).pow(2).mean()
        loss.backward()
        opt.step()
    dW = layer.adapters["default"].delta_weight(layer.base.weight).detach()
    assert (dW - target).norm() / target.norm() < 0.02


# --- adapter form --------------------------------------------------------------------------------------------


def test_adapter_form_reproduces_bert_base_count_on_houlsby_positions():
    from transformers import BertConfig, BertModel

    with torch.device("meta"):
        bert = BertModel(BertConfig())
    m = pa.attach(bert, "surm_adapter")
    layers = sorted(m.adapted_layers())
    assert len(layers) == 24 and all(n.endswith("output.dense") for n in layers)
    assert sum(".attention.output.dense" in n for n in layers) == 12
    assert m.count_parameters().adapter == 2 * 12 * 3 * 768 == 55_296


@pytest.mark.parametrize("structure", list(STRUCTURES))
def test_adapter_structures_are_residual_nonlinear_and_not_mergeable(structure):
    model, layer = _layer(12, 16, "surm_adapter", structure=structure, activation="relu")
    adapter = layer.adapters["default"]
    adapter.perturb_(_g(26), 0.3)
    x = torch.randn(5, 12, generator=_g(27))
    with torch.no_grad():
        y0 = layer.base(x)
        expected = y0 + torch.relu(y0 @ adapter.surm.dense().T) + adapter.bias
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(pa.MergeError, match="cannot be merged"):
        model.merge()


def test_adapter_and_method_config_errors():
    with pytest.raises(pa.MethodError, match="unknown structure 'hankel'"):
        _layer(8, 8, "surm_adapter", structure="hankel")
    with pytest.raises(pa.MethodError, match="unknown activation"):
        _layer(8, 8, "surm_adapter", activation="swish2")
    with pytest.raises(pa.MethodError, match="r \\(number of terms\\) must be ≥ 1"):
        _layer(8, 8, "surm_ldr", r=0)
    with pytest.raises(pa.MethodError, match="dropout"):
        _layer(8, 8, "surm_toeplitz", dropout=1.5)
