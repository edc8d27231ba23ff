"""Architectural adapters: Houlsby, Pfeiffer, AdapterDrop (sites, counts, the measured speed-up),
Compacter (Kronecker sums, shared slow factors), Poly and MoLoRA (routing)."""

from __future__ import annotations

import time

import pytest
import torch

import peftatlas as pa
from peftatlas.core.method import MethodError
from peftatlas.methods.compacter import kron_sum_rank1_dense, kron_sum_rank1_matvec
from peftatlas.testing import tiny_model


def _perturb(model, name: str | None = None, seed: int = 3, scale: float = 0.2) -> None:
    g = torch.Generator().manual_seed(seed)
    for ln in sorted(model.adapted_layers()):
        for an, adapter in model.adapted_layers()[ln].adapters.items():
            if name is None or an == name:
                adapter.perturb_(g, scale)


# --- Houlsby / Pfeiffer ----------------------------------------------------------------------------------


def test_houlsby_two_sites_per_layer_and_lora_paper_count():
    model = pa.attach(tiny_model("bert").model, "houlsby", bottleneck=8)
    sites = sorted(n.split("layer.")[-1] for n in model.adapted_layers())
    assert sites == ["0.attention.output.dense", "0.output.dense", "1.attention.output.dense", "1.output.dense"]
    # LoRA paper's formula L̂·(2·d·r + r + d) with L̂ = 4 adapted sublayers, d = 32, r = 8
    assert model.count_parameters().adapter == 4 * (2 * 32 * 8 + 8 + 32)


def test_pfeiffer_ffn_site_only():
    model = pa.attach(tiny_model("llama").model, "pfeiffer", bottleneck=8)
    assert sorted(model.adapted_layers()) == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]


def test_bottleneck_is_a_nonlinear_residual():
    tm = tiny_model("bert")
    model = pa.attach(tm.model, "houlsby", bottleneck=4, activation="relu")
    _perturb(model, scale=1.0)
    layer = model.adapted_layers()["bert.encoder.layer.0.output.dense"]
    adapter = layer.adapters["default"]
    h = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    r1, r2 = adapter.residual(h), adapter.residual(2 * h)
    assert not torch.allclose(r2 - adapter.up_bias, 2 * (r1 - adapter.up_bias), atol=1e-4), "expected ReLU kinks"


# --- AdapterDrop --------------------------------------------------------------------------------------


def _bert(layers: int = 4, hidden: int = 64):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=200, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=4 * hidden, max_position_embeddings=64, num_labels=2,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(cfg)


def test_adapterdrop_removes_lowest_layers_and_stops_backprop_there():
    model = pa.attach(_bert(), "adapterdrop", bottleneck=4, drop_lowest=3)
    assert sorted({n.split("layer.")[1].split(".")[0] for n in model.adapted_layers()}) == ["3"]
    full = pa.attach(_bert(), "houlsby", bottleneck=4)
    assert model.count_parameters().adapter * 4 == full.count_parameters().adapter  # (L − n)/L of the params
    outputs = []
    handle = model.model.bert.encoder.layer[2].register_forward_hook(lambda m, a, out: outputs.append(out))
    model.train()
    model(input_ids=torch.randint(3, 200, (2, 8))).logits.sum().backward()
    handle.remove()
    assert not outputs[0].requires_grad, "layers below the first adapter must not enter the backward pass"
    with pytest.raises(MethodError, match="removes every adapted layer"):
        pa.attach(_bert(), "adapterdrop", drop_lowest=4)


def test_adapterdrop_robust_mode_drops_a_random_number_in_training_only():
    tm = tiny_model("bert")
    model = pa.attach(tm.model, "adapterdrop", bottleneck=4, drop_lowest=1, robust=True, seed=3)
    assert len(model.adapted_layers()) == 4  # every layer keeps its adapter
    _perturb(model)
    drops = set()
    for step in range(12):
        model.on_train_step(step, 12)
        drops.add(model.shared["default"].drop)
    assert drops == {0, 1}  # L = 2 layers: 0 or 1 lowest layers dropped
    layer0 = model.adapted_layers()["bert.encoder.layer.0.output.dense"].adapters["default"]
    h = torch.randn(3, 32)
    schedule = model.shared["default"]
    layer0.train()
    schedule.drop = 1
    torch.testing.assert_close(layer0(h, lambda t: t), h)  # layer 0 dropped at this training step
    schedule.drop = 0
    assert not torch.allclose(layer0(h, lambda t: t), h)  # ... and active at this one
    layer0.eval()
    torch.testing.assert_close(layer0(h, lambda t: t), h)  # inference drops the lowest drop_lowest=1 layers


def _time_train_steps(model, ids, labels, repeats: int) -> float:
    best = float("inf")
    model.train()
    for _ in range(repeats):
        t = time.perf_counter()
        model(input_ids=ids, labels=labels).loss.backward()
        best = min(best, time.perf_counter() - t)
    return best


