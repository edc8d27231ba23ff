"""Method-specific checks for the wave-2 methods (the generic property suite covers the rest):
AdaLoRA's budget schedule, Delta-LoRA's rank bound, DyLoRA's nested ranks, the fast paths against
their dense forms, structural claims (ranks, sharing, sparsity) and clear errors for bad settings."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import peftatlas as pa
from peftatlas.core.method import make_config
from peftatlas.methods.adalora import budget_schedule
from peftatlas.testing import tiny_model


def make(method: str, base: nn.Module, **hp):
    """One adapter on one module, built the way the engine builds it (with its shared state)."""
    cls = pa.get_method(method)
    cfg = make_config(cls, hp)
    return cls(base, cfg, cls.build_shared({"layer": base}, cfg))


def numerical_rank(m: torch.Tensor, rel: float = 1e-6) -> int:
    s = torch.linalg.svdvals(m.double())
    return int((s > rel * s[0]).sum())


def randomize_(adapter: nn.Module, seed: int = 0, scale: float = 0.5) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def train_steps(model, tm, steps: int, lr: float = 1e-2, hook: bool = True, keep_grads: bool = True):
    """A few Adam steps on a fixed batch; calls ``model.on_train_step`` after each optimizer step."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    model.train()
    batch = tm.make_inputs(4, 1)
    for step in range(1, steps + 1):
        opt.zero_grad(set_to_none=True)
        out = tm.output(model(**batch)).float()
        loss = (out * torch.linspace(-1, 1, out.shape[-1])).sum() + out.pow(2).mean()
        extra = model.extra_loss()
        loss = loss + extra if extra is not None else loss
        loss.backward()
        opt.step()
        if not keep_grads:
            opt.zero_grad(set_to_none=True)
        if hook:
            model.on_train_step(step, steps)
    model.eval()


# --- AdaLoRA -------------------------------------------------------------------------------------


def test_adalora_cubic_schedule_values():
    # warm-up keeps the initial budget; the final phase and its first step sit exactly on the target
    assert budget_schedule(2, 20, 60, 20, tinit=2, tfinal=4, delta_t=1) == (60, False)
    assert budget_schedule(16, 20, 60, 20, tinit=2, tfinal=4, delta_t=1) == (20, True)
    assert budget_schedule(19, 20, 60, 20, tinit=2, tfinal=4, delta_t=1) == (20, True)
    # halfway through the decay: 20 + 40·(1 − 1/2)³ = 25
    assert budget_schedule(9, 20, 60, 20, tinit=2, tfinal=4, delta_t=1) == (25, True)
    assert budget_schedule(9, 20, 60, 20, tinit=2, tfinal=4, delta_t=2) == (25, False)
    budgets = [budget_schedule(t, 20, 60, 20, 2, 4, 1)[0] for t in range(1, 21)]
    assert all(a >= b for a, b in itertools.pairwise(budgets))


def test_adalora_final_total_rank_equals_target_budget():
    tm = tiny_model("bert")
    model = pa.attach(tm.model, "adalora", init_r=6, target_r=2, tinit=2, tfinal=3, delta_t=1)
    adapters = [layer.adapters["default"] for layer in model.adapted_layers().values()]
    n = len(adapters)
    totals = []
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    batch = tm.make_inputs(4, 1)
    steps = 14
    model.train()
    for step in range(1, steps + 1):
        opt.zero_grad(set_to_none=True)
        out = tm.output(model(**batch))
        loss = (out * torch.linspace(-1, 1, out.shape[-1])).sum() + model.extra_loss()
        loss.backward()
        opt.step()
        model.on_train_step(step, steps)  # grads still present, as the paper's allocator needs
        totals.append(sum(a.rank for a in adapters))
    assert totals[0] == totals[1] == 6 * n  # warm-up
    assert totals[-1] == 2 * n  # exactly the target budget
    assert all(a >= b for a, b in itertools.pairwise(totals))
    assert any(2 * n < t < 6 * n for t in totals), totals
    # masked triplets contribute nothing: λ is zero wherever the mask is
    for a in adapters:
        assert torch.all(a.lora_E[a.rank_mask == 0] == 0)
    # the allocation is global: layers need not keep the same rank, but the sum is exact
    assert sum(a.rank for a in adapters) == 2 * n


