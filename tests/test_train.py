"""The training loop: determinism, learning, hooks, LR groups and schedule, best-state restore, models."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

import peftatlas as pa
from peftatlas.evidence.data import TASKS, load_task
from peftatlas.evidence.models import ModelError, load_classifier, packaged_model_dir
from peftatlas.evidence.train import (
    TrainConfig,
    TrainError,
    batch_starts,
    epoch_batches,
    evaluate,
    linear_schedule,
    param_groups,
    plan_steps,
    train_classifier,
)

QV = ["query", "value"]


@pytest.fixture(scope="module")
def small_mr():
    return load_task("mr").subset(train=32, val=16, test=16, ood=8)


@pytest.fixture(scope="module")
def keyword_task(tmp_path_factory):
    """A synthetic task a tiny random BERT can learn: the label is which of two words a sentence holds."""
    rng = random.Random(0)
    fillers = ["the", "a", "movie", "plot", "actor", "scene", "story", "film", "it", "was", "very", "quite", "rather"]
    rows = ["text,label"]
    for i in range(240):
        label = i % 2
        words = [rng.choice(fillers) for _ in range(6)]
        words.insert(rng.randrange(7), "wonderful" if label else "dreadful")
        rows.append(f"{' '.join(words)} {i},{label}")
    path = tmp_path_factory.mktemp("kw") / "kw.csv"
    path.write_text("\n".join(rows) + "\n")
    return load_task(f"csv:{path}")


def lora_model(seed: int = 0, dropout: float = 0.1, num_labels: int = 2):
    model, tok = load_classifier("tiny-bert", num_labels, seed=seed, dropout=dropout)
    return pa.attach(model, "lora", targets=QV, r=4, seed=seed), tok


def adapter_tensors(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in {**model.adapter_parameters(), **model.head_parameters()}.items()}


CFG = dict(epochs=1, batch_size=8, evals_per_epoch=2, max_length=32)


def test_deterministic_under_a_seed(small_mr):
    runs = []
    for seed in (0, 0, 1):
        model, tok = lora_model(seed)
        result = train_classifier(model, tok, small_mr, TrainConfig(lr=1e-2, seed=seed, **CFG))
        runs.append((result, adapter_tensors(model)))
    (a, ta), (b, tb), (_c, tc) = runs
    assert a.curve == b.curve and a.metrics == b.metrics
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    assert any(not torch.equal(ta[k], tc[k]) for k in ta)


def test_learns_a_keyword_task(keyword_task):
    model, tok = lora_model()
    cfg = TrainConfig(lr=1e-2, head_lr=3e-2, epochs=4, batch_size=16, evals_per_epoch=1, target_acc=0.9)
    result = train_classifier(model, tok, keyword_task, cfg)
    assert result.metrics["val_acc"] >= 0.9, result.curve
    assert result.metrics["test_acc"] >= 0.85
    assert result.curve[-1]["train_loss"] < result.curve[0]["train_loss"]
    assert result.metrics["steps_to_target"] in [p["step"] for p in result.curve]
    assert result.metrics["steps"] == 4 * 12 and len(result.curve) == 4


def test_extra_loss_is_added_and_step_hook_is_called(small_mr):
    """A constant regulariser shifts the reported loss by exactly itself and leaves training unchanged."""
    cfg = TrainConfig(lr=1e-2, **CFG)
    plain, tok = lora_model()
    base = train_classifier(plain, tok, small_mr, cfg)
    hooked, tok = lora_model()
    calls: list[tuple[int, int]] = []
    hooked.extra_loss = lambda: torch.tensor(5.0)
    hooked.on_train_step = lambda step, total: calls.append((step, total))
    result = train_classifier(hooked, tok, small_mr, cfg)
    assert calls == [(s, 4) for s in range(1, 5)]
    for p, q in zip(result.curve, base.curve):
        assert p["train_loss"] == pytest.approx(q["train_loss"] + 5.0, abs=1e-5)
        assert p["val_acc"] == q["val_acc"]


def test_head_has_its_own_learning_rate(small_mr):
    model, tok = lora_model()
    groups = param_groups(model, TrainConfig(lr=1e-3, head_lr=5e-2, weight_decay=0.01))
    assert [g["lr"] for g in groups] == [1e-3, 5e-2] and [g["weight_decay"] for g in groups] == [0.01, 0.0]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.head_parameters().values()}
    before = adapter_tensors(model)
    train_classifier(model, tok, small_mr, TrainConfig(lr=1e-2, head_lr=1e-12, **CFG))
    after = adapter_tensors(model)
    head = [k for k in before if k.startswith("classifier")]
    body = [k for k in before if k not in head]
    assert head and body
    assert all(torch.allclose(before[k], after[k], atol=1e-9) for k in head)
    assert any(not torch.allclose(before[k], after[k]) for k in body)


def test_head_only_trains_just_the_head(small_mr):
    model, tok = load_classifier("tiny-bert", 2)
    model = pa.attach(model, "head_only")
    assert len(param_groups(model, TrainConfig())) == 1
    result = train_classifier(model, tok, small_mr, TrainConfig(lr=1e-2, **CFG))
    assert 0.0 <= result.metrics["test_acc"] <= 1.0


def _without_dropout(model):
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        for attr in ("dropout_prob", "attention_dropout"):
            if isinstance(getattr(m, attr, None), float):
                setattr(m, attr, 0.0)
    return model


def test_head_only_linear_probe_on_cached_features_equals_the_full_forward(small_mr, monkeypatch):
    """With dropout off, training the head on cached frozen features is the same run as the full forward."""
    import peftatlas.evidence.train as train_mod

    results = {}
    for path in ("probe", "full"):
        model, tok = load_classifier("tiny-bert", 2, seed=3, dropout=0.0)
        model = pa.attach(_without_dropout(model), "head_only")
        assert train_mod.probe_classifier(model) is not None
        if path == "full":
            monkeypatch.setattr(train_mod, "probe_classifier", lambda *a, **k: None)
        result = train_classifier(model, tok, small_mr, TrainConfig(lr=3e-2, seed=1, **CFG))
        results[path] = (result.metrics, adapter_tensors(model))
        monkeypatch.undo()
    (m_probe, w_probe), (m_full, w_full) = results["probe"], results["full"]
    for k in ("val_acc", "test_acc", "best_step"):
        assert m_probe[k] == m_full[k], k
    for k in w_full:
        torch.testing.assert_close(w_probe[k], w_full[k], atol=1e-5, rtol=1e-4)
    assert any(not torch.equal(w, 0 * w) for w in w_full.values())


def test_head_only_features_are_shared_through_the_disk_cache(small_mr, tmp_path):
    """With a feature folder, a second process (here: a second cache object on the same folder) reads the
    features from disk instead of running the encoder, and trains the very same head."""
    from peftatlas.evidence.train import FeatureCache

    runs = []
    for _ in range(2):
        cache = FeatureCache(tmp_path / "features")
        model, tok = load_classifier("tiny-bert", 2, seed=3, dropout=0.0)
        calls = []
        model.encoder.register_forward_hook(lambda *a, seen=calls: seen.append(1))
        model = pa.attach(model, "head_only")
        result = train_classifier(model, tok, small_mr, TrainConfig(lr=3e-2, seed=1, **CFG), features=cache)
        runs.append((result.metrics, adapter_tensors(model), len(calls)))
    (m1, w1, calls1), (m2, w2, calls2) = runs
    assert calls1 > 0 and calls2 == 0, (calls1, calls2)
    assert m1 == m2 and all(torch.equal(w1[k], w2[k]) for k in w1)
    files = sorted((tmp_path / "features").glob("*.safetensors"))
    assert files and not list((tmp_path / "features").glob(".*"))  # no temporary file left behind
    files[0].write_bytes(b"not a tensor file")  # a corrupt cache entry is recomputed, not fatal
    model, tok = load_classifier("tiny-bert", 2, seed=3, dropout=0.0)
    assert train_classifier(pa.attach(model, "head_only"), tok, small_mr, TrainConfig(lr=3e-2, seed=1, **CFG),
                            features=FeatureCache(tmp_path / "features")).metrics == m1


def test_no_process_wide_state_in_the_loop():
    """The loop's caches belong to their callers: no module-level feature cache or switch exists, and
    building runs (plan, executors) leaves the training module untouched."""
    import peftatlas.evidence.train as train_mod

    assert not hasattr(train_mod, "use_feature_cache") and not hasattr(train_mod, "_FEATURES")
    assert not any(isinstance(v, dict | list) and not k.startswith("__") and k != "GROUP" and k.isupper()
                   for k, v in vars(train_mod).items() if k != "_TOKEN_CACHE")


def test_hooks_are_declared_not_looked_up(small_mr):
    """StepHooks passed explicitly replace the model's declared ones; a plain module declares none."""
    from peftatlas.evidence.train import StepHooks

    model, tok = lora_model()
    calls: list[int] = []
    hooks = StepHooks(extra_loss=lambda: torch.tensor(1.0), on_step=lambda step, total: calls.append(step))
    result = train_classifier(model, tok, small_mr, TrainConfig(lr=1e-2, **CFG), hooks=hooks)
    assert calls == [1, 2, 3, 4] and result.curve[0]["train_loss"] > 1.0
    plain, _ = load_classifier("tiny-bert", 2)
    assert StepHooks.declared_by(plain) == StepHooks()
    assert StepHooks.declared_by(model).extra_loss == model.extra_loss


