"""Issue 17 (5): transformers Trainer with default arguments; adapter-only checkpoints; resume; best model."""

from __future__ import annotations

import pytest
import torch
from transformers import Trainer, TrainingArguments

import peftatlas as pa
from peftatlas.testing import tiny_model
from peftatlas.trainer import AdapterTrainer


def _rows(n: int = 16, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (n, 8), generator=g)
    return [{"input_ids": ids[i].tolist(), "attention_mask": [1] * 8, "labels": int(ids[i, 0] % 3),
             "text": f"sentence {i}"} for i in range(n)]  # "text": a column forward() does not take


def _model():
    return pa.attach(tiny_model("bert").model, "lora", targets=["query", "value"], r=2)


def _args(out, **kw) -> TrainingArguments:
    return TrainingArguments(output_dir=str(out), per_device_train_batch_size=4, learning_rate=1e-2,
                             max_steps=4, **kw)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in {**model.adapter_parameters(), **model.head_parameters()}.items()}


def test_plain_trainer_trains_with_default_arguments(tmp_path):
    model = _model()
    before = _state(model)
    Trainer(model=model, args=_args(tmp_path, save_strategy="no"), train_dataset=_rows()).train()
    after = _state(model)
    assert all(not torch.equal(before[k], after[k]) for k in ("classifier.weight",)) and any(
        not torch.equal(before[k], after[k]) for k in before if "lora_B" in k)


def test_adapter_trainer_checkpoints_hold_the_adapter_only_and_resume(tmp_path):
    full = _model()
    AdapterTrainer(model=full, args=_args(tmp_path / "full", save_steps=2), train_dataset=_rows()).train()
    ckpt = tmp_path / "full" / "checkpoint-2"
    names = {p.name for p in ckpt.iterdir()}
    assert {"adapter.json", "adapter.safetensors"} <= names
    assert not names & {"model.safetensors", "pytorch_model.bin", "config.json"}
    weights = [p for p in ckpt.iterdir() if p.suffix in (".safetensors", ".bin")]
    assert [p.name for p in weights] == ["adapter.safetensors"]
    pa.load_adapter(tiny_model("bert").model, ckpt)  # a checkpoint is a loadable adapter

    resumed = _model()
    AdapterTrainer(model=resumed, args=_args(tmp_path / "resumed", save_steps=2),
                   train_dataset=_rows()).train(resume_from_checkpoint=str(ckpt))
    a, b = _state(full), _state(resumed)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=1e-5)


def test_adapter_trainer_loads_best_model_at_end(tmp_path):
    model = _model()
    trainer = AdapterTrainer(
        model=model, args=_args(tmp_path, save_steps=2, eval_strategy="steps", eval_steps=2,
                                load_best_model_at_end=True, metric_for_best_model="loss"),
        train_dataset=_rows(), eval_dataset=[{**r, "labels": (r["labels"] + 1) % 3} for r in _rows()])
    trainer.train()  # eval labels contradict the training labels: the eval loss rises, step 2 is best
    best = trainer.state.best_model_checkpoint
    assert best is not None and best.endswith("checkpoint-2")
    expected = _state(pa.load_adapter(tiny_model("bert").model, best))
    got = _state(model)
    assert set(got) == set(expected)
    for k in got:
        torch.testing.assert_close(got[k], expected[k], atol=0, rtol=0)


def test_restore_refuses_a_different_adapter(tmp_path):
    model = _model()
    model.save_pretrained(tmp_path / "a")
    other = pa.attach(tiny_model("bert").model, "lora", targets=["query"], r=2)
    with pytest.raises(pa.AdapterFileError, match="differs from the one on this model"):
        pa.core.io.restore_adapter(other, tmp_path / "a")


def test_restore_checkpoint_restores_every_saved_adapter(tmp_path):
    from peftatlas.trainer import restore_checkpoint

    model = pa.attach(tiny_model("bert").model, "lora", targets=["query"], r=2, name="a")
    model.add_adapter("b", "vera", targets=["query"], r=4)
    g = torch.Generator().manual_seed(0)
    for layer in model.adapted_layers().values():
        for ad in layer.adapters.values():
            ad.perturb_(g)
    saved = {n: _state_of(model, n) for n in ("a", "b")}
    model.save_pretrained(tmp_path / "ckpt")
    for layer in model.adapted_layers().values():
        for ad in layer.adapters.values():
            ad.perturb_(g)
    assert sorted(restore_checkpoint(model, tmp_path / "ckpt")) == ["a", "b"]
    for n in ("a", "b"):
        for k, v in _state_of(model, n).items():
            assert torch.equal(v, saved[n][k]), (n, k)


def _state_of(model, name: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.adapter_parameters(name).items()}
