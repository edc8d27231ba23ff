"""VeRA's dense path (``ΔW`` built once per call when r is wide) against its per-token path and a
float64 dense reference, on every layer type VeRA adapts, in training and inference, fp32 and bf16.

Each case forces the path by replacing the cost rule :func:`peftatlas.methods.vera.dense_is_cheaper`
(and, for ``dense_additive``, the on-the-fly merge test), so both paths run on the same adapter.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

import peftatlas as pa
from peftatlas.methods import vera as vera_mod
from peftatlas.methods.vera import VeRA, dense_is_cheaper
from peftatlas.testing import bf16_autocast_output

R = 64  # wider than every layer below, as VeRA's shared r is in the arena

KINDS = ("linear", "gpt2_conv1d", "conv2d", "embedding")
PATHS = ("per_token", "dense", "dense_additive")


def _module(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "linear":
        return nn.Linear(40, 24)
    if kind == "gpt2_conv1d":
        m = Conv1D(24, 40)  # nf = out, nx = in; weight (in, out)
        nn.init.normal_(m.weight, std=0.1)
        nn.init.normal_(m.bias, std=0.1)
        return m
    if kind == "conv2d":
        return nn.Conv2d(4, 8, 3, padding=1)
    return nn.Embedding(50, 16)


def _input(kind: str, dtype: torch.dtype) -> Tensor:
    g = torch.Generator().manual_seed(1)
    if kind == "embedding":
        return torch.randint(0, 50, (3, 11), generator=g)
    shape = (2, 4, 6, 5) if kind == "conv2d" else (3, 11, 40)
    return torch.randn(shape, generator=g).to(dtype)


def _attach(kind: str, dtype: torch.dtype, **cfg):
    model = pa.attach(nn.Sequential(_module(kind)), "vera", targets=["0"], head=None, r=R, **cfg)
    adapter = model.adapted_layers()["0"].adapters["default"]
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        adapter.vera_b.copy_(torch.randn(adapter.vera_b.shape, generator=g))
        adapter.vera_d.copy_(torch.randn(adapter.vera_d.shape, generator=g))
    model.to(dtype)
    return model, adapter


def _force(monkeypatch, path: str) -> dict[str, int]:
    """Make the cost rule pick ``path``; count the dense forwards that actually run."""
    monkeypatch.setattr(vera_mod, "dense_is_cheaper", lambda *a, **k: path != "per_token")
    if path == "dense_additive":
        monkeypatch.setattr(VeRA, "_merges_on_the_fly", lambda self, base_fn: False)
    return _count_dense_forwards(monkeypatch)


def _count_dense_forwards(monkeypatch) -> dict[str, int]:
    """Wrap ``VeRA._dense_forward`` to count its calls (the count is read from the returned dict)."""
    calls = {"dense": 0}
    original = VeRA._dense_forward

    def spy(self, x, base_fn, merged):
        calls["dense"] += 1
        return original(self, x, base_fn, merged)

    monkeypatch.setattr(VeRA, "_dense_forward", spy)
    return calls


def _reference(kind: str, base: nn.Module, x: Tensor, b: Tensor, d: Tensor, A: Tensor, B: Tensor) -> Tensor:
    """``(W0 + diag(b) B diag(d) A)`` applied the layer's own way, in float64."""
    delta = (b[:, None] * B.double()) @ (d[:, None] * A.double())  # d_out × d_in
    x64 = x if kind == "embedding" else x.double()
    w = base.weight.detach().double()
    bias = None if getattr(base, "bias", None) is None else base.bias.detach().double()
    if kind == "linear":
        return F.linear(x64, w + delta, bias)
    if kind == "gpt2_conv1d":
        return F.linear(x64, w.t() + delta, bias)
    if kind == "conv2d":
        return F.conv2d(x64, (w.reshape(w.shape[0], -1) + delta).reshape(w.shape), bias, padding=1)
    return F.embedding(x64, w + delta.t())


def _run(model, adapter, kind: str, x: Tensor, train: bool) -> dict[str, Tensor]:
    """Output, and in training the gradients of a fixed random projection of it."""
    adapter.zero_grad(set_to_none=True)
    if not train:
        model.eval()
        with torch.no_grad():
            return {"y": model(x).float()}
    model.train()
    x = x.clone().requires_grad_(x.is_floating_point())
    y = model(x)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).to(y.dtype)
    (y * w).sum().backward()
    out = {"y": y.detach().float(), "b": adapter.vera_b.grad.float(), "d": adapter.vera_d.grad.float()}
    if x.is_floating_point():
        out["x"] = x.grad.float()
    return out


