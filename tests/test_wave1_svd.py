"""SVD-basis family (PiSSA, MiLoRA, SVFT, SSVD, PSOFT, AntiPaSTO, CLOVER): the SVD is computed once
per layer, the initial factors are the right singular triplets, variants count and merge correctly,
AntiPaSTO steers both ways, and CLOVER changes each head's Q-K / V-O product exactly as stated."""

from __future__ import annotations

import math

import pytest
import torch

import peftatlas as pa
from peftatlas.core.method import MethodError
from peftatlas.methods import _svd
from peftatlas.methods.svd_basis import band_pattern, band_size, set_steering
from peftatlas.testing import tiny_model

SVD_METHODS = [("pissa", {"r": 4}), ("milora", {"r": 4}), ("svft", {"band": 1}), ("ssvd", {"r": 4}),
               ("psoft", {"r": 4}), ("antipasto", {"r": 4})]


@pytest.mark.parametrize(("method", "hp"), SVD_METHODS)
def test_one_svd_per_layer_and_none_for_a_second_adapter(method, hp):
    _svd.clear_cache()
    tm = tiny_model("bert")
    start = _svd.svd_calls()
    model = pa.attach(tm.model, method, name="a", **hp)
    n_layers = len(model.adapted_layers())
    assert n_layers > 5
    assert _svd.svd_calls() - start == n_layers
    model.add_adapter("b", method, **hp)  # same frozen weights: served from the cache
    assert _svd.svd_calls() - start == n_layers
    x = tm.make_inputs(2, 0)
    with torch.no_grad():
        model(**x)
        model.merge()
        model.unmerge()
    assert _svd.svd_calls() - start == n_layers, "forward / merge must not decompose again"


def test_clover_uses_one_batched_svd_per_adapted_layer():
    tm = tiny_model("llama")
    start = _svd.svd_calls()
    model = pa.attach(tm.model, "clover", head_dim=8)
    assert _svd.svd_calls() - start == len(model.adapted_layers()) == 4  # q and o of 2 layers


def test_cache_misses_after_the_weight_changes_in_place():
    _svd.clear_cache()
    W = torch.nn.Parameter(torch.randn(6, 5), requires_grad=False)
    a = _svd.weight_svd(W)
    calls = _svd.svd_calls()
    assert _svd.weight_svd(W) is a and _svd.svd_calls() == calls
    with torch.no_grad():
        W.mul_(2.0)
    b = _svd.weight_svd(W)
    assert _svd.svd_calls() == calls + 1
    torch.testing.assert_close(b.S, 2 * a.S)
    torch.testing.assert_close(b.U @ torch.diag(b.S) @ b.Vh, W.detach(), atol=1e-5, rtol=0)


def test_canonical_signs_make_the_basis_deterministic():
    W = torch.randn(7, 9, generator=torch.Generator().manual_seed(0))
    U, _, Vh = torch.linalg.svd(W, full_matrices=False)
    flip = torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0, 1.0, 1.0])
    U1, V1 = _svd.canonical_signs(U, Vh)
    U2, V2 = _svd.canonical_signs(U * flip, Vh * flip[:, None])
    torch.testing.assert_close(U1, U2)
    torch.testing.assert_close(V1, V2)
    assert (U1.gather(0, U1.abs().argmax(0, keepdim=True)) > 0).all()


@pytest.mark.parametrize(("method", "sl"), [("pissa", slice(0, 3)), ("milora", slice(-3, None))])
def test_pissa_and_milora_start_on_principal_and_minor_triplets(method, sl):
    tm = tiny_model("mlp")
    model = pa.attach(tm.model, method, r=3, targets=["fc2"])
    adapter = model.adapted_layers()["fc2"].adapters["default"]
    W = tm.model.fc2.weight.detach()
    U, S, Vh = torch.linalg.svd(W)
    part = U[:, sl] @ torch.diag(S[sl]) @ Vh[sl]
    torch.testing.assert_close(adapter.pissa_B @ adapter.pissa_A, part, atol=1e-5, rtol=1e-4)
    # principal parts carry most of the energy, minor parts the least
    energy = part.norm() / W.norm()
    assert energy > 0.45 if method == "pissa" else energy < 0.25


def test_pissa_rank_must_fit():
    with pytest.raises(MethodError, match="exceeds"):
        pa.attach(tiny_model("mlp").model, "pissa", r=13)