def test_adalora_masks_by_importance_and_falls_back_to_magnitude_without_grads():
    tm = tiny_model("mlp")
    model = pa.attach(tm.model, "adalora", init_r=4, target_r=1, orth_reg_weight=0.0)
    train_steps(model, tm, steps=3, hook=False)
    adapters = [layer.adapters["default"] for layer in model.adapted_layers().values()]
    # no gradient was ever recorded: scores are |λ| and the two largest |λ| overall survive
    magnitudes = torch.cat([a.lora_E.detach().abs() for a in adapters])
    type(adapters[0]).mask_to_budget(adapters, 2)
    kept = torch.cat([a.rank_mask for a in adapters]).bool()
    assert set(torch.nonzero(kept).flatten().tolist()) == set(magnitudes.topk(2).indices.tolist())


def test_adalora_bad_schedule_is_a_clear_error():
    with pytest.raises(pa.MethodError, match="target_r"):
        pa.attach(tiny_model("mlp").model, "adalora", init_r=4, target_r=5)
    model = pa.attach(tiny_model("mlp").model, "adalora", init_r=4, tinit=5, tfinal=5)
    with pytest.raises(pa.MethodError, match="total_steps=8 must exceed"):
        model.on_train_step(1, 8)


# --- Delta-LoRA ------------------------------------------------------------------------------------


@pytest.mark.parametrize("start_step", [0, 3])
@pytest.mark.exactness
def test_delta_lora_rank_bound_and_paper_rule(start_step):
    """W_T − W0 = λ(B_T A_T − B_K A_K), so W_merged − W0 has rank ≤ 2r (≤ r if K = 0)."""
    torch.manual_seed(0)
    r, lam, steps = 2, 2.0, 9
    net = nn.Sequential(nn.Linear(24, 20))
    W0 = net[0].weight.detach().clone()
    model = pa.attach(net, "delta_lora", targets=["0"], head=None, r=r, alpha=4.0, update_ratio=lam,
                      start_step=start_step)
    adapter = model.adapted_layers()["0"].adapters["default"]
    x, target = torch.randn(32, 24), torch.randn(32, 20)
    opt = torch.optim.Adam(list(model.adapter_parameters().values()), lr=5e-2)
    W_paper = W0.clone()  # the paper's rule, applied to a copy of W step by step
    prev = (adapter.lora_B @ adapter.lora_A).detach().clone()
    model.train()
    for step in range(1, steps + 1):
        opt.zero_grad()
        ((model(x) - target) ** 2).mean().backward()
        opt.step()
        model.on_train_step(step, steps)
        now = (adapter.lora_B @ adapter.lora_A).detach().clone()
        if step > start_step:
            W_paper += lam * (now - prev)
        prev = now
    model.eval()
    delta = adapter.delta_weight(W0)
    expected = W_paper - W0 + adapter.scale * prev
    torch.testing.assert_close(delta, expected, atol=1e-5, rtol=1e-4)
    assert torch.equal(net[0].base.weight if hasattr(net[0], "base") else net[0].weight, W0), "base weight written"
    rank = numerical_rank(delta)
    assert rank <= 2 * r
    assert rank == (r if start_step == 0 else 2 * r), rank  # the bound is attained, not exceeded
    with model.disable():
        # exact: disable() calls the base layer, i.e. F.linear(x, W0, b) — the same kernel as this reference
        # (``x @ W0.T + b`` would be a different kernel, whose rounding may differ by CPU)
        torch.testing.assert_close(model(x), F.linear(x, W0, net[0].bias), atol=0, rtol=0)


# --- DyLoRA ----------------------------------------------------------------------------------------