def _run_reference(model, adapter, kind: str, x: Tensor, train: bool) -> dict[str, Tensor]:
    base = model.adapted_layers()["0"].base
    A, B = (t.detach() for t in adapter._bases())
    b = adapter.vera_b.detach().double().requires_grad_(train)
    d = adapter.vera_d.detach().double().requires_grad_(train)
    x = x.clone() if kind == "embedding" else x.double().requires_grad_(train)
    with torch.set_grad_enabled(train):
        y = _reference(kind, base, x, b, d, A, B)
    if not train:
        return {"y": y}
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).double()
    (y * w).sum().backward()
    out = {"y": y.detach(), "b": b.grad, "d": d.grad}
    if kind != "embedding":
        out["x"] = x.grad
    return out


def _close(got: dict[str, Tensor], want: dict[str, Tensor], rtol: float) -> None:
    assert got.keys() == want.keys()
    for k in want:
        g, w = got[k].double(), want[k].double()
        scale = w.abs().max().item()
        torch.testing.assert_close(g, w, rtol=rtol, atol=rtol * scale, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", KINDS)
def test_dense_and_per_token_paths_agree_with_the_dense_reference(kind, train, dtype, monkeypatch):
    model, adapter = _attach(kind, dtype)
    x = _input(kind, dtype)
    rtol = 1e-5 if dtype == torch.float32 else 4e-2
    want = _run_reference(model, adapter, kind, x, train)
    results = {}
    for path in PATHS:
        with monkeypatch.context() as mp:
            calls = _force(mp, path)
            results[path] = _run(model, adapter, kind, x, train)
            assert calls["dense"] == (0 if path == "per_token" else 1), path
    for path in PATHS:
        _close(results[path], want, rtol)
    for path in PATHS[1:]:  # the two paths on the same adapter, not only each against the reference
        _close(results[path], results["per_token"], rtol)


def test_dense_path_with_dropout_matches_per_token_under_the_same_mask(monkeypatch):
    """Dropout acts on the adapter's input only, so the dense path may not merge into W0 then."""
    model, adapter = _attach("linear", torch.float32, dropout=0.3)
    x = _input("linear", torch.float32)
    merged_flags: list[bool] = []
    original = VeRA._merges_on_the_fly

    def recording(self, base_fn) -> bool:
        merged_flags.append(original(self, base_fn))
        return merged_flags[-1]

    results = {}
    for path in ("per_token", "dense"):
        with monkeypatch.context() as mp:
            _force(mp, path)
            mp.setattr(VeRA, "_merges_on_the_fly", recording)
            torch.manual_seed(5)
            results[path] = _run(model, adapter, "linear", x, train=True)
    assert merged_flags == [False, False]  # dropout is active: never merged into W0
    _close(results["dense"], results["per_token"], 1e-5)


def test_dense_path_under_autocast_runs_in_bf16_with_fp32_grads(monkeypatch):
    model, adapter = _attach("linear", torch.float32)
    x = _input("linear", torch.float32)
    for path in ("per_token", "dense"):
        with monkeypatch.context() as mp:
            _force(mp, path)
            adapter.zero_grad(set_to_none=True)
            bf16_autocast_output(model, x).float().square().sum().backward()
            assert adapter.vera_b.grad.dtype == torch.float32 and adapter.vera_d.grad.dtype == torch.float32


def test_cost_rule_picks_dense_for_wide_ranks_on_many_tokens_only():
    # DINOv2-S q projection in training: r = 649 > d = 384, ~4,000 tokens
    assert dense_is_cheaper(3940, 649, 384, 384, grad=True, merged=True)
    assert dense_is_cheaper(3940, 649, 384, 384, grad=True, merged=False)
    # one token per decode step: never build a d_out × d_in matrix for it
    assert not dense_is_cheaper(1, 649, 384, 384, grad=False, merged=True)
    # a narrow rank stays per token however many tokens
    assert not dense_is_cheaper(10**6, 16, 384, 384, grad=True, merged=True)
    # monotone in the token count: once dense, dense for more tokens
    flips = [dense_is_cheaper(t, 541, 576, 576, grad=True, merged=True) for t in range(1, 5000, 7)]
    assert flips == sorted(flips) and flips[-1] and not flips[0]


def test_wide_rank_takes_the_dense_path_without_forcing(monkeypatch):
    """The property suite's ``vera+wide`` case (r above the tiny models' width) reaches the dense path."""
    calls = _count_dense_forwards(monkeypatch)
    from peftatlas.testing import tiny_model

    tm = tiny_model("bert")
    model = pa.attach(tm.model, "vera", **VeRA.test_variants["wide"])
    tm.output(model(**tm.make_inputs(4, 0))).square().mean().backward()
    assert calls["dense"] > 0
