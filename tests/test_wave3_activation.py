"""Activation-space methods: (IA)³, LN tuning, LoReFT — sites, counts and the behaviour of the
block-level intervention (dense oracle, positions under padding, cached generation)."""

from __future__ import annotations

import copy

import pytest
import torch

import peftatlas as pa
from peftatlas.core.method import MethodError
from peftatlas.methods._model_level import cache_keyword
from peftatlas.methods.loreft import orthonormal_rows
from peftatlas.testing import tiny_model


def _perturb(model, seed: int = 3, scale: float = 0.2) -> None:
    g = torch.Generator().manual_seed(seed)
    for ln in sorted(model.adapted_layers()):
        for adapter in model.adapted_layers()[ln].adapters.values():
            adapter.perturb_(g, scale)


# --- (IA)³ -------------------------------------------------------------------------------------------


def test_ia3_sites_and_paper_parameter_count_encoder_and_decoder():
    bert = pa.attach(tiny_model("bert").model, "ia3")
    sides = {n.split("layer.0.")[-1]: l.adapters["default"].input_side
             for n, l in bert.adapted_layers().items() if ".layer.0." in n}
    assert sides == {"attention.self.key": False, "attention.self.value": False, "output.dense": True}
    # L·(d_k + d_v + d_ff) for an encoder (Liu et al. §3.3): 2·(32 + 32 + 64)
    assert bert.count_parameters().adapter == 2 * (32 + 32 + 64)
    llama = pa.attach(tiny_model("llama").model, "ia3")
    assert llama.count_parameters().adapter == 2 * (16 + 16 + 64)  # GQA: k, v are 2 heads × 8