def test_dylora_truncations_are_nested_loras():
    base = nn.Linear(16, 12)
    a = make("dylora", base, r=6, alpha=6.0)
    randomize_(a)
    a.eval()
    x = torch.randn(5, 16)
    for b in (1, 3, 6):
        a.set_rank(b)
        manual = (x @ a.lora_A[:b].T) @ a.lora_B[:, :b].T * (6.0 / b)
        torch.testing.assert_close(a.delta_output(x), manual, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a.delta_weight(base.weight), a.lora_B[:, :b] @ a.lora_A[:b] * (6.0 / b))
    with pytest.raises(pa.MethodError, match="rank must be in"):
        a.set_rank(7)


@pytest.mark.parametrize("update", ["last", "all"])
def test_dylora_training_updates_only_the_sampled_prefix(update):
    base = nn.Linear(16, 12)
    a = make("dylora", base, r=6, update=update)
    randomize_(a)
    a.train()
    torch.manual_seed(5)
    a(torch.randn(7, 16), base).pow(2).sum().backward()
    used = (a.lora_B.grad.abs().sum(0) > 0).nonzero().flatten().tolist()
    b = max(used) + 1
    assert a.lora_B.grad[:, b:].abs().sum() == 0 and a.lora_A.grad[b:].abs().sum() == 0
    assert used == ([b - 1] if update == "last" else list(range(b)))


@pytest.mark.parametrize("update", ["last", "all"])
def test_dylora_compiled_masked_path_matches_the_sliced_path(update, monkeypatch):
    """Under torch.compile the sampled rank stays a tensor and components ≥ b are masked, not sliced:
    same output and same gradients for every b."""
    base = nn.Linear(16, 12)
    a = make("dylora", base, r=6, alpha=6.0, update=update)
    randomize_(a)
    a.train()
    x = torch.randn(5, 16)
    for b in range(1, 7):
        results = []
        for compiling in (False, True):
            monkeypatch.setattr(torch.compiler, "is_compiling", lambda c=compiling: c)
            monkeypatch.setattr(torch, "randint", lambda lo, hi, size, b=b: torch.tensor(b))
            a.zero_grad(set_to_none=True)
            y = a.delta_output(x)
            y.pow(2).sum().backward()
            results.append((y.detach(), a.lora_A.grad.clone(), a.lora_B.grad.clone()))
        for sliced, masked in zip(*results):
            torch.testing.assert_close(masked, sliced, atol=1e-5, rtol=1e-5)  # GEMMs sum the zeros too
        monkeypatch.undo()


# --- LoRA-FA -----------------------------------------------------------------------------------


@pytest.mark.exactness
def test_lora_fa_down_projection_is_frozen_and_saved(tmp_path):
    tm = tiny_model("mlp")
    model = pa.attach(tm.model, "lora_fa", r=3)
    adapter = model.adapted_layers()["fc1"].adapters["default"]
    A_before = adapter.lora_A.clone()
    assert "lora_A" not in dict(adapter.named_parameters()) and "lora_A" in adapter.state_dict()
    train_steps(model, tm, steps=2)
    assert torch.equal(adapter.lora_A, A_before)
    assert adapter.lora_B.abs().sum() > 0
    pa.save_adapter(model, tmp_path / "fa")
    loaded = pa.load_adapter(tiny_model("mlp").model, tmp_path / "fa")
    assert torch.equal(loaded.adapted_layers()["fc1"].adapters["default"].lora_A, A_before)


# --- LoHa / LoKr -------------------------------------------------------------------------------


def test_loha_factored_and_dense_paths_agree_and_rank_reaches_r_squared():
    base = nn.Linear(40, 30)
    a = make("loha", base, r=3)
    randomize_(a)
    assert a.factored
    x = torch.randn(6, 40)
    fast = a.delta_output(x)
    a.factored = False
    torch.testing.assert_close(fast, a.delta_output(x), atol=1e-4, rtol=1e-4)
    assert numerical_rank(a.delta_weight(base.weight)) == 9  # r² > 2r


