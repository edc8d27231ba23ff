"""Fast paths of LoRA and VeRA: batched mixed-adapter rows, fused GEMM, compile, autocast."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo as dynamo
from torch import nn

import peftatlas as pa
from peftatlas import serving
from peftatlas.methods.lora import LoRA, add_lowrank
from peftatlas.methods.vera import VeRA
from peftatlas.serving import bank, groups, row_index
from peftatlas.testing import bf16_autocast_output, tiny_model


def _perturb_all(model, seed: int = 0, scale: float = 0.2) -> None:
    g = torch.Generator().manual_seed(seed)
    for ln in sorted(model.adapted_layers()):
        for an in sorted(model.adapted_layers()[ln].adapters):
            model.adapted_layers()[ln].adapters[an].perturb_(g, scale)


def _rows_reference(tm, model, inputs, rows):
    """Each row run alone through its own adapter (or the base): the oracle for a mixed batch."""
    outs = []
    for i, n in enumerate(rows):
        one = {k: v[i : i + 1] for k, v in inputs.items()}
        with torch.no_grad():
            if n == pa.BASE_NAME:
                with model.disable():
                    outs.append(tm.output(model(**one)))
            else:
                model.set_active(n)
                outs.append(tm.output(model(**one)))
    return torch.cat(outs)


class _Spy:
    """Counts calls of a method's batched mixed path and what it returned."""

    def __init__(self, monkeypatch, cls) -> None:
        self.calls = 0
        self.fell_back = 0
        original = cls.mixed_batch_forward

        def wrapped(layer, x, rows, present):
            self.calls += 1
            out = original(layer, x, rows, present)
            self.fell_back += out is None
            return out

        monkeypatch.setattr(cls, "mixed_batch_forward", staticmethod(wrapped))


@pytest.mark.parametrize("strategy", ["gather", "grouped"])
def test_lora_mixed_rows_with_different_ranks_and_scales(strategy, monkeypatch):
    monkeypatch.setattr(serving, "MIXED_STRATEGY", strategy)
    tm = tiny_model("llama")
    model = pa.attach(tm.model, "lora", name="a0", r=2, alpha=4)
    hps = [dict(r=4, alpha=8), dict(r=6, alpha=3, rslora=True), dict(r=1, alpha=1), dict(r=4, alpha=16)]
    for i, hp in enumerate(hps, start=1):
        model.add_adapter(f"a{i}", "lora", seed=i, **hp)
    _perturb_all(model)
    spy = _Spy(monkeypatch, LoRA)
    rows = ["a3", pa.BASE_NAME, "a0", "a1", "a4", "a2", "a1"]
    inputs = tm.make_inputs(len(rows), 3)
    with torch.no_grad():
        mixed = tm.output(model(**inputs, adapter_names=rows))
    n_layers = len(model.adapted_layers())
    assert spy.calls == n_layers and spy.fell_back == 0
    expected = _rows_reference(tm, model, inputs, rows)
    torch.testing.assert_close(mixed, expected, atol=2e-5, rtol=1e-4)
    # rows really differ from each other (the routing is not a no-op)
    assert not torch.allclose(mixed[2], mixed[3], atol=1e-3)


