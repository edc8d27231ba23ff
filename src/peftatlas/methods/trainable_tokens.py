"""Trainable tokens: train the embedding rows of chosen (e.g. newly added) vocabulary tokens only.

Reference: HF PEFT's ``TrainableTokensConfig`` (no paper; the standard way to learn new special
tokens without saving a full embedding matrix).

Hypothesis: what a task needs from the input space is a few new or re-placed token vectors; the
rest of the vocabulary and the whole body stay as pretrained.

Insertion point: input — selected rows of the input embedding matrix.

Pseudocode::

    ids = token_indices (k tokens, e.g. rows added by resize_token_embeddings)
    δ ∈ R^{k×d} ← 0
    embed'(t) = E[t] + δ[j]   if t = ids[j]   else E[t]
    merge: E[ids] ← E[ids] + δ
    parameters: k·d

Models whose output head shares the input embedding matrix (tied weights) are refused: training
the shared rows would need the same δ on the output side as well, which this method does not do.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.method import BaseFn, LayerAdapter, MethodError, register
from ._model_level import INPUT_EMBEDDINGS


@register("trainable_tokens")
class TrainableTokens(LayerAdapter):
    family = "input-space"
    insertion = "input"
    summary = "Only the embedding rows of chosen tokens train (a k×d delta); everything else is frozen."
    formula = "k·d (k = number of tokens)"
    target_types: ClassVar[tuple[type[nn.Module], ...]] = (nn.Embedding,)
    default_targets: ClassVar[Any] = INPUT_EMBEDDINGS

    class Testing:
        # every other id of the tiny vocabularies, so that every random test batch hits some of them
        config: ClassVar[dict[str, Any]] = {"token_indices": list(range(3, 100, 2))}
        skip: ClassVar[dict[str, str]] = {
            "mlp": "the MLP has no token embedding",
            "vit": "ViT embeds pixel patches, not tokens",
            "gpt2": "GPT-2 ties lm_head to the input embedding; the method refuses tied weights in one line",
        }

    @dataclasses.dataclass
    class Config:
        token_indices: list[int] = dataclasses.field(default_factory=list)

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        ids = list(cfg.token_indices)
        if not ids:
            raise MethodError("trainable_tokens: token_indices is empty; name the token ids to train")
        if any(not isinstance(i, int) or i < 0 for i in ids):
            raise MethodError(f"trainable_tokens: token_indices must be non-negative integers, got {ids}")
        if len(set(ids)) != len(ids):
            raise MethodError(f"trainable_tokens: token_indices has duplicates: {ids}")

    @classmethod
    def check_model(cls, model: nn.Module, cfg: Config) -> None:
        get_in, get_out = getattr(model, "get_input_embeddings", None), getattr(model, "get_output_embeddings", None)
        emb = get_in() if callable(get_in) else None
        out = get_out() if callable(get_out) else None
        if emb is not None and out is not None and getattr(out, "weight", None) is getattr(emb, "weight", 0):
            raise MethodError("trainable_tokens: this model ties its output head to the input embedding; "
                              "untie the weights (tie_word_embeddings=False) before training token rows")

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        vocab, d = base.weight.shape
        too_big = [i for i in cfg.token_indices if i >= vocab]
        if too_big:
            raise MethodError(f"trainable_tokens: token ids {too_big} are outside the vocabulary of {vocab} rows "
                              "(resize the embeddings first to add new tokens)")
        ids = torch.tensor(cfg.token_indices, dtype=torch.long)
        slot = torch.full((vocab,), -1, dtype=torch.long)
        slot[ids] = torch.arange(len(ids))
        self.register_buffer("token_ids", ids, persistent=False)
        self.register_buffer("slot", slot, persistent=False)  # vocabulary id -> row of delta, or -1
        self.delta = nn.Parameter(torch.zeros(len(ids), d))

    def delta_output(self, x: Tensor) -> Tensor:
        j = self.slot[x]
        hit = (j >= 0).unsqueeze(-1)
        return self.delta[j.clamp_min(0)] * hit

    def forward(self, x: Tensor, base_fn: BaseFn) -> Tensor:
        y = base_fn(x)
        return y + self.delta_output(x).to(y.dtype)

    def merged_params(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        w = params["weight"]
        merged = w.float().index_add(0, self.token_ids.to(w.device), self.delta.detach().float())
        return {**params, "weight": merged.to(w.dtype)}

    def reference_forward(self, x: Tensor, base: nn.Module) -> Tensor:
        """Dense oracle: the full embedding matrix with the selected rows replaced, then a lookup."""
        W = base.weight.detach().float().clone()
        for j, t in enumerate(self.token_ids.tolist()):
            W[t] = W[t] + self.delta.detach()[j].float()
        return F.embedding(x, W, base.padding_idx)

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Config) -> int:
        return len(cfg.token_indices) * int(base.weight.shape[1])