def test_per_item_correctness_matches_the_accuracy(small_mr):
    model, tok = lora_model()
    result = train_classifier(model, tok, small_mr, TrainConfig(lr=1e-2, **CFG))
    assert set(result.items) == {"test", *(f"ood/{k}" for k in small_mr.ood)}
    assert len(result.items["test"]) == len(small_mr.test)
    assert sum(result.items["test"]) / len(small_mr.test) == result.metrics["test_acc"]
    for name, split in small_mr.ood.items():
        assert sum(result.items[f"ood/{name}"]) / len(split) == result.metrics[f"ood_acc/{name}"]


def test_linear_probe_is_only_for_head_only_models():
    from peftatlas.evidence.train import probe_classifier

    model, _ = load_classifier("tiny-bert", 2)
    assert probe_classifier(pa.attach(model, "head_only")) is not None
    assert probe_classifier(pa.attach(load_classifier("tiny-bert", 2)[0], "lora", targets=QV, r=2)) is None
    assert probe_classifier(pa.attach(load_classifier("tiny-bert", 2)[0], "full")) is None
    assert probe_classifier(pa.attach(load_classifier("tiny-bert", 2)[0], "head_only"), world=2) is None


def test_linear_warmup_then_decay():
    f = linear_schedule(total=10, warmup=2)
    assert [round(f(s), 6) for s in range(10)] == [0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]
    assert linear_schedule(4, 0)(0) == 1.0


