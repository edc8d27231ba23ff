"""The causal-LM setting: task data, the answer-token loss, and a few real SmolLM2 steps end to end."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import peftatlas as pa
from peftatlas.evidence.settings import causal_lm as lm
from peftatlas.evidence.train import TrainConfig

QV = ["q_proj", "v_proj"]
TINY = TrainConfig(lr=3e-3, epochs=1, batch_size=8, eval_batch_size=16, max_length=64, warmup_ratio=0.0)


def test_task_has_fifty_answer_types_disjoint_splits_and_shifted_formats():
    task = lm.load_answer_type_task()
    assert task.num_labels == 50 and len(set(task.label_names)) == 50
    assert len(task.val) == lm.N_VAL and len(task.test) == lm.N_TEST and len(task.train) > 4000
    keys = [set(map(str.lower, s.texts)) for s in (task.train, task.val, task.test)]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    assert set(task.ood) == set(lm.PROMPTS) and all(v is task.test for v in task.ood.values())
    q = "What year did the Titanic sink?"
    assert lm.prompt(q) == "Question: What year did the Titanic sink?\nAnswer type:"
    assert lm.lowercase_prompt(q) == "Question: what year did the titanic sink\nAnswer type:"
    assert lm.reworded_prompt(q) == "Q: What year did the Titanic sink?\nType of answer:"  # other words, same cue
    assert task.label_names[lm.FINE_LABELS.index("NUM:date")] == "date"


@pytest.fixture(scope="module")
def smol():
    return lm.load_causal_lm()


@pytest.fixture(scope="module")
def task():
    return lm.load_answer_type_task().subset(train=16, val=4, test=4, ood=4)


@pytest.mark.realmodel
def test_left_padded_answer_loss_equals_unpadded_full_logit_loss(smol, task):
    model, tok = smol
    model = model.eval()
    enc = lm.encode_split(tok, task.val.head(3), task.label_names, 64)
    with torch.no_grad():
        nll, n = lm.answer_nll(model, lm.teacher_forced_batch(enc, [0, 1, 2], tok.pad_token_id, torch.device("cpu")))
        ref, m = 0.0, 0
        for p, a in zip(enc.prompts, enc.answers):
            ids = torch.tensor([p + a])
            logits = model(input_ids=ids).logits[0]
            ref += float(F.cross_entropy(logits[len(p) - 1:-1], ids[0, len(p):], reduction="sum"))
            m += len(a)
    assert n == m and float(nll) == pytest.approx(ref, rel=1e-4)


@pytest.mark.realmodel
def test_lora_trains_generates_and_scores_on_real_smollm2(smol, task):
    """Two LoRA steps: the validation loss falls from the zero-shot model's, every metric is there, and a
    learning-curve point (half the training rows) runs."""
    base, tok = smol
    for p in base.parameters():
        p.requires_grad_(False)
    frozen = lm.train_causal_lm(base, tok, task, TINY, evaluate_test=False).metrics
    assert frozen["steps"] == 0
    model, tok = lm.load_causal_lm()
    adapted = pa.attach(model, "lora", targets=QV, r=4, head=None)
    assert adapted.count_parameters().adapter == 30 * 4 * (576 + 576 + 576 + 192)
    result = lm.train_causal_lm(adapted, tok, task, TINY)
    m = result.metrics
    assert result.steps == 2 and len(result.curve) == 1
    assert set(m) >= {"val_acc", "val_loss", "test_acc", "test_loss", "ood_acc/lowercase", "ood_acc/reworded",
                      "ood_loss/lowercase", "ood_loss/reworded"}
    assert all(0.0 <= m[k] <= 1.0 for k in m if k.endswith("_acc") or k.startswith("ood_acc"))
    assert set(result.items) == {"test", "ood/lowercase", "ood/reworded"} and len(result.items["test"]) == 4
    assert sum(result.items["ood/reworded"]) / 4 == pytest.approx(m["ood_acc/reworded"])
    assert m["test_greedy_match"] <= m["test_acc"]  # token-exact greedy answers are exact matches
    assert m["val_loss"] < frozen["val_loss"] - 1.0  # zero-shot ≈ 9 nats per answer token: the format is new
    point = lm.train_causal_lm(pa.attach(lm.load_causal_lm()[0], "lora", targets=QV, r=4, head=None), tok,
                               task.subset(train=8), TINY, evaluate_test=False)
    assert point.steps == 1 and "test_acc" not in point.metrics


@pytest.mark.realmodel
@pytest.mark.parametrize(("method", "kwargs"), [
    ("goft", {"targets": QV}),
    # the other families: minutes together on 2 cores, so outside the CI suite (`-m slow`)
    pytest.param("vera", {"targets": "all-linear", "r": 64}, marks=pytest.mark.slow),
    pytest.param("ia3", {}, marks=pytest.mark.slow),
    pytest.param("prompt_tuning", {"num_virtual_tokens": 4}, marks=pytest.mark.slow)])
def test_representative_methods_take_a_step_and_generate_on_real_smollm2(smol, task, method, kwargs):
    """Weight-space (VeRA, GOFT), activation ((IA)³) and input-space (prompt tuning) methods: one step on real
    rows changes the held-out loss, and generation still yields answers (LoRA: the test above)."""
    model, tok = lm.load_causal_lm()
    adapted = pa.attach(model, method, head=None, **kwargs)
    data = task.subset(train=8)
    enc = lm.encode_split(tok, data.val, data.label_names, 64)
    device = torch.device("cpu")
    before = lm.heldout_loss(adapted, enc, tok.pad_token_id, TINY, device)
    result = lm.train_causal_lm(adapted, tok, data, TrainConfig(**{**vars(TINY), "lr": 1e-3}), evaluate_test=False)
    assert result.steps == 1
    assert lm.heldout_loss(adapted, enc, tok.pad_token_id, TINY, device) != pytest.approx(before, abs=1e-6)
    said = lm.generate_answers(adapted, tok, enc.prompts, 4, 4, device)
    assert len(said) == 4 and all(isinstance(s, str) for s in said)