def test_vera_mixed_rows_share_bases_and_fall_back_when_bases_differ(monkeypatch):
    tm = tiny_model("bert")
    model = pa.attach(tm.model, "vera", name="v0", r=8)
    model.add_adapter("v1", "vera", seed=1, r=8)
    model.add_adapter("v2", "vera", seed=2, r=8, projection_seed=99)  # different bases
    _perturb_all(model)
    spy = _Spy(monkeypatch, VeRA)
    rows = ["v1", "v0", pa.BASE_NAME, "v1"]
    inputs = tm.make_inputs(len(rows), 4)
    with torch.no_grad():
        mixed = tm.output(model(**inputs, adapter_names=rows))
    assert spy.calls > 0 and spy.fell_back == 0
    torch.testing.assert_close(mixed, _rows_reference(tm, model, inputs, rows), atol=2e-5, rtol=1e-4)
    rows = ["v2", "v0", "v1", pa.BASE_NAME]
    spy.calls = spy.fell_back = 0
    with torch.no_grad():
        mixed = tm.output(model(**inputs, adapter_names=rows))
    assert spy.calls > 0 and spy.fell_back == spy.calls, "different bases must use the grouped path"
    torch.testing.assert_close(mixed, _rows_reference(tm, model, inputs, rows), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("method", ["lora", "vera"])
@pytest.mark.parametrize("shape", [(6, 16), (6, 5, 16)])
@pytest.mark.parametrize("strategy", ["gather", "grouped"])
def test_layer_mixed_forward_matches_per_row_dense(method, shape, strategy, monkeypatch):
    monkeypatch.setattr(serving, "MIXED_STRATEGY", strategy)
    net = nn.Sequential(nn.Linear(16, 24))
    model = pa.attach(net, method, name="a", r=4).eval()
    model.add_adapter("b", method, seed=1, r=4)
    _perturb_all(model)
    layer = model.adapted_layers()["0"]
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    rows = ["b", "a", pa.BASE_NAME, "a", "zzz-not-on-this-layer", "b"]
    with torch.no_grad():
        out = type(layer.adapters["a"]).mixed_batch_forward(layer, x, rows, ["b", "a"])
        for i, n in enumerate(rows):
            if n in ("a", "b"):
                ref = layer.adapters[n].reference_forward(x[i : i + 1], layer.base)
            else:
                ref = layer.base(x[i : i + 1])
            torch.testing.assert_close(out[i : i + 1], ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("strategy", ["gather", "grouped"])
def test_mixed_batch_in_bf16_is_close_to_fp32(strategy, monkeypatch):
    monkeypatch.setattr(serving, "MIXED_STRATEGY", strategy)
    rows = ["a", "b", pa.BASE_NAME, "a"]
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        tm = tiny_model("llama")
        tm.model.to(dtype)
        model = pa.attach(tm.model, "lora", name="a", r=4)
        model.add_adapter("b", "lora", seed=1, r=4)
        _perturb_all(model, scale=0.05)
        with torch.no_grad():
            results.append(tm.output(model(**tm.make_inputs(4, 2), adapter_names=rows)))
    assert results[1].dtype == torch.bfloat16
    err = (results[1].float() - results[0]).abs().max() / results[0].abs().max()
    assert err < 0.05, err


def test_bank_pads_and_appends_zero_slot():
    a, b = torch.ones(2, 3), torch.full((4, 3), 2.0)
    out = bank([a, b])
    assert out.shape == (3, 4, 3)
    assert torch.equal(out[0, :2], a) and out[0, 2:].abs().sum() == 0
    assert torch.equal(out[1], b) and out[2].abs().sum() == 0
    idx = row_index(["y", "x", "__base__", "q"], ["x", "y"], "cpu")
    assert idx.tolist() == [1, 0, 2, 2]
    with pytest.raises(ValueError, match="at least one"):
        bank([])


def test_groups_layout_pads_each_adapter_group_and_restores_row_order(monkeypatch):
    layout = groups(["b", "x", "a", "b", "__base__", "a", "b"], ["a", "b"])
    assert layout.slots == [0, 1, 2] and layout.size == 3  # a, b, then the zero slot (base and unknown rows)
    assert layout.order == [2, 5, 2, 0, 3, 6, 1, 4, 1]  # groups padded with their own first row
    assert [layout.order[p] for p in layout.pos] == list(range(7))  # every row finds itself again
    same = groups(["a", "a", "b", "b"], ["a", "b"])
    assert same.order is None and same.pos is None and same.size == 2
    assert serving.strategy(layout, 7) == "grouped"  # 9 grouped rows for 7: within the padding budget
    skewed = groups(["a"] * 6 + ["b", "c", "d"], ["a", "b", "c", "d"])
    assert serving.strategy(skewed, 9) == "gather"  # 4 groups × 6 rows = 24 for a batch of 9
    assert serving.single_adapter(["a", "a"], ["a"]) == "a" and serving.single_adapter(["a", "b"], ["a", "b"]) is None
    monkeypatch.setattr(serving, "MIXED_STRATEGY", "fast")
    with pytest.raises(ValueError, match="MIXED_STRATEGY"):
        serving.strategy(layout, 7)


@pytest.mark.parametrize("strategy", ["gather", "grouped", "auto"])
def test_unbalanced_batch_rows_are_exact(strategy, monkeypatch):
    monkeypatch.setattr(serving, "MIXED_STRATEGY", strategy)
    net = nn.Sequential(nn.Linear(16, 24))
    model = pa.attach(net, "lora", name="a", r=4).eval()
    for n in "bcd":
        model.add_adapter(n, "lora", seed=ord(n), r=2 if n == "c" else 4)
    _perturb_all(model)
    layer = model.adapted_layers()["0"]
    rows = ["a"] * 6 + ["b", pa.BASE_NAME, "c", "d"]
    x = torch.randn(len(rows), 3, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = model(x, adapter_names=rows)
        for i, n in enumerate(rows):
            ref = layer.base(x[i]) if n == pa.BASE_NAME else layer.adapters[n].reference_forward(x[i], layer.base)
            torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("strategy", ["gather", "grouped"])
def test_inference_bank_cache_follows_every_change_to_the_adapters(strategy, monkeypatch):
    """The stacked adapters are reused between inference calls, never stale: an in-place update, a
    replaced tensor, a new adapter and a training-mode call (gradients) each show in the next output."""
    monkeypatch.setattr(serving, "MIXED_STRATEGY", strategy)
    builds = []
    original = serving.bank
    monkeypatch.setattr(serving, "bank", lambda *a, **k: builds.append(1) or original(*a, **k))
    net = nn.Sequential(nn.Linear(16, 24))
    model = pa.attach(net, "lora", name="a", r=4).eval()
    model.add_adapter("b", "lora", seed=1, r=4)
    _perturb_all(model)
    layer = model.adapted_layers()["0"]
    rows = ["a", "b", pa.BASE_NAME, "b"]
    x = torch.randn(len(rows), 3, 16, generator=torch.Generator().manual_seed(3))

    def check():
        with torch.no_grad():
            out = model(x, adapter_names=rows)
            for i, n in enumerate(rows):
                ref = layer.base(x[i]) if n == pa.BASE_NAME else layer.adapters[n].reference_forward(x[i], layer.base)
                torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=1e-4)

    check()
    built = len(builds)
    check()
    assert len(builds) == built, "a second call with unchanged adapters rebuilt the banks"
    with torch.no_grad():
        layer.adapters["b"].lora_B.add_(0.5)  # in place: the version counter moves
    check()
    layer.adapters["a"].lora_A.data = torch.randn_like(layer.adapters["a"].lora_A)  # replaced storage
    check()
    model.add_adapter("c", "lora", seed=2, r=4)
    _perturb_all(model, seed=5)
    rows[2] = "c"
    check()
    first = len(builds)
    out = model(x, adapter_names=rows)  # gradients on: the bank is part of the graph, built fresh
    assert len(builds) > first
    out.sum().backward()
    assert layer.adapters["b"].lora_B.grad is not None and layer.adapters["b"].lora_B.grad.abs().sum() > 0


def test_add_lowrank_equals_explicit_sum():
    g = torch.Generator().manual_seed(0)
    y, h, B = torch.randn(2, 3, 7, generator=g), torch.randn(2, 3, 4, generator=g), torch.randn(7, 4, generator=g)
    torch.testing.assert_close(add_lowrank(y, h, B), y + h @ B.t())
    expected = y + h @ B.t()
    with torch.no_grad():  # inference with reuse_y: the update lands in y itself, same numbers
        out = add_lowrank(y, h, B, reuse_y=True)
    torch.testing.assert_close(out, expected)
    assert out.data_ptr() == y.data_ptr()
    leaf = torch.randn(2, 3, 7, generator=g)
    y2 = leaf.clone().requires_grad_()
    out = add_lowrank(y2, h, B, reuse_y=True)  # with autograd: never in place
    assert out.data_ptr() != y2.data_ptr()
    torch.testing.assert_close(y2.detach(), leaf)


@pytest.mark.parametrize("method", ["lora", "vera"])
def test_training_step_never_materialises_delta_weight(method, monkeypatch):
    cls = pa.get_method(method)

    def forbidden(self, weight):
        raise AssertionError("the training forward built a dense ΔW")

    monkeypatch.setattr(cls, "delta_weight", forbidden)
    tm = tiny_model("bert")
    model = pa.attach(tm.model, method, r=4)
    model.train()
    out = tm.output(model(**tm.make_inputs(2, 0)))
    out.square().mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.adapter_parameters().values())


@pytest.mark.parametrize("method", ["lora", "vera"])
def test_adapted_layer_compiles_without_graph_breaks(method):
    net = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8))
    model = pa.attach(net, method, r=4)
    _perturb_all(model)
    x = torch.randn(3, 5, 16)
    explained = dynamo.explain(model)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    y = compiled(x)
    torch.testing.assert_close(y, model(x))
    y.square().sum().backward()
    grads = [p.grad for p in model.adapter_parameters().values()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    dynamo.reset()


@pytest.mark.parametrize("method", ["lora", "vera"])
def test_autocast_runs_adapter_in_low_precision_with_fp32_grads(method):
    net = nn.Sequential(nn.Linear(16, 32))
    model = pa.attach(net, method, r=4)
    _perturb_all(model, scale=0.1)
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    bf16_autocast_output(model, x).float().square().sum().backward()
    for p in model.adapter_parameters().values():
        assert p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32


@pytest.mark.parametrize("r", [8, 96])  # below and above FOLD_MAX_RANK: the two training paths
def test_vera_training_paths_give_the_merged_gradients(r):
    from peftatlas.methods.vera import FOLD_MAX_RANK

    assert 8 <= FOLD_MAX_RANK < 96  # the two ranks straddle the switch
    torch.manual_seed(0)
    model = pa.attach(nn.Sequential(nn.Linear(40, 24)), "vera", targets=["0"], head=None, r=r)
    layer = model.adapted_layers()["0"]
    adapter = layer.adapters["default"]
    with torch.no_grad():
        adapter.vera_b.normal_()
        adapter.vera_d.normal_()
    x = torch.randn(7, 40)
    fast = adapter(x, layer.base)
    fast.pow(2).sum().backward()
    got = (adapter.vera_b.grad.clone(), adapter.vera_d.grad.clone())
    adapter.zero_grad()
    W = layer.base.weight.detach()
    merged = torch.nn.functional.linear(x, W + adapter.delta_weight(W), layer.base.bias.detach())
    merged.pow(2).sum().backward()
    torch.testing.assert_close(fast.detach(), merged.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[0], adapter.vera_b.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[1], adapter.vera_d.grad, atol=1e-4, rtol=1e-4)