def test_plan_steps_and_batches():
    assert plan_steps(100, TrainConfig(batch_size=32, epochs=2, evals_per_epoch=2)) == (2, 4, [2, 4, 6, 8])
    assert plan_steps(16, TrainConfig(batch_size=8, epochs=1, min_steps=7)) == (4, 2, [2, 4, 6, 8])
    assert batch_starts(17, 8, world=2) == [0, 8]  # a last batch of one row cannot feed two ranks
    assert batch_starts(17, 8, world=1) == [0, 8, 16]
    with pytest.raises(TrainError, match="cannot fill a batch"):
        plan_steps(1, TrainConfig(batch_size=8), world=2)


def test_length_grouped_batches_cover_each_row_once():
    lengths = [(i * 7919) % 61 + 1 for i in range(1000)]
    perm = torch.randperm(1000, generator=torch.Generator().manual_seed(0)).tolist()
    cfg = TrainConfig(batch_size=32)
    grouped = epoch_batches(perm, lengths, cfg, 1, torch.Generator().manual_seed(1))
    plain = epoch_batches(perm, lengths, TrainConfig(batch_size=32, group_by_length=False), 1, torch.Generator())
    assert sorted(i for b in grouped for i in b) == list(range(1000))
    assert len(grouped) == len(plain) == plan_steps(1000, cfg)[1] == 32
    assert sorted(map(len, grouped)) == sorted(map(len, plain))
    padded = [sum(max(lengths[i] for i in b) for _ in b) for b in grouped]
    padded_plain = [sum(max(lengths[i] for i in b) for _ in b) for b in plain]
    assert sum(padded) < 0.75 * sum(padded_plain)  # far less padding
    again = epoch_batches(perm, lengths, cfg, 1, torch.Generator().manual_seed(1))
    assert again == grouped


