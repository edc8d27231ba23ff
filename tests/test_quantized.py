"""QLoRA-style bases: weight-only int8 quantized Linear layers (torchao) under LoRA, DoRA and VeRA.

The adapters train in full precision on top of the quantized layer; their output equals the same
adapter on the dequantized model; merging into the quantized weight is refused in one line.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import peftatlas as pa
from peftatlas.testing import tiny_model

torchao_quantization = pytest.importorskip("torchao.quantization", reason="quantized bases need torchao")

TARGETS = ["q_proj", "v_proj", "down_proj"]


def _quantized_llama():
    tm = tiny_model("llama")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torchao_quantization.quantize_(tm.model, torchao_quantization.Int8WeightOnlyConfig())
    return tm


def _dequantized_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The same model with every quantized Linear weight replaced by its dequantized float tensor."""
    from peftatlas.core.layer_types import dense, is_quantized

    plain = tiny_model("llama").model
    for mod, qmod in zip(plain.modules(), model.modules()):
        if isinstance(mod, torch.nn.Linear) and is_quantized(qmod.weight):
            mod.weight = torch.nn.Parameter(dense(qmod.weight).detach().clone(), requires_grad=False)
    return plain


@pytest.mark.parametrize("method", ["lora", "dora", "vera"])
def test_adapter_trains_on_int8_base_and_matches_dequantized_reference(method):
    tm = _quantized_llama()
    x = tm.make_inputs(3, 1)
    with torch.no_grad():
        y_base = tm.output(tm.model(**x))
    reference = _dequantized_copy(tm.model)
    cls = pa.get_method(method)
    model = pa.attach(tm.model, method, targets=TARGETS, **cls.test_config)
    with torch.no_grad():
        torch.testing.assert_close(tm.output(model(**x)), y_base, atol=1e-6, rtol=0)  # no-op at init
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trainable, lr=1e-2)
    tm.output(model(**x)).pow(2).mean().backward()
    adapter_ids = {id(p) for p in model.adapter_parameters().values()}
    assert all(id(p) in adapter_ids for p in trainable)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    opt.step()
    model.eval()
    with torch.no_grad():
        y = tm.output(model(**x))
    assert not torch.allclose(y, y_base, atol=1e-4), "training did not change the quantized model's output"
    ref = pa.attach(reference, method, targets=TARGETS, **cls.test_config)
    ref_params = ref.adapter_parameters()
    with torch.no_grad():
        for k, p in model.adapter_parameters().items():
            ref_params[k].copy_(p)
        torch.testing.assert_close(y, tm.output(ref(**x)), atol=1e-4, rtol=1e-4)


def test_merge_into_quantized_base_is_refused_in_one_line():
    tm = _quantized_llama()
    model = pa.attach(tm.model, "lora", targets=TARGETS, r=4)
    before = copy.deepcopy(model.adapter_parameters())
    with pytest.raises(pa.MergeError, match="quantized") as info:
        model.merge()
    assert "\n" not in str(info.value)
    assert not any(layer.merged for layer in model.adapted_layers().values())
    assert all(torch.equal(v, model.adapter_parameters()[k]) for k, v in before.items())
