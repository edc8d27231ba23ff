"""Issue 17 (12): the stacked-adapter caches of mixed batches are bounded, order-free and invalidated."""

from __future__ import annotations

import itertools

import pytest
import torch

import peftatlas as pa
from peftatlas import serving
from peftatlas.testing import tiny_model


def _served(method: str, n: int = 4):
    tm = tiny_model("bert")
    model = pa.attach(tm.model, method, targets=["query"], r=4, name="a0")
    for i in range(1, n):
        model.add_adapter(f"a{i}", method, targets=["query"], r=4, seed=i)
    g = torch.Generator().manual_seed(0)
    for layer in model.adapted_layers().values():
        for a in layer.adapters.values():
            a.perturb_(g)
    return tm, model.eval()


def _banks(model) -> int:
    return max(len(serving.cached_tags(layer)) for layer in model.adapted_layers().values())


@pytest.mark.parametrize("method", ["lora", "vera"])
def test_row_order_does_not_multiply_the_cache(method):
    tm, model = _served(method)
    x = tm.make_inputs(4, 0)
    with torch.no_grad():
        model(**x, adapter_names=["a0", "a1", "a2", "a3"])
        one_order = _banks(model)
        for order in itertools.permutations(["a0", "a1", "a2", "a3"]):
            model(**x, adapter_names=list(order))
    assert one_order >= 1 and _banks(model) == one_order


def test_cache_stays_bounded_over_many_adapter_sets():
    tm, model = _served("lora", n=6)
    x = tm.make_inputs(3, 0)
    with torch.no_grad():
        for subset in itertools.combinations([f"a{i}" for i in range(6)], 3):
            model(**x, adapter_names=list(subset))
    assert _banks(model) <= serving.BANK_CACHE_SIZE


def test_deleting_or_replacing_an_adapter_drops_its_banks():
    tm, model = _served("lora")
    x = tm.make_inputs(4, 0)
    names = ["a0", "a1", "a2", "a3"]
    with torch.no_grad():
        model(**x, adapter_names=names)
    layers = list(model.adapted_layers().values())
    assert all(any(serving._mentions(t, "a1") for t in serving.cached_tags(layer)) for layer in layers)
    model.delete_adapter("a1")
    assert not any(serving._mentions(t, "a1") for layer in layers for t in serving.cached_tags(layer))
    model.add_adapter("a1", "lora", targets=["query"], r=4, seed=9)  # a new adapter under the old name
    with torch.no_grad():
        for layer in model.adapted_layers().values():
            layer.adapters["a1"].lora_B.normal_()
        mixed = model(**x, adapter_names=names).logits
        model.set_active("a1")
        alone = model(**x).logits
    torch.testing.assert_close(mixed[1], alone[1], atol=1e-5, rtol=1e-5)
