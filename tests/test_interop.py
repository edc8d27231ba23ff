"""PEFT-format interop: our exports load in HF PEFT with the same outputs, and the reverse."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

import peftatlas as pa
from peftatlas.interop import InteropError, converters, export_peft, import_peft
from peftatlas.testing import tiny_model

peft = pytest.importorskip("peft", reason="interop tests compare against HF PEFT")

CONVERTIBLE = sorted(converters())


def _perturbed(kind: str, method: str, **hp):
    tm = tiny_model(kind)
    base = copy.deepcopy(tm.model)
    model = pa.attach(tm.model, method, **hp)
    g = torch.Generator().manual_seed(5)
    for ln in sorted(model.adapted_layers()):
        model.adapted_layers()[ln].adapters["default"].perturb_(g, 0.1)
    for p in model.shared_parameters().values():
        with torch.no_grad():
            p.add_(torch.randn(p.shape, generator=g).to(p) * 0.1)
    with torch.no_grad():
        for p in model.head_parameters().values():
            p.add_(0.05)
    return tm, base, model


def _out(tm, model, **kw):
    with torch.no_grad():
        return tm.output(model(**tm.make_inputs(3, 2), **kw))


def _peft_load(base, path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return peft.PeftModel.from_pretrained(copy.deepcopy(base), str(path), **kw)


@pytest.mark.parametrize("method", CONVERTIBLE)
@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_export_loads_in_peft_and_reimports_exactly(method, kind, tmp_path):
    cls = pa.get_method(method)
    reason = cls.test_skip.get(kind)
    if reason:
        pytest.skip(reason)
    tm, base, model = _perturbed(kind, method, **{**cls.test_config, **converters()[method].peft_compatible})
    y = _out(tm, model)
    export_peft(model, tmp_path / "ours")
    cfg = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == converters()[method].peft_type
    assert sorted(cfg["target_modules"]) == sorted(model.specs["default"].targets)
    theirs = _peft_load(base, tmp_path / "ours")
    y_peft = _out(tm, theirs)
    assert not torch.allclose(y_peft, _out(tm, copy.deepcopy(base)), atol=1e-4), "the adapter had no effect"
    torch.testing.assert_close(y_peft, y, atol=max(cls.test_atol, 1e-5) * 10, rtol=1e-4)
    # PEFT writes it back in its own way; we read that and get the same function again
    theirs.save_pretrained(str(tmp_path / "peft"))
    back = import_peft(copy.deepcopy(base), tmp_path / "peft")
    torch.testing.assert_close(_out(tm, back), y, atol=max(cls.test_atol, 1e-5) * 10, rtol=1e-4)
    assert not any(p.requires_grad for p in back.parameters()), "an imported adapter is frozen by default"


def test_lora_from_peft_native_adapter(tmp_path):
    tm = tiny_model("llama")
    base = copy.deepcopy(tm.model)
    cfg = peft.LoraConfig(r=3, lora_alpha=5, use_rslora=True, target_modules=["q_proj", "down_proj"],
                          init_lora_weights=False)
    pm = peft.get_peft_model(copy.deepcopy(base), cfg)
    y = _out(tm, pm)
    pm.save_pretrained(str(tmp_path))
    ours = import_peft(copy.deepcopy(base), tmp_path, name="imported", trainable=True)
    torch.testing.assert_close(_out(tm, ours), y, atol=1e-6, rtol=1e-5)
    spec = ours.specs["imported"]
    assert spec.method == "lora" and spec.config.r == 3 and spec.config.alpha == 5 and spec.config.rslora
    assert len(spec.targets) == 4 and all(t.endswith(("q_proj", "down_proj")) for t in spec.targets)
    assert all(p.requires_grad for p in ours.adapter_parameters("imported").values())


@pytest.mark.parametrize("save_projection", [True, False])
def test_vera_from_peft_native_adapter_both_projection_settings(save_projection, tmp_path):
    tm = tiny_model("bert")
    base = copy.deepcopy(tm.model)
    cfg = peft.VeraConfig(r=8, target_modules=["query", "value", "intermediate.dense"], projection_prng_key=7,
                          save_projection=save_projection, d_initial=0.3)
    pm = peft.get_peft_model(copy.deepcopy(base), cfg)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "vera_lambda" in n:
                p.add_(torch.randn_like(p) * 0.2)
    y = _out(tm, pm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm.save_pretrained(str(tmp_path))
    keys = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert ("base_model.vera_A" in keys) == save_projection
    ours = import_peft(copy.deepcopy(base), tmp_path)
    torch.testing.assert_close(_out(tm, ours), y, atol=1e-6, rtol=1e-5)
    assert ours.specs["default"].config.projection_seed == 7
    assert ours.specs["default"].config.d_init == 0.3


def test_vera_export_without_projections_stores_only_vectors(tmp_path):
    tm, base, model = _perturbed("bert", "vera", r=8, projection_seed=3)
    export_peft(model, tmp_path, save_projection=False)
    keys = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert not any(k.startswith("base_model.vera_") for k in keys)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["save_projection"] is False
    torch.testing.assert_close(_out(tm, _peft_load(base, tmp_path)), _out(tm, model), atol=1e-6, rtol=1e-5)


def test_vera_import_refuses_foreign_projections(tmp_path):
    _tm, base, model = _perturbed("bert", "vera", r=8)
    export_peft(model, tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    tensors = load_file(str(path))
    tensors["base_model.vera_A"] = tensors["base_model.vera_A"] * 1.5
    save_file(tensors, str(path))
    plain = copy.deepcopy(base)
    with pytest.raises(InteropError, match="vera_A differs"):
        import_peft(plain, tmp_path)
    assert not any(isinstance(m, pa.AdaptedModule) for m in plain.modules()), "failed import changed the model"


@pytest.mark.parametrize(("field", "value", "match"), [
    ("lora_bias", True, "lora_bias"),
    ("layer_replication", [[0, 1]], "layer_replication"),
    ("init_lora_weights", "pissa", "rewrote the base weights"),
])
def test_lora_import_refuses_features_it_lacks(field, value, match, tmp_path):
    _tm, base, model = _perturbed("llama", "lora", r=2)
    export_peft(model, tmp_path)
    cfg_path = tmp_path / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg[field] = value
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(InteropError, match=match):
        import_peft(copy.deepcopy(base), tmp_path)


def test_bad_files_give_clear_errors(tmp_path):
    _tm, base, model = _perturbed("llama", "lora", r=2)
    with pytest.raises(InteropError, match="does not exist"):
        import_peft(copy.deepcopy(base), tmp_path / "nothing")
    export_peft(model, tmp_path / "a")
    cfg_path = tmp_path / "a" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "peft_type": "NOT_A_METHOD"}))
    with pytest.raises(InteropError, match="NOT_A_METHOD"):
        import_peft(copy.deepcopy(base), tmp_path / "a")
    cfg_path.write_text(json.dumps(cfg))
    (tmp_path / "a" / "adapter_model.safetensors").rename(tmp_path / "a" / "adapter_model.bin")
    with pytest.raises(InteropError, match="pickled"):
        import_peft(copy.deepcopy(base), tmp_path / "a")
    export_peft(model, tmp_path / "b")
    tensors = load_file(str(tmp_path / "b" / "adapter_model.safetensors"))
    first = next(k for k in tensors if k.endswith("lora_A.weight"))
    tensors[first] = torch.zeros(5, 5)
    save_file(tensors, str(tmp_path / "b" / "adapter_model.safetensors"))
    with pytest.raises(InteropError, match="shape"):
        import_peft(copy.deepcopy(base), tmp_path / "b")


def test_export_refuses_method_peft_lacks(tmp_path):
    tm = tiny_model("bert")
    model = pa.attach(tm.model, "bitfit")
    with pytest.raises(InteropError, match="no PEFT equivalent"):
        export_peft(model, tmp_path)


def test_head_travels_as_modules_to_save(tmp_path):
    _tm, base, model = _perturbed("bert", "lora", r=2)
    export_peft(model, tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["modules_to_save"] == ["classifier"]
    keys = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert "base_model.model.classifier.weight" in keys
    back = import_peft(copy.deepcopy(base), tmp_path)
    assert back.head_names == ["classifier"]
    head = "classifier.weight"
    torch.testing.assert_close(back.head_parameters()[head], model.head_parameters()[head])


# --- layer types (GPT-2 Conv1D, conv, embedding, lm_head) and per-layer patterns ------------------

def _lora_both_ways(kind: str, tmp_path, **lora_kwargs):
    """PEFT LoRA saved with PEFT's defaults → imported here → exported → loaded in PEFT: one function."""
    return _both_ways(kind, tmp_path, peft.LoraConfig(r=3, lora_alpha=5, init_lora_weights=False, **lora_kwargs))


