"""Issue 17 (2, 9): save_pretrained / from_pretrained / load_adapter as PEFT users expect."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertForSequenceClassification

import peftatlas as pa
from peftatlas.interop.peft_format import export_peft
from peftatlas.testing import tiny_model


def _adapted(tm, **kw):
    model = pa.attach(tm.model, "lora", targets=["query", "value"], r=2, **kw)
    g = torch.Generator().manual_seed(3)
    for layer in model.adapted_layers().values():
        for a in layer.adapters.values():
            a.perturb_(g)
    with torch.no_grad():
        for p in model.head_parameters().values():
            p.add_(0.05)
    return model.eval()


def test_save_pretrained_writes_the_adapter_and_from_pretrained_loads_base_plus_adapter(tmp_path):
    tm = tiny_model("bert")
    tm.model.save_pretrained(tmp_path / "base")  # the pretrained base, before wrapping
    x = tm.make_inputs(3, 0)
    model = _adapted(tm)
    with torch.no_grad():
        y = model(**x).logits
    model.save_pretrained(tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["adapter.json", "adapter.safetensors"]
    for loaded in (pa.from_pretrained(tmp_path / "base", tmp_path / "adapter"),
                   pa.AdaptedModel.from_pretrained(str(tmp_path / "base"), tmp_path / "adapter"),
                   pa.AdaptedModel.from_pretrained(tiny_model("bert").model, tmp_path / "adapter")):
        assert isinstance(loaded.model, BertForSequenceClassification)
        with torch.no_grad():
            torch.testing.assert_close(loaded.eval()(**x).logits, y, atol=0, rtol=0)


def test_save_pretrained_puts_further_adapters_in_subfolders(tmp_path):
    model = _adapted(tiny_model("bert"), name="a")
    model.add_adapter("b", "vera", targets=["query"], r=4)
    model.save_pretrained(tmp_path / "out")
    assert (tmp_path / "out" / "adapter.json").is_file() and (tmp_path / "out" / "b" / "adapter.json").is_file()
    back = pa.from_pretrained(tiny_model("bert").model, tmp_path / "out", name="a")
    back.load_adapter(tmp_path / "out" / "b", "b")
    assert sorted(back.specs) == ["a", "b"] and back.specs["b"].method == "vera"


def test_no_call_on_the_wrapper_writes_a_base_checkpoint_with_wrapped_names(tmp_path):
    tm = tiny_model("bert")
    x = tm.make_inputs(2, 0)
    model = _adapted(tm)
    with pytest.raises(ValueError, match="wrapped by peftatlas") as e:
        model.model.save_pretrained(tmp_path / "full")
    assert "\n" not in str(e.value) and not (tmp_path / "full").exists()
    with pytest.raises(ValueError, match="save_pretrained"):
        model.push_to_hub("me/adapter")
    model.save_pretrained(tmp_path / "a", state_dict=model.state_dict(), safe_serialization=True)  # Trainer-style
    assert not any("base" in k or "adapters." in k for k in load_file(tmp_path / "a" / "adapter.safetensors"))
    with torch.no_grad():
        y = model(**x).logits
    merged = model.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")  # a full checkpoint comes only from merge_and_unload()
    keys = load_file(tmp_path / "merged" / "model.safetensors")
    assert not any(".base." in k or ".adapters." in k for k in keys)
    with torch.no_grad():
        again = BertForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
        torch.testing.assert_close(again(**x).logits, y, atol=1e-5, rtol=1e-5)


# --- issue 17 (9): PEFT habits ------------------------------------------------------------------------


def test_load_adapter_imports_a_peft_folder(tmp_path):
    tm = tiny_model("bert")
    x = tm.make_inputs(2, 0)
    model = _adapted(tm)
    with torch.no_grad():
        y = model(**x).logits
    export_peft(model, tmp_path / "peft")
    for back in (pa.load_adapter(tiny_model("bert").model, tmp_path / "peft"),
                 pa.from_pretrained(tiny_model("bert").model, tmp_path / "peft")):
        with torch.no_grad():
            torch.testing.assert_close(back.eval()(**x).logits, y, atol=1e-5, rtol=1e-5)


def test_second_load_of_a_name_says_what_exists_and_how_to_name_it(tmp_path):
    model = _adapted(tiny_model("bert"))
    model.save_pretrained(tmp_path / "a")
    back = pa.load_adapter(tiny_model("bert").model, tmp_path / "a")
    expected = r"'default' is already loaded \(adapters on this model: default\).*name="
    with pytest.raises(pa.AdapterFileError, match=expected) as e:
        back.load_adapter(tmp_path / "a")
    assert "\n" not in str(e.value) and list(back.specs) == ["default"]
    back.load_adapter(tmp_path / "a", "default_2")
    assert list(back.specs) == ["default", "default_2"]


def test_print_trainable_parameters(capsys):
    model = pa.attach(tiny_model("bert").model, "lora", targets=["query", "value"], r=2)
    model.print_trainable_parameters()
    count = model.count_parameters()
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"trainable params: {count.trainable:,} || all params: ") and "trainable%: " in line


def test_peft_keywords_are_accepted_as_aliases():
    model = pa.attach(tiny_model("bert").model, "lora", target_modules=["query", "value"], r=4, lora_alpha=32,
                      lora_dropout=0.1, use_rslora=True, modules_to_save=["classifier"])
    cfg = model.specs["default"].config
    assert (cfg.alpha, cfg.dropout, cfg.rslora) == (32, 0.1, True)
    assert model.head_names == ["classifier"] and len(model.adapted_layers()) == 4
    model.add_adapter("b", "lora", target_modules=["query"], lora_alpha=8, modules_to_save="classifier")
    assert model.specs["b"].config.alpha == 8 and model.specs["b"].targets[0].endswith("query")


def test_peft_keywords_a_method_lacks_are_refused_in_one_line():
    with pytest.raises(ValueError, match=r"vera has no 'alpha' \(PEFT's lora_alpha\); its hyperparameters: .*r") as e:
        pa.attach(tiny_model("bert").model, "vera", target_modules=["query"], lora_alpha=16)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="targets= .* or target_modules= .*not both"):
        pa.attach(tiny_model("bert").model, "lora", targets=["query"], target_modules=["value"])
    model = pa.attach(tiny_model("bert").model, "lora", targets=["query"])
    with pytest.raises(ValueError, match="modules_to_save=.*first wrapped"):
        model.add_adapter("b", "lora", targets=["query"], modules_to_save=["bert.pooler.dense"])
    with pytest.raises(ValueError, match=r"already exists \(adapters: default\).*default_2"):
        model.add_adapter("default", "lora", targets=["query"])


def test_a_load_that_does_not_fit_leaves_the_plain_model_as_it_was(tmp_path):
    pa.save_adapter(_adapted(tiny_model("bert")), tmp_path / "a")
    other = tiny_model("bert", hidden=48).model
    before = repr(other)
    with pytest.raises(pa.AdapterFileError, match="does not fit"):
        pa.load_adapter(other, tmp_path / "a")
    assert repr(other) == before and type(other.classifier) is torch.nn.Linear
    other.save_pretrained(tmp_path / "still_plain")  # not left refusing as a wrapped model