def test_model_is_left_at_its_best_validation_state(small_mr):
    model, tok = lora_model(dropout=0.0)
    model.register_buffer("steps_seen", torch.zeros(()))  # schedule state kept in a buffer (like AdaLoRA's masks)
    model.on_train_step = lambda step, total: model.steps_seen.fill_(step)
    cfg = TrainConfig(lr=3e-2, epochs=3, **{k: v for k, v in CFG.items() if k != "epochs"})
    result = train_classifier(model, tok, small_mr, cfg)
    best = max(result.curve, key=lambda p: p["val_acc"])
    assert result.metrics["best_step"] == next(p["step"] for p in result.curve if p["val_acc"] == best["val_acc"])
    again = evaluate(model, tok, small_mr.val, 2, cfg, torch.device("cpu"))
    assert again["acc"] == result.metrics["val_acc"]
    assert float(model.steps_seen) == result.metrics["best_step"]  # buffers travel back to the best step too


def test_progress_bar_is_silent_without_a_terminal(small_mr, capsys):
    model, tok = lora_model()
    train_classifier(model, tok, small_mr, TrainConfig(lr=1e-3, **CFG), progress=True)
    captured = capsys.readouterr()
    assert "it/s" not in captured.err and "%|" not in captured.err


def test_bad_configs(small_mr):
    model, tok = load_classifier("tiny-bert", 2)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(TrainError, match="no trainable parameters"):
        train_classifier(model, tok, small_mr, TrainConfig(**CFG))
    for bad in (dict(lr=0.0), dict(epochs=0), dict(warmup_ratio=1.0), dict(evals_per_epoch=0)):
        with pytest.raises(TrainError):
            TrainConfig(**bad).validate()


def test_metrics_for_several_labels():
    task = load_task("trec6").subset(train=24, val=12, test=12)
    model, tok = load_classifier("tiny-bert", task.num_labels)
    model = pa.attach(model, "lora", targets=QV, r=2)
    m = train_classifier(model, tok, task, TrainConfig(lr=1e-3, **CFG)).metrics
    assert task.num_labels == 6 and 0.0 <= m["test_f1"] <= 1.0 and 0.0 <= m["test_acc"] <= 1.0
    assert not any(k.startswith("ood_acc") for k in m)


TRAINABLE = [m for m, c in pa.registered_methods().items() if "bert" not in c.test_skip]


@pytest.mark.parametrize("method", TRAINABLE)
def test_every_method_runs_in_the_loop(method, small_mr):
    """One short run per registered method via attach (test hyperparameters, default targets)."""
    cls = pa.get_method(method)
    model, tok = load_classifier("tiny-bert", 2)
    adapted = pa.attach(model, method, **cls.test_config)
    cfg = TrainConfig(lr=1e-3, epochs=1, batch_size=16, max_length=16)
    data = dataclasses.replace(small_mr, ood={})
    result = train_classifier(adapted, tok, data, cfg)
    assert result.steps == 2
    assert all(torch.isfinite(torch.tensor(v)) for v in result.metrics.values())


