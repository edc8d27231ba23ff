"""Prompt tuning: trainable soft-prompt embeddings (Lester, Al-Rfou, Constant, EMNLP 2021, arXiv:2104.08691).

Hypothesis: a frozen model can be steered to fine-tuning quality by moving only its input context
in embedding space (given a large enough model).

Insertion point: input — ``p`` trainable vectors are prepended to the token embeddings of every
sequence (the adapter sits on the input embedding module, which itself is left unchanged).

Pseudocode::

    P ∈ R^{p×d}  ← embeddings of p random vocabulary tokens   (init="vocab"; "random": U(−0.5, 0.5))
    E = embed(tokens)                       # (n, d), frozen
    X = concat(P, E)                        # (p + n, d); attention mask gets p leading ones
    y = frozen_model(X)                     # outputs at the p virtual positions are dropped
    parameters: p·d in total (not per layer)

Labels aligned with the tokens (causal LM, token classification) get ``p`` leading ``-100``; the
returned ``logits`` / ``last_hidden_state`` / ``hidden_states`` drop the virtual positions, so the
adapted model's outputs line up with its inputs. ``generate()`` prepends the prompt to the prompt
tokens' embeddings in the prefill and returns the usual ``input_ids + new tokens``. Not mergeable.

Encoder-decoder models (T5): the prompt goes in front of the encoder's input by default (as in the
paper; labels and logits are the decoder's, so they are left alone), and ``generate()`` works. With
``targets=["decoder.embed_tokens"]`` it goes in front of the decoder's input instead: in ``forward``
labels get ``p`` leading ``-100`` and the logits drop the prompt positions. ``generate()`` puts it in
front of the decoder's input at the first decoding step (empty cache), so the cache holds the prompt's
keys/values and every later step continues after them::

    step 0:  decoder(X = [P; embed(d_0..d_{n-1})])        # key positions 0..p+n−1; next token ← logits[:, −1]
    step t:  decoder(X = embed(d_{n+t−1}), cache of p+n+t−1)  # its position p+n+t−1, counted from the cache

(T5 derives positions and the causal mask from the cache length; a ``decoder_attention_mask`` gets
``p`` leading ones at every step.) Without a cache (``use_cache=False``) every step runs ``[P; embed(all
ids)]``, as ``forward`` does. Inside ``generate()`` the first step's logits (and decoder hidden states,
when asked for) still hold the ``p`` prompt positions; only ``logits[:, −1]`` is read.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..core.method import BaseFn, LayerAdapter, MethodError, register
from ._model_level import (
    INPUT_EMBEDDINGS,
    batch_and_length,
    cache_argument,
    forward_accepts,
    prepend_ones,
    shared_state,
    single_adapter,
)

INITS = ("vocab", "random")
IGNORE_INDEX = -100


class PromptState(nn.Module):
    """Per-call bookkeeping: the sequence length right after this adapter prepended its prompt, and the
    hook that puts a decoder-side prompt into each step of one ``generate()`` call."""

    def __init__(self) -> None:
        super().__init__()
        self.length: int | None = None
        self.generate_hook: RemovableHandle | None = None

    def drop_generate_hook(self) -> None:
        if self.generate_hook is not None:
            self.generate_hook.remove()
            self.generate_hook = None


def check_token_model(model: nn.Module, method: str) -> None:
    """The model must embed tokens with an ``nn.Embedding`` and accept ``inputs_embeds``."""
    getter = getattr(model, "get_input_embeddings", None)
    emb = getter() if callable(getter) else None
    emb = getattr(emb, "base", emb)  # seen through an adapter wrapper
    if not isinstance(emb, nn.Embedding):
        kind = "none" if emb is None else type(emb).__name__
        raise MethodError(f"{method} needs a model whose input is token ids embedded by an nn.Embedding "
                          f"(get_input_embeddings()); {type(model).__name__} has {kind}")
    if not forward_accepts(model, "inputs_embeds"):
        raise MethodError(f"{method} needs a model whose forward accepts inputs_embeds; "
                          f"{type(model).__name__}.forward does not")


def _is_encoder_decoder(model: nn.Module) -> bool:
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


@register("prompt_tuning")
class PromptTuning(LayerAdapter):
    family = "input-space"
    insertion = "input"
    summary = "p trainable soft-prompt vectors prepended to the token embeddings; the model is frozen."
    formula = "p·d (in total)"
    mergeable = False
    noop_at_init = False
    supports_mixed_batch = False
    stackable = False
    size_knob: ClassVar[str | None] = "num_virtual_tokens"
    target_types: ClassVar[tuple[type[nn.Module], ...]] = (nn.Embedding,)
    default_targets: ClassVar[Any] = INPUT_EMBEDDINGS

    class Testing:
        config: ClassVar[dict[str, Any]] = {"num_virtual_tokens": 4}
        skip: ClassVar[dict[str, str]] = {
            "mlp": "the MLP takes feature vectors, not token ids",
            "vit": "ViT embeds pixel patches; soft prompts for images are visual prompt tuning, a separate method",
        }

    @dataclasses.dataclass
    class Config:
        num_virtual_tokens: int = 20
        init: str = "vocab"  # "vocab": embeddings of random vocabulary tokens; "random": U(-0.5, 0.5)
        init_token_ids: list[int] | None = None  # init from these tokens' embeddings (cycled), e.g. class names

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        if cfg.num_virtual_tokens < 1:
            raise MethodError(f"prompt_tuning: num_virtual_tokens must be ≥ 1, got {cfg.num_virtual_tokens}")
        if cfg.init not in INITS:
            raise MethodError(f"prompt_tuning: init must be one of {', '.join(INITS)}, got {cfg.init!r}")
        if cfg.init_token_ids is not None and not cfg.init_token_ids:
            raise MethodError("prompt_tuning: init_token_ids is empty")

    @classmethod
    def check_model(cls, model: nn.Module, cfg: Config) -> None:
        check_token_model(model, cls.name)

    @classmethod
    def layer_configs(cls, bases: dict[str, nn.Module], cfg: Config) -> dict[str, Any]:
        """An encoder-decoder model matches both stacks' embeddings: the prompt goes on the encoder's."""
        encoder = [n for n in bases if "encoder" in n.split(".")]
        if len(bases) == 2 and len(encoder) == 1 and any("decoder" in n.split(".") for n in bases):
            return {encoder[0]: cfg}
        return {n: cfg for n in bases}

    @classmethod
    def build_shared(cls, targets: dict[str, nn.Module], cfg: Config) -> nn.Module:
        if len(targets) != 1:
            raise MethodError(f"prompt_tuning: the prompt lives on the one input embedding; {len(targets)} "
                              f"modules matched ({', '.join(targets)}); name one in targets=[...]")
        return PromptState()

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        vocab, d = base.weight.shape
        p = cfg.num_virtual_tokens
        if cfg.init_token_ids is not None:
            ids = torch.tensor(cfg.init_token_ids, dtype=torch.long)
            if int(ids.min()) < 0 or int(ids.max()) >= vocab:
                raise MethodError(f"prompt_tuning: init_token_ids must lie in [0, {vocab}), got {cfg.init_token_ids}")
            init = base.weight.detach()[ids.repeat(p // len(ids) + 1)[:p].to(base.weight.device)].float()
        elif cfg.init == "vocab":
            init = base.weight.detach()[torch.randint(0, vocab, (p,)).to(base.weight.device)].float()
        else:
            init = torch.rand(p, d) - 0.5
        self.prompt = nn.Parameter(init.clone())  # on the embedding's device (meta models count without data)

    # --- layer level: the embedding module itself is unchanged --------------------------------------
    def forward(self, x: Tensor, base_fn: BaseFn) -> Tensor:
        return base_fn(x)

    def reference_forward(self, x: Tensor, base: nn.Module) -> Tensor:
        return base(x)

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Config) -> int:
        return cfg.num_virtual_tokens * int(base.weight.shape[1])

    # --- model level ---------------------------------------------------------------------------------
    @classmethod
    def _prepend(cls, model: nn.Module, name: str, kwargs: dict[str, Any], keep_ids: bool) -> dict[str, Any]:
        past = cache_argument(kwargs)
        if past is not None and hasattr(past, "get_seq_length") and past.get_seq_length() > 0:
            return kwargs  # continuing a cache that already holds the prompt
        layer_name, adapter = single_adapter(model, name, cls)
        if _is_encoder_decoder(model):
            if "decoder" in layer_name.split("."):
                return cls._prepend_decoder(model, name, layer_name, adapter, kwargs)
            keep_ids = False  # seq2seq generate() takes the encoder's inputs_embeds alone
        batch, n, device = batch_and_length(kwargs)
        kwargs = dict(kwargs)
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            embeds = model.get_input_embeddings()(kwargs["input_ids"])  # through the wrapper: other adapters apply
        if not keep_ids:
            kwargs.pop("input_ids", None)
        p = adapter.cfg.num_virtual_tokens
        prompt = adapter.prompt.to(device=embeds.device, dtype=embeds.dtype).expand(batch, -1, -1)
        kwargs["inputs_embeds"] = torch.cat([prompt, embeds], dim=1)
        kwargs["attention_mask"] = prepend_ones(kwargs.get("attention_mask"), batch, n, p, device)
        if isinstance(kwargs.get("token_type_ids"), Tensor):
            tt = kwargs["token_type_ids"]
            kwargs["token_type_ids"] = torch.cat([tt.new_zeros(batch, p), tt], dim=1)
        if isinstance(kwargs.get("position_ids"), Tensor):
            pos = kwargs["position_ids"]
            lead = torch.arange(p, device=pos.device, dtype=pos.dtype).expand(pos.shape[0], p)
            kwargs["position_ids"] = torch.cat([lead, pos + p], dim=1)
        if _is_encoder_decoder(model):
            return kwargs  # labels and logits belong to the decoder
        labels = kwargs.get("labels")
        if isinstance(labels, Tensor) and labels.dim() == 2 and labels.shape[1] == n:
            kwargs["labels"] = torch.cat([labels.new_full((labels.shape[0], p), IGNORE_INDEX), labels], dim=1)
        state = shared_state(model, name)
        if state is not None:
            state.length = n + p
        return kwargs

    @classmethod
    def _prepend_decoder(cls, model: nn.Module, name: str, layer_name: str, adapter: PromptTuning,
                         kwargs: dict[str, Any]) -> dict[str, Any]:
        """Encoder-decoder models, prompt on the decoder (``forward``): :meth:`_decoder_prompt`, and the
        returned logits will drop the ``p`` prompt positions."""
        kwargs = cls._decoder_prompt(model, layer_name, adapter, kwargs)
        state = shared_state(model, name)
        if state is not None:
            state.length = int(kwargs["decoder_inputs_embeds"].shape[1])
        return kwargs

    @classmethod
    def _decoder_prompt(cls, model: nn.Module, layer_name: str, adapter: PromptTuning,
                        kwargs: dict[str, Any]) -> dict[str, Any]:
        """``decoder_inputs_embeds = [P; embed(decoder ids)]`` (p + n positions); a decoder mask gets ``p``
        leading ones and labels aligned with the ``n`` decoder ids ``p`` leading ``-100``."""
        kwargs = dict(kwargs)
        ids, labels = kwargs.pop("decoder_input_ids", None), kwargs.get("labels")
        embeds = kwargs.pop("decoder_inputs_embeds", None)
        if embeds is None:
            if ids is None and isinstance(labels, Tensor):
                ids = model.model.prepare_decoder_input_ids_from_labels(labels=labels)
            if ids is None:
                raise MethodError("prompt_tuning: a decoder-side prompt needs decoder_input_ids or labels")
            embeds = model.adapted_layers()[layer_name](ids)
        batch, n, p = int(embeds.shape[0]), int(embeds.shape[1]), adapter.cfg.num_virtual_tokens
        prompt = adapter.prompt.to(device=embeds.device, dtype=embeds.dtype).expand(batch, -1, -1)
        kwargs["decoder_inputs_embeds"] = torch.cat([prompt, embeds], dim=1)
        mask = kwargs.get("decoder_attention_mask")
        if mask is not None:
            kwargs["decoder_attention_mask"] = prepend_ones(mask, batch, n, p, embeds.device)
        if isinstance(labels, Tensor) and labels.dim() == 2 and labels.shape[1] == n:
            kwargs["labels"] = torch.cat([labels.new_full((batch, p), IGNORE_INDEX), labels], dim=1)
        return kwargs

    @classmethod
    def _decoder_step(cls, model: nn.Module, layer_name: str, adapter: PromptTuning,
                      kwargs: dict[str, Any]) -> dict[str, Any]:
        """One decoding step of ``generate()`` with the prompt on the decoder.

        Empty (or no) cache: ``[P; embed(ids)]`` (:meth:`_decoder_prompt`), so the cache now holds the
        prompt's keys/values. Later steps: the cache already counts the ``p`` prompt positions (T5 takes
        positions and the causal mask from its length); only a 2-D ``decoder_attention_mask``, which
        ``generate()`` keeps over the ids alone, gets its ``p`` leading ones.
        """
        past = cache_argument(kwargs)
        if past is None or past.get_seq_length() == 0:
            return cls._decoder_prompt(model, layer_name, adapter, kwargs)
        mask = kwargs.get("decoder_attention_mask")
        if isinstance(mask, Tensor):
            p = adapter.cfg.num_virtual_tokens
            kwargs = {**kwargs, "decoder_attention_mask": prepend_ones(mask, mask.shape[0], mask.shape[-1], p,
                                                                       mask.device)}
        return kwargs

    @classmethod
    def _hook_decoder_steps(cls, model: nn.Module, name: str, layer_name: str, adapter: PromptTuning) -> None:
        """For one ``generate()`` call: every forward of the wrapped model goes through :meth:`_decoder_step`
        (the hook is removed by :meth:`transform_model_outputs` when ``generate()`` returns or raises)."""
        state = shared_state(model, name)
        if not isinstance(state, PromptState):
            raise MethodError(f"prompt_tuning: adapter {name!r} has no prompt state; attach it again")
        state.drop_generate_hook()

        def step(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
            if args:
                raise MethodError("prompt_tuning: a decoder-side prompt needs the decoding steps' inputs by name")
            return args, cls._decoder_step(model, layer_name, adapter, kwargs)

        state.generate_hook = model.model.register_forward_pre_hook(step, with_kwargs=True)

    @classmethod
    def transform_model_inputs(cls, model: nn.Module, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        state = shared_state(model, name)
        if isinstance(state, PromptState):
            state.drop_generate_hook()  # left by a generate() whose cleanup never ran
        return cls._prepend(model, name, kwargs, keep_ids=False)

    @classmethod
    def transform_generate_inputs(cls, model: nn.Module, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        if "input_ids" not in kwargs and "inputs_embeds" not in kwargs:
            raise MethodError("prompt_tuning: generate() needs input_ids (or inputs_embeds) to prepend the prompt to")
        layer_name, adapter = single_adapter(model, name, cls)
        if _is_encoder_decoder(model) and "decoder" in layer_name.split("."):
            cls._hook_decoder_steps(model, name, layer_name, adapter)  # the encoder's inputs stay as they are
            return kwargs
        return cls._prepend(model, name, kwargs, keep_ids=True)

    @classmethod
    def transform_model_outputs(cls, model: nn.Module, name: str, kwargs: dict[str, Any], outputs: Any) -> Any:
        state = shared_state(model, name)
        length = None if state is None else state.length
        if state is not None:
            state.length = None
            if outputs is None and isinstance(state, PromptState):
                state.drop_generate_hook()  # generate() returned or raised
        if outputs is None or length is None:
            return outputs
        p = single_adapter(model, name, cls)[1].cfg.num_virtual_tokens

        def strip(t: Any) -> Any:
            return t[:, p:] if isinstance(t, Tensor) and t.dim() >= 3 and t.shape[1] == length else t

        for key in ("logits", "last_hidden_state"):
            if isinstance(outputs, dict) and outputs.get(key) is not None:
                outputs[key] = strip(outputs[key])
        if isinstance(outputs, dict) and isinstance(outputs.get("hidden_states"), tuple):
            outputs["hidden_states"] = tuple(strip(h) for h in outputs["hidden_states"])
        return outputs
