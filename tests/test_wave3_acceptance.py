"""Wave-3 acceptance: every activation / input-space / architectural method runs a training step and
saves/loads exactly on a config-built BERT and a Llama-style decoder, and carries its catalog fields."""

from __future__ import annotations

import importlib

import pytest
import torch

import peftatlas as pa
from peftatlas.testing import tiny_model

WAVE3 = ("ia3", "ln_tuning", "loreft", "prompt_tuning", "prefix_tuning", "trainable_tokens",
         "houlsby", "pfeiffer", "adapterdrop", "compacter", "poly", "molora")
INSERTIONS = {"weight", "activation", "input", "attention cache", "block output"}


@pytest.mark.parametrize("kind", ["bert", "llama"])
@pytest.mark.parametrize("method", WAVE3)
@pytest.mark.exactness
def test_train_step_and_exact_save_load(method, kind, tmp_path):
    cls = pa.get_method(method)
    assert kind not in cls.test_skip, f"{method} must apply to {kind}"
    tm = tiny_model(kind)
    model = pa.attach(tm.model, method, **cls.test_config)
    model.train()
    opt = torch.optim.Adam(model.adapter_parameters().values(), lr=1e-2)
    out = tm.output(model(**tm.make_inputs(2, 0)))
    out.float().pow(2).mean().backward()
    grads = [p.grad for p in model.adapter_parameters().values() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    opt.step()
    model.eval()
    with torch.no_grad():
        y = tm.output(model(**tm.make_inputs(2, 1)))
    pa.save_adapter(model, tmp_path / "a")
    fresh = tiny_model(kind)
    loaded = pa.load_adapter(fresh.model, tmp_path / "a")
    with torch.no_grad():
        torch.testing.assert_close(tm.output(loaded(**fresh.make_inputs(2, 1))), y, atol=0, rtol=0)


@pytest.mark.parametrize("method", WAVE3)
def test_catalog_ready_docstring_and_insertion_point(method):
    cls = pa.get_method(method)
    doc = (importlib.import_module(cls.__module__).__doc__ or "") + (cls.__doc__ or "")
    assert cls.insertion in INSERTIONS, f"{method}: insertion {cls.insertion!r}"
    assert "Hypothesis" in doc and "Pseudocode" in doc and "Insertion point" in doc, method
    if method != "trainable_tokens":  # an engineering method without a paper (HF PEFT's TrainableTokens)
        assert "arXiv:" in doc, method
    assert cls.formula and cls.family and cls.summary