def test_local_folder_model(tmp_path, small_mr):
    """Any transformers folder works: a config-built BERT saved with a tokenizer, loaded by path."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(packaged_model_dir("minilm"))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    model, tok2 = load_classifier(str(tmp_path / "m"), 2)
    assert model.encoder.config.hidden_size == 16 and model.classifier.in_features == 16
    adapted = pa.attach(model, "lora", targets=QV, r=2)
    m = train_classifier(adapted, tok2, small_mr, TrainConfig(lr=1e-3, **CFG)).metrics
    assert set(m) >= {"val_acc", "test_acc", "ood_acc/amazon"}
    with pytest.raises(ModelError, match="cannot load model"):
        load_classifier(str(tmp_path / "missing"), 2)


@pytest.mark.realmodel
@pytest.mark.parametrize("task_name", [*TASKS, "csv"])
def test_real_minilm_few_steps_on_every_loader(task_name, keyword_task, tmp_path):
    """The packaged pretrained MiniLM trains a few steps on every task loader (and a CSV table)."""
    task = keyword_task if task_name == "csv" else load_task(task_name)
    task = task.subset(train=16, val=16, test=16, ood=8)
    model, tok = load_classifier("minilm", task.num_labels)
    assert sum(p.numel() for p in model.encoder.parameters()) == 22_565_376
    adapted = pa.attach(model, "lora", targets=QV, r=2)
    result = train_classifier(adapted, tok, task, TrainConfig(lr=1e-3, epochs=1, batch_size=8, max_length=32))
    assert result.steps == 2
    assert 0.0 <= result.metrics["test_acc"] <= 1.0
    assert len([k for k in result.metrics if k.startswith("ood_acc/")]) == (3 if task_name == "mr" else 0)


@pytest.mark.realmodel
def test_real_minilm_embeddings_are_pretrained():
    """Mean-pooled MiniLM sentence similarity matches the known value (0.755), so the weights are real."""
    model, tok = load_classifier("minilm", 2)
    model.eval()
    batch = tok(["A man is eating food.", "A man is eating a piece of bread."], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model.encoder(**batch).last_hidden_state
        pooled = model.pool(hidden, batch["attention_mask"])
    cos = torch.nn.functional.cosine_similarity(pooled[0], pooled[1], dim=0)
    assert float(cos) == pytest.approx(0.755, abs=0.01)


@pytest.mark.realmodel
def test_encoder_dropout_reaches_every_dropout_and_leaves_the_cached_encoder_alone():
    """``encoder_dropout=0`` zeroes each dropout module and config probability of the encoder (so a
    training-mode forward is deterministic), keeps the head's dropout, and the next model built
    without it has MiniLM's own 0.1 again."""
    model, tok = load_classifier("minilm", 2, encoder_dropout=0.0, dropout=0.3)
    probs = [m.p for m in model.encoder.modules() if isinstance(m, torch.nn.Dropout)]
    assert probs and set(probs) == {0.0}
    assert model.encoder.config.attention_probs_dropout_prob == 0.0
    assert model.encoder.config.hidden_dropout_prob == 0.0
    assert model.dropout.p == 0.3
    model.dropout.p = 0.0
    batch = tok(["a fine film", "a dull one"], padding=True, return_tensors="pt")
    assert torch.equal(model.train()(**batch), model(**batch))
    fresh, _ = load_classifier("minilm", 2)
    assert {m.p for m in fresh.encoder.modules() if isinstance(m, torch.nn.Dropout)} == {0.1}
    with pytest.raises(ModelError, match="dropout"):
        load_classifier("minilm", 2, encoder_dropout=1.0)