def _both_ways(kind: str, tmp_path, cfg):
    """PEFT adapter ``cfg`` saved with PEFT's defaults → imported here → exported → loaded in PEFT: one function."""
    tm = tiny_model(kind)
    base = copy.deepcopy(tm.model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(copy.deepcopy(base), cfg)
        y = _out(tm, pm)
        pm.save_pretrained(str(tmp_path / "peft"))
    assert not torch.allclose(y, _out(tm, copy.deepcopy(base)), atol=1e-4), "the PEFT adapter had no effect"
    ours = import_peft(copy.deepcopy(base), tmp_path / "peft")
    torch.testing.assert_close(_out(tm, ours), y, atol=1e-5, rtol=1e-4)
    export_peft(ours, tmp_path / "ours")
    theirs = _peft_load(base, tmp_path / "ours")
    torch.testing.assert_close(_out(tm, theirs), y, atol=1e-5, rtol=1e-4)
    saved = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    written = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    return ours, saved, written


def test_gpt2_lora_fan_in_fan_out_both_ways(tmp_path):
    ours, saved, written = _lora_both_ways("gpt2", tmp_path, target_modules=["c_attn", "c_proj", "c_fc"])
    assert saved["fan_in_fan_out"] is True and written["fan_in_fan_out"] is True
    assert {type(layer.base).__name__ for layer in ours.adapted_layers().values()} == {"Conv1D"}


def test_embedding_and_lm_head_lora_with_peft_default_save_embedding_layers(tmp_path):
    _lora_both_ways("embedding", tmp_path, target_modules=["embed_tokens", "lm_head"])
    keys = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
    assert any(k.endswith("embed_tokens.base_layer.weight") for k in keys), "PEFT default saves the base copy"
    assert any(k.endswith("embed_tokens.lora_embedding_A") for k in keys)


def test_tied_gpt2_lm_head_lora_both_ways_and_merge_refused(tmp_path):
    ours, _, _ = _lora_both_ways("gpt2", tmp_path, target_modules=["lm_head"])
    with pytest.raises(pa.MergeError, match="tied to transformer.wte"):
        ours.merge()


def test_conv_lora_both_ways(tmp_path):
    ours, _, _ = _lora_both_ways("cnn", tmp_path, target_modules=["conv1", "conv2", "conv3"])
    assert {type(layer.base).__name__ for layer in ours.adapted_layers().values()} == {"Conv1d", "Conv2d"}


def test_rank_and_alpha_pattern_both_ways(tmp_path):
    ours, _, written = _lora_both_ways("llama", tmp_path, target_modules=["q_proj", "v_proj"],
                                       rank_pattern={"layers.1.self_attn.q_proj": 2}, alpha_pattern={"v_proj": 7})
    ranks = {n: layer.adapters["default"].lora_A.shape[0] for n, layer in ours.adapted_layers().items()}
    assert ranks["model.layers.1.self_attn.q_proj"] == 2 and ranks["model.layers.0.self_attn.q_proj"] == 3
    assert written["rank_pattern"] == {"layers.1.self_attn.q_proj": 2} and written["alpha_pattern"] == {"v_proj": 7}


def test_changed_base_copy_from_save_embedding_layers_is_refused(tmp_path):
    _lora_both_ways("embedding", tmp_path, target_modules=["embed_tokens"])
    path = tmp_path / "peft" / "adapter_model.safetensors"
    tensors = load_file(str(path))
    key = next(k for k in tensors if k.endswith("embed_tokens.base_layer.weight"))
    tensors[key] = tensors[key] + 1.0
    save_file(tensors, str(path))
    with pytest.raises(InteropError, match="differs from this model's") as info:
        import_peft(tiny_model("embedding").model, tmp_path / "peft")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("config", [
    lambda: peft.LoHaConfig(r=3, alpha=5, init_weights=False, target_modules=["conv1", "conv2", "conv3"]),
    lambda: peft.LoKrConfig(r=1, alpha=5, init_weights=False, decompose_factor=2,
                            target_modules=["conv1", "conv2", "conv3"]),  # w2 factored on every layer
    lambda: peft.LoKrConfig(init_weights=False, target_modules=["conv1"]),  # PEFT defaults: dense w2 (4, 2, 3, 3)
    lambda: peft.LoKrConfig(r=3, init_weights=False, target_modules=["conv2"]),  # dense w2 needs rank 4 here
], ids=["loha", "lokr-factored", "lokr-defaults", "lokr-rank-raised"])
def test_conv_loha_lokr_both_ways(config, tmp_path):
    ours, saved, _ = _both_ways("cnn", tmp_path, config())
    assert {type(layer.base).__name__ for layer in ours.adapted_layers().values()} <= {"Conv1d", "Conv2d"}
    assert ours.specs["default"].method == saved["peft_type"].lower()


def test_conv_lokr_without_a_common_factor_is_refused(tmp_path):
    tm = tiny_model("cnn")
    cfg = peft.LoKrConfig(init_weights=False, target_modules=["conv1", "conv2"])  # blocks 2×2 and 4×2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft.get_peft_model(copy.deepcopy(tm.model), cfg).save_pretrained(str(tmp_path))
    with pytest.raises(InteropError, match="no single factor") as info:
        import_peft(tiny_model("cnn").model, tmp_path)
    assert "\n" not in str(info.value)


def test_effective_conv2d_loha_is_refused_by_its_config_field(tmp_path):
    tm = tiny_model("cnn")
    cfg = peft.LoHaConfig(use_effective_conv2d=True, target_modules=["conv1"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft.get_peft_model(copy.deepcopy(tm.model), cfg).save_pretrained(str(tmp_path))
    with pytest.raises(InteropError, match="use_effective_conv2d=True"):
        import_peft(tiny_model("cnn").model, tmp_path)


def test_conv1d_lokr_with_dense_block_is_refused_both_ways(tmp_path):
    tm = tiny_model("cnn")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(copy.deepcopy(tm.model), peft.LoKrConfig(init_weights=False, target_modules=["conv3"]))
        pm.save_pretrained(str(tmp_path / "peft"))
    with pytest.raises(InteropError, match="on a Conv1d"):
        import_peft(tiny_model("cnn").model, tmp_path / "peft")
    model = pa.attach(tiny_model("cnn").model, "lokr", targets=["conv3"], r=4, alpha=4.0)
    with pytest.raises(InteropError, match="r < 2 keeps it factored"):
        export_peft(model, tmp_path / "ours")


def test_loha_export_refuses_gpt2_conv1d_peft_lacks(tmp_path):
    _tm, _base, model = _perturbed("gpt2", "loha", r=2)
    with pytest.raises(InteropError, match="Conv1D layer"):
        export_peft(model, tmp_path)


# --- bias="lora_only" / "all": PEFT trains and saves base biases; LoRA's bias=True carries them ------

_NOT_ADAPTED_BIAS = "attention.output.dense.bias"  # a bias only bias="all" trains (no LoRA on that layer)


def _peft_lora_with_bias(tmp_path, bias: str, trained: bool):
    tm = tiny_model("bert")
    base = copy.deepcopy(tm.model)
    cfg = peft.LoraConfig(r=2, lora_alpha=3, init_lora_weights=False, bias=bias, modules_to_save=["classifier"],
                          target_modules=["query", "value"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(copy.deepcopy(base), cfg)
        if trained:
            with torch.no_grad():
                for n, p in pm.named_parameters():
                    if n.endswith("value.base_layer.bias") or (bias == "all" and n.endswith(_NOT_ADAPTED_BIAS)):
                        p.add_(torch.linspace(-0.2, 0.3, p.numel()))
        pm.save_pretrained(str(tmp_path))
    return tm, base, pm


@pytest.mark.parametrize("bias", ["lora_only", "all"])
def test_lora_bias_files_with_untrained_biases_import_exactly_both_ways(bias, tmp_path):
    ours, saved, written = _both_ways("bert", tmp_path, peft.LoraConfig(
        r=2, lora_alpha=3, init_lora_weights=False, bias=bias, modules_to_save=["classifier"],
        target_modules=["query", "value"]))
    keys = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
    assert saved["bias"] == bias and any(k.endswith("value.base_layer.bias") for k in keys), "PEFT saved the biases"
    assert written["bias"] == "lora_only" and ours.specs["default"].config.bias, "the biases train, as in PEFT"


@pytest.mark.parametrize("bias", ["lora_only", "all"])
def test_lora_bias_files_with_trained_biases_import_exactly_both_ways(bias, tmp_path):
    tm, base, pm = _peft_lora_with_bias(tmp_path / "peft", bias, trained=True)
    y = _out(tm, pm)
    y_base = _out(tm, copy.deepcopy(base))
    ours = import_peft(copy.deepcopy(base), tmp_path / "peft")
    torch.testing.assert_close(_out(tm, ours), y, atol=1e-5, rtol=1e-4)
    deltas = {n: layer.adapters["default"].bias_delta for n, layer in ours.adapted_layers().items()}
    assert all(d is not None for d in deltas.values()) and any(d.abs().max() > 0.1 for d in deltas.values())
    if bias == "all":  # the non-adapted module with a trained bias is a trained copy beside the original
        assert any(h.endswith(_NOT_ADAPTED_BIAS.rsplit(".", 1)[0]) for h in ours.head_names), ours.head_names
    with ours.disable():
        torch.testing.assert_close(_out(tm, ours), y_base, atol=0, rtol=0)  # disabled: the pretrained model
    export_peft(ours, tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "adapter_config.json").read_text())["bias"] == "lora_only"
    torch.testing.assert_close(_out(tm, _peft_load(base, tmp_path / "ours")), y, atol=1e-5, rtol=1e-4)
    merged = ours.merge_and_unload()
    torch.testing.assert_close(_out(tm, merged), y, atol=1e-5, rtol=1e-4)


def test_our_lora_bias_exports_to_peft_exactly(tmp_path):
    tm, base, model = _perturbed("bert", "lora", targets=["query", "value"], r=2, alpha=3.0, bias=True)
    assert all(layer.adapters["default"].bias_delta.abs().max() > 0 for layer in model.adapted_layers().values())
    export_peft(model, tmp_path)
    torch.testing.assert_close(_out(tm, _peft_load(base, tmp_path)), _out(tm, model), atol=1e-5, rtol=1e-4)
    back = import_peft(copy.deepcopy(base), tmp_path)
    torch.testing.assert_close(_out(tm, back), _out(tm, model), atol=1e-6, rtol=1e-5)


def test_bias_all_into_an_adapted_model_is_refused_in_one_line(tmp_path):
    _tm, base, _pm = _peft_lora_with_bias(tmp_path, "all", trained=True)
    adapted = pa.attach(copy.deepcopy(base), "lora", targets=["key"], r=2)
    with pytest.raises(InteropError, match="not an adapted layer") as info:
        import_peft(adapted, tmp_path, name="other")
    assert "\n" not in str(info.value) and list(adapted.specs) == ["default"]


def test_trained_biases_of_a_method_without_a_bias_delta_are_refused_in_one_line(tmp_path):
    tm = tiny_model("bert")
    base = copy.deepcopy(tm.model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(copy.deepcopy(base), peft.VeraConfig(r=4, bias="vera_only",
                                                                       target_modules=["query", "value"]))
        with torch.no_grad():
            next(p for n, p in pm.named_parameters() if n.endswith("value.base_layer.bias")).add_(0.1)
        pm.save_pretrained(str(tmp_path))
    plain = copy.deepcopy(base)
    with pytest.raises(InteropError, match="PEFT trained base biases \\(bias='vera_only'\\)") as info:
        import_peft(plain, tmp_path)
    assert "value.base_layer.bias" in str(info.value) and "\n" not in str(info.value)
    assert not any(isinstance(m, pa.AdaptedModule) for m in plain.modules()), "failed import changed the model"
