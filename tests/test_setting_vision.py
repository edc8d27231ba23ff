"""The vision setting: few-shot splits, the shifted sets, and a few real DINOv2 steps end to end."""

from __future__ import annotations

import pytest
import torch

import peftatlas as pa
from peftatlas.evidence.settings import vision as vi
from peftatlas.evidence.train import TrainConfig

QV = ["q_proj", "v_proj"]
TINY = TrainConfig(lr=3e-3, head_lr=1e-2, epochs=1, batch_size=10, eval_batch_size=50, warmup_ratio=0.0)
SMALL = vi.VisionConfig(image_size=28)  # 2 × 2 patches: seconds on a CPU


def test_fewshot_splits_are_balanced_disjoint_and_nested_over_shots():
    five, ten = vi.load_fewshot_task(shots=5), vi.load_fewshot_task(shots=10)
    assert ten.train.labels.bincount().tolist() == [10] * 10 and ten.val.labels.bincount().tolist() == [10] * 10
    assert ten.test.labels.bincount().tolist() == [100] * 10
    flat = {name: s.images.reshape(len(s), -1) for name, s in [("train", ten.train), ("val", ten.val),
                                                                ("test", ten.test)]}
    for a, b in [("train", "val"), ("train", "test"), ("val", "test")]:
        assert not (torch.cdist(flat[a], flat[b]) == 0).any()  # no image in two splits
    per_class = {c: {tuple(x.flatten().tolist()) for x in ten.train.images[ten.train.labels == c]} for c in range(10)}
    assert all(tuple(x.flatten().tolist()) in per_class[int(y)] for x, y in zip(five.train.images, five.train.labels))
    assert torch.equal(five.test.images, ten.test.images)
    assert len(ten.ood["digits"]) == 1797 and ten.ood["digits"].images.shape[1:] == (8, 8)
    assert torch.equal(ten.ood["rotated"].labels, ten.test.labels)
    assert ten.fingerprint() != five.fingerprint()


def test_rotation_and_pixel_values():
    img = torch.zeros(1, 28, 28)
    img[0, 4:8, 12:16] = 1.0  # a blob above the centre
    turned = vi.rotate(img, 90.0)[0]
    assert float(turned[4:8, 12:16].sum()) < 0.5 and float(turned.sum()) == pytest.approx(16.0, rel=0.1)
    assert torch.allclose(vi.rotate(img, 0.0), img, atol=1e-6)
    x = vi.pixel_values(img, 56)
    assert x.shape == (1, 3, 56, 56)
    assert float(x[0, 0].min()) == pytest.approx(-0.485 / 0.229, rel=1e-4)


@pytest.mark.realmodel
def test_head_only_and_lora_on_real_dinov2_end_to_end():
    """Head-only (a linear probe on cached features) and LoRA train a few steps on the real backbone and
    report test and shifted-set accuracy; a learning-curve point (fewer shots) runs too. Pretrained
    features separate digits: the probe beats chance (10%) on the test set after 2 epochs."""
    task = vi.load_fewshot_task(shots=10, n_val=5, n_test=10, n_ood=100)
    probe = pa.attach(vi.load_image_classifier(seed=0), "head_only")
    cfg = TrainConfig(**{**vars(TINY), "lr": 3e-2, "head_lr": None, "epochs": 4})
    m = vi.train_image_classifier(probe, task, cfg, SMALL).metrics
    assert set(m) >= {"val_acc", "test_acc", "test_f1", "ood_acc/digits", "ood_acc/rotated"}
    assert m["test_acc"] > 0.3
    adapted = pa.attach(vi.load_image_classifier(seed=0), "lora", targets=QV, r=2)
    assert adapted.count_parameters().adapter == 12 * 2 * 2 * (384 + 384)
    result = vi.train_image_classifier(adapted, task, TINY, SMALL)
    assert result.steps == 10 and 0.0 <= result.metrics["ood_acc/digits"] <= 1.0
    assert set(result.items) == {"test", "ood/digits", "ood/rotated"} and len(result.items["test"]) == len(task.test)
    assert sum(result.items["ood/digits"]) / 100 == pytest.approx(result.metrics["ood_acc/digits"])
    few = vi.load_fewshot_task(shots=2, n_val=5, n_test=10, n_ood=10)
    point = vi.train_image_classifier(pa.attach(vi.load_image_classifier(seed=1), "lora", targets=QV, r=2), few,
                                      TINY, SMALL, evaluate_test=False)
    assert point.steps == 2 and "test_acc" not in point.metrics


@pytest.mark.realmodel
@pytest.mark.parametrize(("method", "kwargs"), [
    ("vera", {"targets": "all-linear", "r": 32}), ("surm_circulant", {"targets": QV}), ("goft", {"targets": QV})])
def test_seed_methods_take_a_step_on_real_dinov2(method, kwargs):
    """The seed papers' methods attach to the ViT and one step changes its outputs (the CPU profile's other
    methods were timed on it: docs/evidence.md)."""
    task = vi.load_fewshot_task(shots=1, n_val=2, n_test=2, n_ood=4)
    adapted = pa.attach(vi.load_image_classifier(seed=0), method, **kwargs)
    x = vi.pixel_values(task.val.images, 28)
    adapted.eval()
    with torch.no_grad():
        before = adapted(pixel_values=x)
    result = vi.train_image_classifier(adapted, task, TrainConfig(**{**vars(TINY), "lr": 1e-3}), SMALL)
    assert result.steps == 1
    adapted.eval()
    with torch.no_grad():
        assert not torch.allclose(adapted(pixel_values=x), before)