def test_svft_band_counts_and_random_pattern():
    for k in (5, 12):
        for w in range(0, k + 2):
            rows, cols = band_pattern(k, w)
            assert rows.numel() == band_size(k, w)
            assert ((rows - cols).abs() <= w).all()
            assert len(set(zip(rows.tolist(), cols.tolist()))) == rows.numel()
    tm = tiny_model("mlp")
    model = pa.attach(tm.model, "svft", band=2, pattern="random", seed=3)
    for layer in model.adapted_layers().values():
        a = layer.adapters["default"]
        k = min(layer.base.weight.shape)
        assert a.svft_m.numel() == band_size(k, 2)
        assert not ((a.omega_rows - a.omega_cols).abs() <= 2).all()  # not the band


def test_svft_plain_only_rescales_singular_values():
    tm = tiny_model("mlp")
    model = pa.attach(tm.model, "svft", band=0, targets=["fc2"])
    adapter = model.adapted_layers()["fc2"].adapters["default"]
    with torch.no_grad():
        adapter.svft_m.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    W = tm.model.fc2.weight.detach()
    W2 = adapter.merged_params({"weight": W})["weight"]
    S, S2 = torch.linalg.svdvals(W), torch.linalg.svdvals(W2)
    U, _, Vh = torch.linalg.svd(W)
    # same singular vectors: Uᵀ W2 Vᵀ is diagonal
    core = U.T @ W2 @ Vh.T
    assert (core - torch.diag(torch.diagonal(core))).abs().max() < 1e-5
    assert not torch.allclose(S, S2)


@pytest.mark.parametrize("rotation", ["first_order", "cayley", "free"])
def test_ssvd_rotation_options_count_merge_and_keep_left_vectors(rotation):
    tm = tiny_model("mlp")
    model = pa.attach(tm.model, "ssvd", r=5, rotation=rotation, targets=["fc2"])
    layer = model.adapted_layers()["fc2"]
    adapter = layer.adapters["default"]
    assert sum(p.numel() for p in adapter.parameters()) == pa.get_method("ssvd").param_count(layer.base, adapter.cfg)
    adapter.perturb_(torch.Generator().manual_seed(2), 0.2)
    x = torch.randn(4, 24)
    with torch.no_grad():
        torch.testing.assert_close(adapter(x, layer.base), adapter.reference_forward(x, layer.base),
                                   atol=1e-5, rtol=1e-4)
    # SSVD only touches the input side of the top-r triplets: ΔW's column space ⊂ span(U_r)
    W = layer.base.weight.detach()
    delta = adapter.delta_weight(W)
    U_r = adapter.basis_U
    torch.testing.assert_close(U_r @ (U_r.T @ delta), delta, atol=1e-5, rtol=0)


def test_psoft_variants_count_and_match_dense():
    for hp in ({"orth": False}, {"mag_a": False, "mag_b": False}, {"cayley": "neumann"}):
        tm = tiny_model("mlp")
        model = pa.attach(tm.model, "psoft", r=4, targets=["fc2"], **hp)
        layer = model.adapted_layers()["fc2"]
        adapter = layer.adapters["default"]
        assert sum(p.numel() for p in adapter.parameters()) == pa.get_method("psoft").param_count(layer.base,
                                                                                                  adapter.cfg)
        adapter.perturb_(torch.Generator().manual_seed(3), 0.2)
        x = torch.randn(3, 24)
        with torch.no_grad():
            torch.testing.assert_close(adapter(x, layer.base), adapter.reference_forward(x, layer.base),
                                       atol=1e-5, rtol=1e-4)


def test_psoft_with_orthogonal_core_keeps_principal_singular_values():
    tm = tiny_model("mlp")
    model = pa.attach(tm.model, "psoft", r=4, mag_a=False, mag_b=False, targets=["fc2"])
    adapter = model.adapted_layers()["fc2"].adapters["default"]
    adapter.perturb_(torch.Generator().manual_seed(4), 0.5)
    W = tm.model.fc2.weight.detach()
    W2 = adapter.merged_params({"weight": W})["weight"]
    torch.testing.assert_close(torch.linalg.svdvals(W2), torch.linalg.svdvals(W), atol=1e-5, rtol=1e-5)


def test_antipasto_steers_both_ways_and_zero_is_the_base():
    tm = tiny_model("bert")
    model = pa.attach(tm.model, "antipasto", r=4, rotate_u=True, max_angle=0.3)
    g = torch.Generator().manual_seed(5)
    for layer in model.adapted_layers().values():
        a = layer.adapters["default"]
        with torch.no_grad():
            a.antipasto_rv.normal_(0, 0.02, generator=g)
            a.antipasto_ru.normal_(0, 0.02, generator=g)
    x = tm.make_inputs(3, 0)
    with torch.no_grad():
        with model.disable():
            y0 = tm.output(model(**x))
        assert set_steering(model, 0.0) == len(model.adapted_layers())
        torch.testing.assert_close(tm.output(model(**x)), y0, atol=1e-6, rtol=0)
        set_steering(model, 1.0)
        up = tm.output(model(**x)) - y0
        set_steering(model, -1.0)
        down = tm.output(model(**x)) - y0
    assert up.abs().max() > 1e-4
    # small rotations: Δy(+1) ≈ −Δy(−1) (anti-parallel), first order in the angle
    cos = torch.nn.functional.cosine_similarity(up.flatten(), down.flatten(), dim=0)
    assert cos < -0.95


