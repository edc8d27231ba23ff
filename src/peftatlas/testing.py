"""Tiny models built from configs, for tests, benchmarks and the smoke profile (no downloads).

Each factory returns a :class:`TinyModel`: the model (eval mode, dropout off), a function making a
deterministic input batch, and a function extracting the output tensor to compare.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

TINY_KINDS = ("mlp", "bert", "llama", "vit", "gpt2", "cnn", "embedding")
# Kinds that exist to exercise one layer type of weight-space methods (they name ``targets``).
LAYER_TYPE_KINDS = ("gpt2", "cnn", "embedding")


@dataclasses.dataclass
class TinyModel:
    kind: str
    model: nn.Module
    make_inputs: Callable[[int, int], dict[str, Tensor]]  # (batch, seed) -> kwargs
    output: Callable[[Any], Tensor]
    # Targets for weight-space methods in the property suite (None: the method's default targets)
    # and the layer types they have.
    targets: list[str] | None = None
    layer_types: tuple[str, ...] = ("Linear",)


class MLP(nn.Module):
    """A plain MLP with a LayerNorm: fc1 → GELU → LayerNorm → fc2 → GELU → classifier (the task head)."""

    def __init__(self, d_in: int = 12, hidden: int = 24, d_out: int = 6) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.classifier = nn.Linear(hidden, d_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.nn.functional.gelu(self.fc2(self.norm(torch.nn.functional.gelu(self.fc1(x))))))


class TinyCNN(nn.Module):
    """Conv2d (3×3, padding 1) → GELU → Conv2d (3×3, stride 2) → GELU → Conv1d over the flattened grid
    → mean → classifier: every convolution type the engine adapts, on an (N, 4, 8, 8) image."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(16, 16, 2)
        self.classifier = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.nn.functional.gelu(self.conv2(torch.nn.functional.gelu(self.conv1(x))))
        h = self.conv3(h.flatten(2))  # (N, 16, 16) → (N, 16, 15)
        return self.classifier(h.mean(-1))


def _ids(vocab: int, length: int) -> Callable[[int, int], dict[str, Tensor]]:
    def make(batch: int, seed: int) -> dict[str, Tensor]:
        g = torch.Generator().manual_seed(seed)
        return {"input_ids": torch.randint(3, vocab, (batch, length), generator=g)}

    return make


_TEMPLATES: dict[tuple[str, int, int], TinyModel] = {}


def tiny_model(kind: str, seed: int = 0, hidden: int = 32) -> TinyModel:
    """A tiny model of ``kind`` (one of :data:`TINY_KINDS`) with weights from ``seed``.

    Each call returns a fresh deep copy of a template built once per (kind, seed, hidden):
    building transformers models from configs is ~10× slower than copying them.
    """
    key = (kind, seed, hidden)
    if key not in _TEMPLATES:
        _TEMPLATES[key] = _build_tiny_model(kind, seed, hidden)
    torch.manual_seed(seed)  # same global RNG state after the call as a fresh build would leave
    template = _TEMPLATES[key]
    return dataclasses.replace(template, model=copy.deepcopy(template.model))


def _build_tiny_model(kind: str, seed: int, hidden: int) -> TinyModel:
    torch.manual_seed(seed)
    if kind == "mlp":
        def make_x(batch: int, s: int) -> dict[str, Tensor]:
            return {"x": torch.randn(batch, 12, generator=torch.Generator().manual_seed(s))}
        return TinyModel(kind, MLP().eval(), make_x, lambda out: out)
    if kind == "bert":
        from transformers import BertConfig, BertForSequenceClassification

        cfg = BertConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=2 * hidden, max_position_embeddings=32, num_labels=3,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        return TinyModel(kind, BertForSequenceClassification(cfg).eval(), _ids(100, 8), lambda o: o.logits)
    if kind == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, intermediate_size=2 * hidden, max_position_embeddings=64,
                          tie_word_embeddings=False)
        return TinyModel(kind, LlamaForCausalLM(cfg).eval(), _ids(100, 8), lambda o: o.logits)
    if kind == "vit":
        from transformers import ViTConfig, ViTForImageClassification

        cfg = ViTConfig(image_size=16, patch_size=8, num_channels=3, hidden_size=hidden, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=2 * hidden, num_labels=3,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)

        def make_px(batch: int, s: int) -> dict[str, Tensor]:
            return {"pixel_values": torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(s))}
        return TinyModel(kind, ViTForImageClassification(cfg).eval(), make_px, lambda o: o.logits)
    if kind == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(vocab_size=100, n_embd=hidden, n_layer=2, n_head=4, n_positions=32,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # tied wte / lm_head
        return TinyModel(kind, GPT2LMHeadModel(cfg).eval(), _ids(100, 8), lambda o: o.logits,
                         targets=["c_attn", "c_proj", "c_fc"], layer_types=("Conv1D",))
    if kind == "cnn":
        def make_img(batch: int, s: int) -> dict[str, Tensor]:
            return {"x": torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(s))}
        return TinyModel(kind, TinyCNN().eval(), make_img, lambda out: out,
                         targets=["conv1", "conv2", "conv3"], layer_types=("Conv2d", "Conv1d"))
    if kind == "embedding":  # an untied Llama's input embedding and output head (vocabulary 96)
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(vocab_size=96, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=4,
                          num_key_value_heads=2, intermediate_size=2 * hidden, max_position_embeddings=64,
                          tie_word_embeddings=False)
        return TinyModel(kind, LlamaForCausalLM(cfg).eval(), _ids(96, 8), lambda o: o.logits,
                         targets=["embed_tokens", "lm_head"], layer_types=("Embedding", "Linear"))
    raise ValueError(f"unknown tiny model kind {kind!r}; choose from {TINY_KINDS}")


def bf16_autocast_output(model: nn.Module, x: Tensor, tol: float = 0.03) -> Tensor:
    """``model(x)`` under CPU bf16 autocast, checked against the fp32 output: the result is bf16 and
    max |y16 − y32| / max |y32| < ``tol``. Returns the bf16 output (for a backward pass)."""
    y32 = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16 = model(x)
    assert y16.dtype == torch.bfloat16, y16.dtype
    err = float(((y16.float() - y32).abs().max() / y32.abs().max()).detach())
    assert err < tol, f"bf16 autocast output differs from fp32 by {err:.3g} (relative), over {tol}"
    return y16