def test_ia3_merge_scales_rows_and_bias_or_columns():
    tm = tiny_model("bert")
    model = pa.attach(tm.model, "ia3")
    _perturb(model)
    key = model.adapted_layers()["bert.encoder.layer.0.attention.self.key"]
    ffn = model.adapted_layers()["bert.encoder.layer.0.output.dense"]
    w_k, b_k, w_f = key.base.weight.clone(), key.base.bias.clone(), ffn.base.weight.clone()
    lk, lf = key.adapters["default"].ia3_l.detach(), ffn.adapters["default"].ia3_l.detach()
    x = tm.make_inputs(2, 0)
    with torch.no_grad():
        y = model(**x).logits
        model.merge()
        torch.testing.assert_close(model(**x).logits, y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(key.base.weight, lk[:, None] * w_k)
    torch.testing.assert_close(key.base.bias, lk * b_k)
    torch.testing.assert_close(ffn.base.weight, w_f * lf[None, :])


def test_ia3_forced_side_and_bad_side():
    m = pa.attach(tiny_model("bert").model, "ia3", targets=["query"], side="input")
    assert all(l.adapters["default"].input_side for l in m.adapted_layers().values())
    with pytest.raises(MethodError, match="side must be one of"):
        pa.attach(tiny_model("bert").model, "ia3", side="both")
    with pytest.raises(MethodError, match="per-layer config"):
        pa.get_method("ia3").param_count(torch.nn.Linear(4, 4), pa.get_method("ia3").Config())


# --- LN tuning ---------------------------------------------------------------------------------------


def test_ln_tuning_counts_layernorm_and_rmsnorm():
    bert = pa.attach(tiny_model("bert").model, "ln_tuning")
    assert len(bert.adapted_layers()) == 1 + 2 * 2 and bert.count_parameters().adapter == 5 * 2 * 32
    llama = pa.attach(tiny_model("llama").model, "ln_tuning")
    assert len(llama.adapted_layers()) == 2 * 2 + 1 and llama.count_parameters().adapter == 5 * 32  # RMSNorm: γ only


def test_ln_tuning_merge_moves_gamma():
    tm = tiny_model("llama")
    model = pa.attach(tm.model, "ln_tuning")
    _perturb(model)
    layer = model.adapted_layers()["model.norm"]
    expected = layer.base.weight + layer.adapters["default"].deltas["weight"].detach()
    x = tm.make_inputs(2, 0)
    with torch.no_grad():
        y = model(**x).logits
        model.merge()
        torch.testing.assert_close(model(**x).logits, y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.base.weight, expected)


# --- LoReFT ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["bert", "llama", "vit"])
def test_loreft_edits_blocks_and_matches_dense_oracle(kind):
    tm = tiny_model(kind)
    model = pa.attach(tm.model, "loreft", r=4, first_n=2, last_n=1)
    assert sorted(model.adapted_layers()) == sorted(
        n for n, _ in tm.model.named_modules() if n.split(".")[-1].isdigit() and ".layer" in f".{n}")
    _perturb(model)
    layer = next(iter(model.adapted_layers().values()))
    adapter = layer.adapters["default"]
    h = torch.randn(3, 6, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fast = adapter(h, lambda x: x)
        ref = adapter.reference_forward(h, torch.nn.Identity())
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    changed = (fast - h).abs().amax(-1) > 0
    assert changed[:, [0, 1, 5]].all() and not changed[:, 2:5].any()  # first 2 and last 1 positions only
    R = orthonormal_rows(adapter.rotation.detach())
    torch.testing.assert_close(R @ R.t(), torch.eye(4), atol=1e-5, rtol=0)
    # the edit lives in the row space of R
    edit = (fast - h)[changed]
    torch.testing.assert_close(edit @ R.t() @ R, edit, atol=1e-5, rtol=1e-5)


def test_loreft_identity_init_is_noop_and_paper_init_is_not():
    tm = tiny_model("bert")
    x = tm.make_inputs(2, 0)
    with torch.no_grad():
        y0 = tm.model(**x).logits
        y_id = pa.attach(tiny_model("bert").model, "loreft", r=4)(**x).logits
        y_paper = pa.attach(tiny_model("bert").model, "loreft", r=4, identity_init=False)(**x).logits
    torch.testing.assert_close(y_id, y0, atol=1e-6, rtol=0)
    assert not torch.allclose(y_paper, y0)


def test_loreft_positions_follow_the_padding_mask():
    tm = tiny_model("bert")
    model = pa.attach(tm.model, "loreft", r=2, first_n=1, last_n=1, targets=r"bert\.encoder\.layer\.1")
    _perturb(model)
    block = model.adapted_layers()["bert.encoder.layer.1"]
    ids = torch.randint(3, 100, (2, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    outputs = []
    handle = block.register_forward_hook(lambda m, a, out: outputs.append(out))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
        with model.disable():
            model(input_ids=ids, attention_mask=mask)
    handle.remove()
    changed = (outputs[0] - outputs[1]).abs().amax(-1) > 0
    assert changed.tolist() == [[True, False, False, False, False, True], [True, False, True, False, False, False]]


@pytest.mark.exactness
def test_loreft_generation_edits_the_prefill_only():
    tm = tiny_model("llama")
    model = pa.attach(tm.model, "loreft", r=4, first_n=1, last_n=2)
    _perturb(model)
    ids = torch.randint(3, 100, (1, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        first = model(input_ids=ids, use_cache=True)
        nxt = first.logits[:, -1:].argmax(-1)
        key = cache_keyword()  # past_key_values, or cache from transformers 5.24
        cache_a = first[key]
        cache_b = copy.deepcopy(cache_a)
        step = model(input_ids=nxt, use_cache=True, **{key: cache_a}).logits
        with model.disable():
            step_base = model(input_ids=nxt, use_cache=True, **{key: cache_b}).logits
    torch.testing.assert_close(step, step_base, atol=0, rtol=0)  # cached one-token step: no edit
    out = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 8)


def test_loreft_param_count_and_errors():
    model = pa.attach(tiny_model("llama").model, "loreft", r=3)
    assert model.count_parameters().adapter == 2 * (2 * 3 * 32 + 3)
    with pytest.raises(MethodError, match="exceeds the hidden size"):
        pa.attach(tiny_model("llama").model, "loreft", r=64)
    with pytest.raises(MethodError, match="not both 0"):
        pa.attach(tiny_model("llama").model, "loreft", first_n=0, last_n=0)