def test_adapterdrop_training_speedup_is_measurable():
    """Dropping the adapters of the lowest 3 of 4 layers skips their backward pass (the paper's training gain).

    Measured (this machine, 1 thread, 6-layer d=128 BERT, batch 16×64, m=32): Houlsby 214 ms/step,
    AdapterDrop n=3 115 ms (1.85×), n=5 103 ms (2.08×); see docs/methods/adapterdrop.md.
    """
    ids = torch.randint(3, 200, (8, 48), generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 2, (8,), generator=torch.Generator().manual_seed(1))
    full = pa.attach(_bert(), "houlsby", bottleneck=16)
    drop = pa.attach(_bert(), "adapterdrop", bottleneck=16, drop_lowest=3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t_full = min(_time_train_steps(full, ids, labels, 3) for _ in range(2))
        t_drop = min(_time_train_steps(drop, ids, labels, 3) for _ in range(2))
    finally:
        torch.set_num_threads(threads)
    assert t_full / t_drop > 1.15, f"expected a training speed-up, got {t_full / t_drop:.2f}×"


# --- Compacter ------------------------------------------------------------------------------------------


def test_kronecker_sum_matvec_matches_explicit_kron():
    g = torch.Generator().manual_seed(0)
    n = 4
    A, s, t = torch.randn(n, n, n, generator=g), torch.randn(n, 6, generator=g), torch.randn(n, 5, generator=g)
    x = torch.randn(3, 7, 20, generator=g)
    W = kron_sum_rank1_dense(A, s, t)
    assert W.shape == (24, 20)
    torch.testing.assert_close(kron_sum_rank1_matvec(A, s, t, x), x @ W.t(), atol=1e-5, rtol=1e-5)
    # W = Σ_i A_i ⊗ (s_i t_iᵀ) entry by entry
    i, a, b, p, q = 2, 1, 3, 4, 2
    one = A[i, a, b] * s[i, p] * t[i, q]
    torch.testing.assert_close(torch.kron(A[i], torch.outer(s[i], t[i]))[a * 6 + p, b * 5 + q], one)


@pytest.mark.exactness
def test_compacter_slow_factors_are_shared_trained_saved(tmp_path):
    tm = tiny_model("bert")
    model = pa.attach(tm.model, "compacter", bottleneck=8, phm_dim=4)
    adapters = [layer.adapters["default"] for layer in model.adapted_layers().values()]
    assert len({id(a.shared.A) for a in adapters}) == 1
    count = model.count_parameters()
    assert count.shared == 4**3 and count.adapter == 4 * (2 * (32 + 8) + 32 + 8) + 4**3
    _perturb(model)
    model.train()
    tm.output(model(**tm.make_inputs(2, 0))).sum().backward()
    assert model.shared["default"].A.grad is not None and model.shared["default"].A.grad.abs().sum() > 0
    model.eval()
    y = tm.output(model(**tm.make_inputs(2, 1)))
    pa.save_adapter(model, tmp_path / "c")
    fresh = tiny_model("bert")
    loaded = pa.load_adapter(fresh.model, tmp_path / "c")
    torch.testing.assert_close(tm.output(loaded(**fresh.make_inputs(2, 1))), y, atol=0, rtol=0)
    assert torch.equal(loaded.shared["default"].A, model.shared["default"].A)


def test_compacter_width_must_divide():
    with pytest.raises(MethodError, match="multiple of phm_dim"):
        pa.attach(tiny_model("bert").model, "compacter", bottleneck=8, phm_dim=3)


# --- Poly / MoLoRA -----------------------------------------------------------------------------------------


def test_poly_routes_by_task_id():
    tm = tiny_model("bert")
    model = pa.attach(tm.model, "poly", r=2, n_skills=3, n_splits=2, n_tasks=3, targets=["query", "value"])
    _perturb(model, scale=1.0)
    x = tm.make_inputs(1, 0)
    x3 = {k: v.expand(3, -1) for k, v in x.items()}
    with torch.no_grad():
        mixed = model(**x3, task_ids=torch.tensor([0, 1, 2])).logits
        singles = [model(**x, task_ids=torch.tensor([t])).logits[0] for t in range(3)]
    torch.testing.assert_close(mixed, torch.stack(singles), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(singles[0], singles[1])
    with pytest.raises(MethodError, match="pass task_ids"):
        model(**x)
    with pytest.raises(MethodError, match="task ids must lie"):
        model(**x, task_ids=torch.tensor([3]))
    assert model.shared["default"].task_ids is None  # cleared after every call


def test_poly_param_count_and_generate_with_task_ids():
    tm = tiny_model("llama")
    model = pa.attach(tm.model, "poly", r=2, n_skills=2, n_tasks=2, targets=["q_proj"])
    assert model.count_parameters().adapter == 2 * (2 * 2 * (32 + 32) + 2 * 1 * 2)
    _perturb(model, scale=1.0)
    ids = torch.randint(3, 100, (2, 4), generator=torch.Generator().manual_seed(0))
    out = model.generate(ids, task_ids=torch.tensor([0, 1]), max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 7)


def test_molora_gates_are_per_token_and_sum_to_one():
    model = pa.attach(tiny_model("llama").model, "molora", r=2, n_experts=3, targets=["q_proj"])
    _perturb(model, scale=1.0)
    adapter = next(iter(model.adapted_layers().values())).adapters["default"]
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(0))
    g = adapter.gates(x)
    torch.testing.assert_close(g.sum(-1), torch.ones(2, 5))
    assert not torch.allclose(g[0, 0], g[0, 1])