def test_antipasto_angle_clamp_bounds_the_rotation():
    angles = {}
    for max_angle in (0.2, math.inf):
        tm = tiny_model("mlp")
        model = pa.attach(tm.model, "antipasto", r=6, max_angle=max_angle, targets=["fc2"])
        adapter = model.adapted_layers()["fc2"].adapters["default"]
        with torch.no_grad():
            adapter.antipasto_rv.fill_(50.0)
        _, R_v = adapter.rotations()
        assert torch.isfinite(R_v).all()
        angles[max_angle] = torch.linalg.eigvals(R_v).angle().abs().max().item()
    # each skew entry is clamped to 2·tan(θ/2): the largest plane angle stays well below the unclamped one
    assert angles[0.2] < 0.2 * 6 / 1.5 and angles[math.inf] > 3.0


def _clover_bases(M: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    U, _, Vh = torch.linalg.svd(M.double())
    return U[:, :rank], Vh[:rank].T


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_clover_changes_each_head_product_by_U_D_Vt(kind):
    tm = tiny_model(kind)
    model = pa.attach(tm.model, "clover", head_dim=8)
    g = torch.Generator().manual_seed(6)
    layers = model.adapted_layers()
    for layer in layers.values():
        layer.adapters["default"].perturb_(g, 0.1)
    names = dict(tm.model.named_modules())
    checked = 0
    for ln, layer in layers.items():
        a = layer.adapters["default"]
        W = layer.base.weight.detach()
        W2 = a.merged_params({"weight": W})["weight"]
        D = a.clover_d.detach().double()
        h = 8
        if a.cfg.role == "query":
            partner = (names[ln.replace("query", "key")] if "query" in ln else names[ln.replace("q_proj", "k_proj")])
            Wk = partner.weight.detach()
            group = (W.shape[0] // h) // (Wk.shape[0] // h)
            for head in range(W.shape[0] // h):
                Aq, Aq2 = W[head * h:(head + 1) * h], W2[head * h:(head + 1) * h]
                Ak = Wk[(head // group) * h:(head // group + 1) * h]
                before, after = Aq.T.double() @ Ak.double(), Aq2.T.double() @ Ak.double()
                U, V = _clover_bases(before, h)
                change = after - before
                torch.testing.assert_close(U @ (U.T @ change @ V) @ V.T, change, atol=1e-4, rtol=0)
                torch.testing.assert_close((U.T @ change @ V).abs(), D[head].abs(), atol=1e-4, rtol=1e-3)
                checked += 1
        else:
            vname = ln.replace("output.dense", "self.value") if "output.dense" in ln else ln.replace("o_proj", "v_proj")
            Wv = names[vname].weight.detach()
            group = (W.shape[1] // h) // (Wv.shape[0] // h)
            for head in range(W.shape[1] // h):
                Bo, Bo2 = W[:, head * h:(head + 1) * h], W2[:, head * h:(head + 1) * h]
                Av = Wv[(head // group) * h:(head // group + 1) * h]
                before, after = Bo.double() @ Av.double(), Bo2.double() @ Av.double()
                U, V = _clover_bases(before, h)
                change = after - before
                torch.testing.assert_close(U @ (U.T @ change @ V) @ V.T, change, atol=1e-4, rtol=0)
                torch.testing.assert_close((U.T @ change @ V).abs(), D[head].abs(), atol=1e-4, rtol=1e-3)
                checked += 1
    assert checked >= 8


def test_clover_without_partner_fails_loudly_and_needs_head_dim():
    with pytest.raises(MethodError, match="head_dim"):
        pa.attach(tiny_model("bert").model, "clover")
    tm = tiny_model("bert")
    model = pa.attach(tm.model, "clover", head_dim=8, targets=r".*\.query")
    with pytest.raises(MethodError, match="partner"), torch.no_grad():
        model(**tm.make_inputs(2, 0))


def test_clover_vo_only_adapts_output_projections():
    tm = tiny_model("llama")
    model = pa.attach(tm.model, "clover", head_dim=8, pairs="vo")
    assert sorted(n.rsplit(".", 1)[1] for n in model.adapted_layers()) == ["o_proj", "o_proj"]
    counts = model.count_parameters()
    assert counts.adapter == 2 * 32 * 8
