"""Issue 17 (6): disable() and "__base__" are the exact pretrained model, head trained alongside included."""

from __future__ import annotations

import torch

import peftatlas as pa
from peftatlas.testing import tiny_model


def _trained(tm, steps: int = 5):
    """A LoRA + classifier head trained a few steps with a large step size (the head moves)."""
    model = pa.attach(tm.model, "lora", targets=["query", "value"], r=2)
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    x = tm.make_inputs(4, 1)
    labels = torch.tensor([0, 1, 2, 1])
    for _ in range(steps):
        loss = model(**x, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def test_disable_and_base_rows_give_the_pretrained_model_after_head_training():
    tm = tiny_model("bert")
    x = tm.make_inputs(3, 0)
    with torch.no_grad():
        pretrained = tm.model(**x).logits.clone()
    model = _trained(tm)
    with torch.no_grad():
        adapted = model(**x).logits
        assert not torch.allclose(adapted, pretrained, atol=1e-3)  # the head really trained
        with model.disable():
            torch.testing.assert_close(model(**x).logits, pretrained, atol=0, rtol=0)
        mixed = model(**x, adapter_names=["__base__", "default", "__base__"]).logits
    # Mixed rows run the head on their own sub-batch (rows 0 and 2 here): MKL on an Intel CPU with AVX-512
    # rounds a 2-row GEMM differently from a 3-row one (9.3e-10 measured 2026-12-04; exact on AMD AVX2), so
    # "__base__" rows equal the pretrained head to float32 rounding, far inside the trained head's distance.
    torch.testing.assert_close(mixed[0], pretrained[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(mixed[2], pretrained[2], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(mixed[1], adapted[1], atol=1e-5, rtol=1e-5)


def test_each_adapter_trains_its_own_head_copy_and_original_stays_frozen():
    tm = tiny_model("bert")
    model = pa.attach(tm.model, "lora", targets=["query"], r=2, name="a")
    model.add_adapter("b", "lora", targets=["query"], r=2)
    ha, hb = model.head_parameters("a"), model.head_parameters("b")
    assert set(ha) == set(hb) == {"classifier.weight", "classifier.bias"}
    assert all(p.requires_grad for p in [*ha.values(), *hb.values()])
    original = model.heads()["classifier"].base
    assert not any(p.requires_grad for p in original.parameters())
    with torch.no_grad():
        ha["classifier.bias"].add_(1.0)
    x = tm.make_inputs(2, 0)
    with torch.no_grad():
        ya = model(**x, adapter_names=["a", "a"]).logits
        yb = model(**x, adapter_names=["b", "b"]).logits
    torch.testing.assert_close(ya - yb, torch.ones_like(ya), atol=1e-5, rtol=0)


def test_unload_restores_original_head_and_merge_and_unload_keeps_trained_head():
    tm = tiny_model("bert")
    x = tm.make_inputs(3, 0)
    with torch.no_grad():
        pretrained = tm.model(**x).logits.clone()
    model = _trained(tm)
    with torch.no_grad():
        adapted = model(**x).logits.clone()
    merged = model.merge_and_unload()
    with torch.no_grad():
        torch.testing.assert_close(merged(**x).logits, adapted, atol=1e-5, rtol=1e-5)
    assert type(merged.classifier) is torch.nn.Linear

    tm2 = tiny_model("bert")
    plain = _trained(tm2).unload()
    assert type(plain.classifier) is torch.nn.Linear
    with torch.no_grad():
        torch.testing.assert_close(plain(**x).logits, pretrained, atol=0, rtol=0)


def test_saved_head_is_the_adapters_copy(tmp_path):
    tm = tiny_model("bert")
    x = tm.make_inputs(3, 0)
    model = _trained(tm)
    with torch.no_grad():
        adapted = model(**x).logits
    pa.save_adapter(model, tmp_path / "a")
    back = pa.load_adapter(tiny_model("bert").model, tmp_path / "a").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(**x).logits, adapted, atol=0, rtol=0)
