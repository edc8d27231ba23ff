"""Engine behaviour beyond the per-method property suite: targeting, adapter management, file errors,
VeRA's published parameter counts and cross-process determinism."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import peftatlas as pa
from peftatlas.core.io import AdapterFileError
from peftatlas.testing import tiny_model


def _bert():
    return tiny_model("bert")


# --- targeting ---------------------------------------------------------------------------------


def test_targets_by_suffix_regex_and_all_linear():
    tm = _bert()
    m = pa.attach(tm.model, "lora", targets=["query", "value"], r=2)
    names = sorted(m.adapted_layers())
    assert names == [f"bert.encoder.layer.{i}.attention.self.{k}" for i in range(2) for k in ("query", "value")]
    m2 = pa.attach(_bert().model, "lora", targets=r".*layer\.0\..*dense", r=2)
    assert all(".layer.0." in n and n.endswith("dense") for n in m2.adapted_layers())
    m3 = pa.attach(_bert().model, "lora", targets="all-linear", r=2)
    assert "classifier" not in m3.adapted_layers() and len(m3.adapted_layers()) == 2 * 6 + 1  # + pooler


def test_no_match_error_names_candidates():
    with pytest.raises(pa.TargetError, match=r"matched no module.*candidates: .*query"):
        pa.attach(_bert().model, "lora", targets=["nonexistent"], r=2)


def test_partial_match_error_names_missing_target():
    with pytest.raises(pa.TargetError, match="qvery"):
        pa.attach(_bert().model, "lora", targets=["query", "qvery"], r=2)


def test_all_linear_excludes_output_embedding_of_causal_lm():
    m = pa.attach(tiny_model("llama").model, "lora", targets="all-linear", r=2)
    assert "lm_head" not in m.adapted_layers() and len(m.adapted_layers()) == 2 * 7


def test_unknown_method_and_hyperparameter_errors():
    with pytest.raises(pa.MethodError, match="unknown method 'loraa'.*lora"):
        pa.attach(_bert().model, "loraa")
    with pytest.raises(pa.MethodError, match="unknown hyperparameter.*rank.*valid: .*r"):
        pa.attach(_bert().model, "lora", rank=4)
    with pytest.raises(pa.MethodError, match="rank r must be"):
        pa.attach(_bert().model, "lora", r=0)


def test_failed_add_leaves_model_untouched():
    tm = _bert()
    m = pa.attach(tm.model, "lora", targets=["query"], r=2)
    before = repr(m)
    with pytest.raises(pa.TargetError):
        m.add_adapter("second", "lora", targets=["nope"], r=2)
    assert repr(m) == before and list(m.specs) == ["default"]


# --- adapter management ---------------------------------------------------------------------------


@pytest.mark.exactness
def test_set_active_disable_restores_previous_state_and_delete():
    tm = _bert()
    x = tm.make_inputs(2, 0)
    with torch.no_grad():
        y0 = tm.output(tm.model(**x))
    m = pa.attach(tm.model, "lora", targets=["query", "value"], r=2, name="a")
    m.add_adapter("b", "vera", targets=["query", "value"], r=8, seed=3)
    g = torch.Generator().manual_seed(0)
    for layer in m.adapted_layers().values():
        for ad in layer.adapters.values():
            ad.perturb_(g)
    m.set_active("b")
    with torch.no_grad():
        yb = tm.output(m(**x))
    with m.disable(), torch.no_grad():
        assert torch.equal(tm.output(m(**x)), y0)
    with torch.no_grad():
        assert torch.equal(tm.output(m(**x)), yb)
    assert m.active_adapters == ["b"]
    with pytest.raises(ValueError, match="unknown adapter"):
        m.set_active("c")
    m.delete_adapter("b")
    assert m.active_adapters == [] and "b" not in m.specs
    m.delete_adapter("a")
    with torch.no_grad():
        assert torch.equal(tm.output(m(**x)), y0)
    assert not m.adapted_layers()


def test_duplicate_and_invalid_names_rejected():
    m = pa.attach(_bert().model, "lora", targets=["query"], r=2)
    with pytest.raises(ValueError, match="already exists"):
        m.add_adapter("default", "lora", targets=["query"], r=2)
    with pytest.raises(ValueError, match="invalid adapter name"):
        m.add_adapter(pa.BASE_NAME, "lora", targets=["query"], r=2)


def test_set_active_while_merged_raises():
    m = pa.attach(_bert().model, "lora", targets=["query"], r=2, name="a")
    m.add_adapter("b", "lora", targets=["query"], r=2)
    m.merge()
    with pytest.raises(pa.MergeError, match="unmerge"):
        m.set_active("b")


def test_mixed_batch_errors():
    tm = _bert()
    m = pa.attach(tm.model, "lora", targets=["query"], r=2)
    x = tm.make_inputs(3, 0)
    with pytest.raises(ValueError, match="unknown adapter"):
        m(**x, adapter_names=["default", "zzz", "default"])
    with pytest.raises(ValueError, match="3 rows|entries"):
        m(**x, adapter_names=["default", "default"])
    m.train()
    with pytest.raises(ValueError, match="inference"):
        m(**x, adapter_names=["default"] * 3)
    m.eval()
    m.merge()
    with pytest.raises(pa.MergeError, match="unmerge"):
        m(**x, adapter_names=["default"] * 3)


def test_merge_and_unload_with_composite_classifier_head():
    """PEFT 0.21 crashes here for non-LoRA methods (RobertaClassificationHead has no .weight)."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=40, num_labels=2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = RobertaForSequenceClassification(cfg).eval()
    m = pa.attach(model, "vera", targets=["query", "value"], r=8)
    assert m.head_names == ["classifier"] and m.count_parameters().head == 32 * 32 + 32 + 32 * 2 + 2
    for layer in m.adapted_layers().values():
        layer.adapters["default"].perturb_(torch.Generator().manual_seed(1))
    with torch.no_grad():
        m.head_parameters()["classifier.dense.weight"].add_(0.1)
    ids = torch.randint(3, 100, (2, 6))
    with torch.no_grad():
        y = m(input_ids=ids).logits
        merged = m.merge_and_unload()
        torch.testing.assert_close(merged(input_ids=ids).logits, y, atol=1e-5, rtol=1e-4)