def test_lokr_is_a_kronecker_product_with_multiplicative_rank():
    base = nn.Linear(32, 24)
    a = make("lokr", base, r=2)
    randomize_(a)
    assert tuple(a.lokr_C.shape) == (4, 4) and tuple(a.lokr_B.shape) == (6, 2) and tuple(a.lokr_A.shape) == (2, 8)
    delta = a.delta_weight(base.weight)
    torch.testing.assert_close(delta, torch.kron(a.lokr_C, a.lokr_B @ a.lokr_A) * a.scale)
    assert numerical_rank(delta) == 4 * 2  # rank(C)·rank(BA)
    b = make("lokr", nn.Linear(32, 32), r=2, factor=2)
    assert tuple(b.lokr_C.shape) == (2, 2) and tuple(b.lokr_A.shape) == (2, 16)


# --- FourierFT ---------------------------------------------------------------------------------


def test_fourierft_fast_path_never_forms_the_dense_update(monkeypatch):
    base = nn.Linear(64, 48)
    a = make("fourierft", base, n_frequency=50, scaling=3.0)
    randomize_(a)
    x = torch.randn(4, 64)
    expected = x @ a.delta_weight(base.weight).T

    def forbidden(*args, **kwargs):
        raise AssertionError("a dense d_out×d_in spectrum was transformed")

    monkeypatch.setattr(torch.fft, "ifft2", forbidden)
    xr = x.clone().requires_grad_()
    y = a.delta_output(xr)
    y.pow(2).sum().backward()
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-4)
    assert a.spectrum.grad is not None and xr.grad is not None