def test_param_count_per_layer_and_head_separate():
    m = pa.attach(_bert().model, "lora", targets=["query", "value"], r=4)
    c = m.count_parameters()
    assert c.adapter == 4 * 4 * (32 + 32) and len(c.per_layer) == 4
    assert c.head == 32 * 3 + 3
    assert "adapter params: 1,024" in str(c)


# --- VeRA's published counts (config-built, no weights allocated) ------------------------------------


@pytest.mark.parametrize(("size", "r", "expected"), [("base", 1024, 43_008), ("large", 256, 61_440)])
def test_vera_reproduces_published_roberta_counts(size, r, expected):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    dims = {"base": (768, 12, 12, 3072), "large": (1024, 24, 16, 4096)}[size]
    cfg = RobertaConfig(hidden_size=dims[0], num_hidden_layers=dims[1], num_attention_heads=dims[2],
                        intermediate_size=dims[3], num_labels=2)
    with torch.device("meta"):
        model = RobertaForSequenceClassification(cfg)
    m = pa.attach(model, "vera", targets=["query", "value"], r=r)
    assert m.count_parameters().adapter == expected


# --- files -------------------------------------------------------------------------------------


def _saved(tmp_path, method="lora", **hp):
    tm = _bert()
    m = pa.attach(tm.model, method, targets=["query", "value"], **hp)
    for layer in m.adapted_layers().values():
        layer.adapters["default"].perturb_(torch.Generator().manual_seed(2))
    pa.save_adapter(m, tmp_path / "ad")
    return tmp_path / "ad"


def test_corrupt_tensor_file_gives_one_line_error(tmp_path):
    path = _saved(tmp_path, r=2)
    blob = (path / "adapter.safetensors").read_bytes()
    (path / "adapter.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(AdapterFileError) as e:
        pa.load_adapter(_bert().model, path)
    assert "adapter.safetensors" in str(e.value) and "\n" not in str(e.value)


def test_corrupt_json_gives_one_line_error(tmp_path):
    path = _saved(tmp_path, r=2)
    (path / "adapter.json").write_text("{not json")
    with pytest.raises(AdapterFileError, match="not valid JSON") as e:
        pa.load_adapter(_bert().model, path)
    assert "\n" not in str(e.value)


def test_missing_key_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    path = _saved(tmp_path, r=2)
    tensors = load_file(str(path / "adapter.safetensors"))
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    save_file(tensors, str(path / "adapter.safetensors"))
    meta = json.loads((path / "adapter.json").read_text())
    meta.pop("tensors_sha256")
    (path / "adapter.json").write_text(json.dumps(meta))
    tm = _bert()
    with pytest.raises(AdapterFileError, match=f"missing key.*{dropped}") as e:
        pa.load_adapter(tm.model, path)
    assert "\n" not in str(e.value)
    # nothing was left behind on the model
    assert not any(isinstance(mod, pa.AdaptedModule) for mod in tm.model.modules())


def test_mismatched_pair_detected_by_checksum(tmp_path):
    a = _saved(tmp_path / "x", r=2)
    b = _saved(tmp_path / "y", r=3)
    (a / "adapter.safetensors").write_bytes((b / "adapter.safetensors").read_bytes())
    with pytest.raises(AdapterFileError, match="checksum"):
        pa.load_adapter(_bert().model, a)


def test_different_shapes_reports_every_mismatch(tmp_path):
    path = _saved(tmp_path, r=2)
    other = tiny_model("bert", hidden=48).model
    with pytest.raises(AdapterFileError, match="does not fit this model") as e:
        pa.load_adapter(other, path)
    msg = str(e.value)
    assert "\n" not in msg and msg.count("has shape") >= 4 and "layer.1.attention.self.value.weight" in msg


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(AdapterFileError, match="does not exist"):
        pa.load_adapter(_bert().model, tmp_path / "nope")
    path = _saved(tmp_path, r=2)
    (path / "adapter.json").unlink()
    with pytest.raises(AdapterFileError, match="no adapter.json"):
        pa.load_adapter(_bert().model, path)


def test_save_is_atomic_when_interrupted(tmp_path, monkeypatch):
    path = _saved(tmp_path, r=2)
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    tm = _bert()
    m = pa.attach(tm.model, "lora", targets=["query"], r=5)
    import peftatlas.core.io as io

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(io.os, "fsync", boom)
    with pytest.raises(KeyboardInterrupt):
        pa.save_adapter(m, path)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ad"]  # no temp folder left behind


def test_loading_never_unpickles(tmp_path):
    path = _saved(tmp_path, r=2)
    import pickle

    def forbidden(*a, **k):
        raise AssertionError("pickle used")

    orig = pickle.loads
    pickle.loads = forbidden
    try:
        pa.load_adapter(_bert().model, path)
    finally:
        pickle.loads = orig


# --- VeRA: seed, not matrices; fresh process; file size ---------------------------------------------


def test_vera_file_is_small_and_stores_no_projection(tmp_path):
    tm = tiny_model("bert", hidden=128)
    v = pa.attach(tm.model, "vera", targets=["query", "value"], r=256, head=None)
    pa.save_adapter(v, tmp_path / "vera")
    tm2 = tiny_model("bert", hidden=128)
    lo = pa.attach(tm2.model, "lora", targets=["query", "value"], r=128, head=None)  # LoRA's r ≤ the width
    pa.save_adapter(lo, tmp_path / "lora")
    vs = (tmp_path / "vera" / "adapter.safetensors").stat().st_size
    ls = (tmp_path / "lora" / "adapter.safetensors").stat().st_size
    assert vs < 0.05 * ls, (vs, ls)
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "vera" / "adapter.safetensors"))
    assert all(k.endswith(("vera_b", "vera_d")) for k in keys)


@pytest.mark.exactness
def test_vera_loaded_in_fresh_process_gives_identical_outputs(tmp_path):
    tm = _bert()
    m = pa.attach(tm.model, "vera", targets=["query", "value"], r=16, projection_seed=123)
    for layer in m.adapted_layers().values():
        layer.adapters["default"].perturb_(torch.Generator().manual_seed(5))
    pa.save_adapter(m, tmp_path / "ad")
    with torch.no_grad():
        y = tm.output(m(**tm.make_inputs(3, 9)))
    script = textwrap.dedent(f"""
        import torch, peftatlas as pa
        from peftatlas.testing import tiny_model
        tm = tiny_model("bert")
        m = pa.load_adapter(tm.model, {str(tmp_path / "ad")!r})
        with torch.no_grad():
            y = tm.output(m(**tm.make_inputs(3, 9)))
        from safetensors.torch import save_file
        save_file({{"y": y.contiguous()}}, {str(tmp_path / "fresh.safetensors")!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    from safetensors.torch import load_file

    fresh = load_file(str(tmp_path / "fresh.safetensors"))["y"]
    assert torch.equal(fresh, y)


def test_vera_projections_regenerate_bit_identically():
    from peftatlas.methods.vera import VeRAProjections

    a = VeRAProjections(8, 20, 30, seed=7)
    torch.manual_seed(999)
    b = VeRAProjections(8, 20, 30, seed=7)
    assert torch.equal(a.A, b.A) and torch.equal(a.B, b.B)
    bound = (6 / 20) ** 0.5
    assert a.A.abs().max() <= bound and a.A.abs().max() > 0.8 * bound


def test_plain_module_without_head():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    m = pa.attach(net, "lora", r=2)
    assert m.head_names == [] and len(m.adapted_layers()) == 2