def test_fourierft_hand_written_backward_is_exact():
    from peftatlas.methods.fourierft import _SparseSpectrum

    for d_out, d_in in ((6, 10), (9, 7), (8, 8)):
        a = make("fourierft", nn.Linear(d_in, d_out), n_frequency=d_out * d_in // 2, scaling=2.0).double()
        randomize_(a)
        x = torch.randn(3, d_in, dtype=torch.double, requires_grad=True)
        assert torch.autograd.gradcheck(lambda x, c, a=a: _SparseSpectrum.apply(x, c, a), (x, a.spectrum))


def test_fourierft_frequencies_are_shared_and_paper_init_is_not_a_noop():
    a1, a2 = make("fourierft", nn.Linear(32, 32), n_frequency=10), make("fourierft", nn.Linear(32, 32), n_frequency=10)
    assert torch.equal(a1.rows, a2.rows) and torch.equal(a1.cols, a2.cols)
    assert "rows" not in a1.state_dict()  # regenerated from random_loc_seed, never stored
    paper = make("fourierft", nn.Linear(32, 32), n_frequency=10, init="paper")
    assert paper.delta_weight(torch.zeros(32, 32)).abs().sum() > 0
    with pytest.raises(pa.MethodError, match="exceeds"):
        make("fourierft", nn.Linear(4, 4), n_frequency=17)


# --- C3A -------------------------------------------------------------------------------------------


def test_c3a_two_active_adapters_compose_and_merge():
    tm = tiny_model("mlp")
    model = pa.attach(tm.model, "c3a", name="a", block_size=4)
    model.add_adapter("b", "c3a", seed=1, block_size=4)
    for name, seed in (("a", 1), ("b", 2)):
        for layer in model.adapted_layers().values():
            randomize_(layer.adapters[name], seed=seed, scale=0.3)
    x = tm.make_inputs(3, 0)["x"]
    layer = model.adapted_layers()["fc1"]
    with torch.no_grad():
        additive = layer.base(x) + layer.adapters["a"].delta_output(x) + layer.adapters["b"].delta_output(x)
        model.set_active(["a", "b"])
        torch.testing.assert_close(layer(x), additive, atol=1e-5, rtol=1e-5)
        y = model(x=x)
        model.merge()
        torch.testing.assert_close(model(x=x), y, atol=1e-5, rtol=1e-5)


def test_c3a_gemm_and_fft_paths_agree_and_hand_written_backward_is_exact():
    from peftatlas.methods.c3a import _SpectralMix, block_circulant_dft, block_circulant_fft, real_dft_matrices

    torch.manual_seed(0)
    for b in (4, 5, 8):
        kernel, x = torch.randn(3, 2, b, dtype=torch.double), torch.randn(7, 2 * b, dtype=torch.double)
        D, E = (t.double() for t in real_dft_matrices(b))
        torch.testing.assert_close(block_circulant_dft(x, kernel, 0.5, D, E), block_circulant_fft(x, kernel, 0.5))
    D, E = (t.double() for t in real_dft_matrices(6))
    inputs = (torch.randn(15, 6, dtype=torch.double, requires_grad=True),
              torch.randn(4, 3, 2, dtype=torch.double, requires_grad=True),
              torch.randn(4, 3, 2, dtype=torch.double, requires_grad=True))
    assert torch.autograd.gradcheck(lambda x, wr, wi: _SpectralMix.apply(x, wr, wi, D, E), inputs)
    big_base = nn.Linear(512, 256)
    big = make("c3a", big_base, block_size=256)
    assert not big.dft_gemm  # large blocks take the torch.fft path; both match the dense reference
    randomize_(big, scale=0.05)
    x = torch.randn(3, 512)
    with torch.no_grad():
        torch.testing.assert_close(big(x, big_base), big.reference_forward(x, big_base), atol=1e-4, rtol=1e-4)


def test_c3a_rejects_a_block_size_that_does_not_divide_and_xavier_is_not_a_noop():
    with pytest.raises(pa.MethodError, match="block_size=5 must divide both d_in=12"):
        pa.attach(tiny_model("mlp").model, "c3a", block_size=5)
    a = make("c3a", nn.Linear(16, 8), block_size=4, init="xavier")
    assert a.delta_weight(torch.zeros(8, 16)).abs().sum() > 0
    assert numerical_rank(a.delta_weight(torch.zeros(8, 16))) == 8  # full rank from 32 numbers


# --- MiSS / Bone / SHiRA / MoRA -------------------------------------------------------------------


def test_miss_update_is_periodic_along_the_input_even_with_padding():
    base = nn.Linear(10, 6)
    a = make("miss", base, r=4)
    randomize_(a)
    delta = a.delta_weight(base.weight)
    for q in range(10):
        torch.testing.assert_close(delta[:, q], a.miss_shard[q % 4])
    x = torch.randn(3, 10)
    torch.testing.assert_close(a.delta_output(x), x @ delta.T, atol=1e-5, rtol=1e-5)


def test_bone_update_depends_on_the_weight_and_cannot_follow_another_adapter():
    a = make("bone", nn.Linear(8, 8), r=4)
    randomize_(a)
    w1, w2 = torch.randn(8, 8), torch.randn(8, 8)
    assert not torch.allclose(a.delta_weight(w1), a.delta_weight(w2))
    M = a.bone_blocks.detach()
    expected_at_zero = torch.cat([torch.cat([M[i], M[i]], dim=1) for i in range(2)], dim=0)  # ΔW_ij = M_i
    torch.testing.assert_close(a.delta_weight(torch.zeros(8, 8)), expected_at_zero)
    tm = tiny_model("mlp")
    model = pa.attach(tm.model, "lora", name="first", r=2)
    model.add_adapter("second", "bone", r=4)
    with pytest.raises(pa.MethodError, match="'bone' .* is not stackable"):  # refused when activated
        model.set_active(["first", "second"])


def test_shira_magnitude_mask_is_top_weights_and_update_is_high_rank():
    base = nn.Linear(20, 16)
    a = make("shira", base, r=2)
    k = 2 * (20 + 16)
    top = set(base.weight.abs().flatten().topk(k).indices.tolist())
    assert set(a.entries.tolist()) == top
    randomize_(a)
    delta = a.delta_weight(base.weight)
    assert int((delta != 0).sum()) == k
    assert numerical_rank(delta) > 2 * 2  # sparse, but well above the LoRA rank of the same budget
    scores = torch.zeros(16, 20)
    scores[:, 0] = 1.0
    scores[0, :] = 2.0
    a.select_by_importance_(scores)
    assert a.shira_values.abs().sum() == 0 and len(a.entries) == k


def test_shira_magnitude_mask_passes_merge_and_dense_reference_on_a_tiny_model():
    tm = tiny_model("bert")
    model = pa.attach(tm.model, "shira", r=2, mask="magnitude")
    for layer in model.adapted_layers().values():
        randomize_(layer.adapters["default"], scale=0.05)
        x = torch.randn(3, layer.base.in_features)
        with torch.no_grad():
            a = layer.adapters["default"]
            torch.testing.assert_close(a(x, layer.base), a.reference_forward(x, layer.base), atol=1e-5, rtol=1e-4)
    batch = tm.make_inputs(2, 0)
    with torch.no_grad():
        y = tm.output(model(**batch))
        model.merge()
        torch.testing.assert_close(tm.output(model(**batch)), y, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shape", [(20, 7), (7, 20), (24, 24)])
def test_mora_rope_variant_matches_its_dense_form(shape):
    base = nn.Linear(shape[1], shape[0])
    a = make("mora", base, r=1, compression="rope")
    assert a.size % 2 == 0
    randomize_(a)
    x = torch.randn(4, shape[1])
    with torch.no_grad():
        torch.testing.assert_close(a(x, base), a.reference_forward(x, base), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(a.delta_output(x), x @ a.delta_weight(base.weight).T, atol=1e-5, rtol=1e-4)


def test_mora_square_size_and_rank():
    base = nn.Linear(36, 36)
    a = make("mora", base, r=2)
    assert a.size == 12 and pa.get_method("mora").param_count(base, a.cfg) == 144  # √(72·2) = 12
    randomize_(a)
    assert numerical_rank(a.delta_weight(base.weight)) == 12  # rank r̂ = 12 ≫ r = 2 at LoRA's budget


# --- RandLoRA / VB-LoRA ------------------------------------------------------------------------


def test_randlora_is_full_rank_and_stores_only_the_diagonals():
    for shape in ((24, 16), (16, 24)):
        base = nn.Linear(shape[1], shape[0])
        a = make("randlora", base, r=4)
        randomize_(a)
        assert numerical_rank(a.delta_weight(base.weight)) == 16  # d_min, from rank-4 bases
        assert sorted(a.state_dict()) == ["randlora_gamma", "randlora_lambda"]


def test_vblora_bank_is_shared_saved_once_and_only_topk_logits_learn(tmp_path):
    tm = tiny_model("bert")
    model = pa.attach(tm.model, "vblora", r=2, num_vectors=8, vector_length=4, topk=2)
    adapters = [layer.adapters["default"] for layer in model.adapted_layers().values()]
    assert all(a.shared is adapters[0].shared for a in adapters)
    assert "shared.default.bank" in model.adapter_parameters()
    train_steps(model, tm, steps=1, keep_grads=True)
    g = adapters[0].logits_A.grad
    assert g is not None and int((g != 0).sum(-1).max()) <= 2  # softmax over the top-2 entries only
    pa.save_adapter(model, tmp_path / "vb")
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "vb" / "adapter.safetensors")).keys()
    assert [k for k in keys if "bank" in k] == ["__shared__.bank"]
    paper = make("vblora", nn.Linear(8, 8), r=2, num_vectors=8, vector_length=4, init="paper")
    assert paper.delta_weight(torch.zeros(8, 8)).abs().sum() > 0


# --- clear errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "hp", "match"), [
    ("vblora", {"vector_length": 5}, "vector_length=5 must divide both"),
    ("shira", {"r": 50}, "asks for"),
    ("bone", {"r": 5}, "block size r=5 must divide"),
    ("dylora", {"r": 4, "r_min": 5}, "r_min must be in"),
    ("mora", {"compression": "zip"}, "compression must be"),
    ("loha", {"r": 0}, "rank r must be"),
])
def test_bad_hyperparameters_name_the_problem(method, hp, match):
    with pytest.raises(pa.MethodError, match=match):
        pa.attach(tiny_model("mlp").model, method, **hp)
