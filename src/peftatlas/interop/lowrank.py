"""Converters of the low-rank family: LoRA, DoRA, VeRA, VB-LoRA (PEFT ``LORA``, ``VERA``, ``VBLORA``).

Each class reads like a table: which PEFT tensor is which of ours, which config field is which
hyperparameter, and which PEFT features must stay off because our method does not have them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..core.layer_types import CONV1D, CONV2D, EMBEDDING, LAYER_TYPES, layer_type
from .registry import Converter, InteropError, check_shape, register_converter

# LoRA options PEFT has and plain LoRA here does not (they change the forward or the base weights).
_LORA_OFF: dict[str, Any] = {
    "fan_in_fan_out": False, "bias": "none", "lora_bias": False, "use_dora": False,
    "rank_pattern": {}, "alpha_pattern": {}, "use_qalora": False, "alora_invocation_tokens": None,
    "layer_replication": None, "velora_config": None, "monteclora_config": None, "arrow_config": None,
    "kasa_config": None, "use_bdlora": None, "target_parameters": None, "trainable_token_indices": None,
    "megatron_config": None,
}
# LoRA initialisations that rewrite the base weights (the adapter is relative to a modified model).
_BASE_REWRITING_INITS = ("pissa", "olora", "corda", "loftq")


@register_converter
class LoRAConverter(Converter):
    """LoRA ↔ PEFT ``LORA``: ``lora_A.weight`` = A (r × d_in), ``lora_B.weight`` = B (d_out × r).

    Per layer type (``W`` as in :mod:`peftatlas.core.layer_types`): GPT-2 ``Conv1D`` stores the same
    A, B (PEFT's ``fan_in_fan_out`` only transposes its merge); a conv stores A as a conv kernel
    ``(r, in, *k)`` and B as a 1×1 conv ``(out, r, 1…)`` — the same numbers reshaped; an embedding
    stores ``lora_embedding_A`` = A (r × vocab) and ``lora_embedding_B`` = B (dim × r).
    ``rank_pattern`` / ``alpha_pattern`` map one to one. PEFT's trained biases (``bias="lora_only"`` or
    ``"all"``): each adapted layer's saved ``base_layer.bias`` = ``b0 + Δb`` with our ``bias=True``.
    """

    method = "lora"
    peft_type = "LORA"
    bias_field = "bias"
    layer_keys: ClassVar[dict[str, str]] = {"lora_A.weight": "lora_A", "lora_B.weight": "lora_B"}
    fields: ClassVar[dict[str, str]] = {"r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout",
                                        "use_rslora": "rslora", "rank_pattern": "rank_pattern",
                                        "alpha_pattern": "alpha_pattern"}
    fixed: ClassVar[dict[str, Any]] = {**{k: v for k, v in _LORA_OFF.items() if not k.endswith("_pattern")},
                                       "init_lora_weights": True}
    peft_layer_types: ClassVar[tuple[str, ...]] = LAYER_TYPES
    _EMBEDDING_KEYS: ClassVar[dict[str, str]] = {"lora_A.weight": "lora_embedding_A",
                                                 "lora_B.weight": "lora_embedding_B"}

    @classmethod
    def peft_layer_suffixes(cls) -> tuple[str, ...]:
        return (*cls.layer_keys, *cls._EMBEDDING_KEYS.values())

    @classmethod
    def to_layer_layout(cls, tensors: dict[str, Tensor], base: nn.Module) -> dict[str, Tensor]:
        kind = layer_type(base)
        if kind == EMBEDDING:
            return {cls._EMBEDDING_KEYS[k]: v for k, v in tensors.items()}
        if kind in (CONV1D, CONV2D):
            A, B = tensors["lora_A.weight"], tensors["lora_B.weight"]
            ones = (1,) * (base.weight.dim() - 2)
            return {"lora_A.weight": A.reshape(A.shape[0], *base.weight.shape[1:]),
                    "lora_B.weight": B.reshape(*B.shape, *ones)}
        return tensors

    @classmethod
    def from_layer_layout(cls, tensors: dict[str, Tensor], base: nn.Module) -> dict[str, Tensor]:
        kind = layer_type(base)
        if kind == EMBEDDING:
            back = {v: k for k, v in cls._EMBEDDING_KEYS.items()}
            return {back.get(k, k): v for k, v in tensors.items()}
        if kind in (CONV1D, CONV2D):
            return {k: v.reshape(v.shape[0], -1) for k, v in tensors.items()}
        return tensors

    @classmethod
    def accepts(cls, peft_cfg: dict[str, Any]) -> bool:
        return not peft_cfg.get("use_dora", False)

    @classmethod
    def check_fixed(cls, peft_cfg: dict[str, Any]) -> None:
        init = peft_cfg.get("init_lora_weights", True)
        if isinstance(init, str) and init.lower().startswith(_BASE_REWRITING_INITS):
            raise InteropError(f"PEFT LoRA with init_lora_weights={init!r} rewrote the base weights; the adapter "
                               "only makes sense on that modified model (convert it with PEFT's "
                               "path_initial_model_for_weight_conversion first)")
        super().check_fixed({k: v for k, v in peft_cfg.items() if k != "init_lora_weights"})


@register_converter
class VeRAConverter(Converter):
    """VeRA ↔ PEFT ``VERA``: ``vera_lambda_b`` = b (d_out), ``vera_lambda_d`` = d (r).

    The frozen bases: both libraries draw them bit-identically from the seed
    (``projection_prng_key``). With ``save_projection=True`` (PEFT's default) the export also
    stores them as ``base_model.vera_A`` / ``base_model.vera_B``; an import checks stored bases
    against the regenerated ones and refuses a file whose bases differ (peftatlas keeps only the
    seed, so it cannot hold arbitrary bases).
    """

    method = "vera"
    peft_type = "VERA"
    layer_keys: ClassVar[dict[str, str]] = {"vera_lambda_b": "vera_b", "vera_lambda_d": "vera_d"}
    fields: ClassVar[dict[str, str]] = {"r": "r", "projection_prng_key": "projection_seed",
                                        "vera_dropout": "dropout", "d_initial": "d_init"}
    fixed: ClassVar[dict[str, Any]] = {"fan_in_fan_out": False, "bias": "none"}
    export_only: ClassVar[dict[str, Any]] = {"init_weights": True}

    @classmethod
    def config_to_peft(cls, cfg: Any, save_projection: bool = True, **options: Any) -> dict[str, Any]:
        return {**super().config_to_peft(cfg, **options), "save_projection": bool(save_projection)}

    @classmethod
    def shared_to_peft(cls, model: Any, name: str, save_projection: bool = True, **options: Any) -> dict[str, Tensor]:
        if not save_projection:
            return {}
        shared = model.shared[name]
        return {"vera_A": shared.A, "vera_B": shared.B}

    @classmethod
    def shared_from_peft(cls, model: Any, name: str, tensors: dict[str, Tensor], peft_cfg: dict[str, Any]
                         ) -> dict[str, Tensor]:
        unknown = sorted(set(tensors) - {"vera_A", "vera_B"})
        if unknown:
            raise InteropError(f"vera: unexpected model-wide tensor(s) {unknown}")
        stored = {k: tensors[k] for k in ("vera_A", "vera_B") if k in tensors}
        if peft_cfg.get("save_projection", True) and len(stored) != 2:
            raise InteropError("vera: the config says save_projection=true but the file lacks "
                               "base_model.vera_A / base_model.vera_B")
        shared = model.shared[name]
        for key, ours in (("vera_A", shared.A), ("vera_B", shared.B)):
            if key in stored:
                check_shape(f"base_model.{key}", stored[key].shape, ours.shape)
                if not torch.equal(stored[key].to(ours), ours):
                    seed = peft_cfg.get("projection_prng_key")
                    raise InteropError(
                        f"vera: the stored {key} differs from the basis regenerated from projection_prng_key={seed}; "
                        "peftatlas keeps only the seed and cannot hold arbitrary bases")
        return {}  # the bases are buffers regenerated from the seed, nothing to fill


@register_converter
class DoRAConverter(Converter):
    """DoRA ↔ PEFT ``LORA`` with ``use_dora=True``: A, B as LoRA, ``lora_magnitude_vector`` = m.

    Both normalise each output row of ``W0 + s·BA`` and treat the norm as a constant in backprop
    (PEFT always; ours by default, ``detach_norm=True`` on import).
    """

    method = "dora"
    peft_type = "LORA"
    layer_keys: ClassVar[dict[str, str]] = {"lora_A.weight": "dora_A", "lora_B.weight": "dora_B",
                                            "lora_magnitude_vector": "dora_m"}
    fields: ClassVar[dict[str, str]] = {"r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout"}
    fixed: ClassVar[dict[str, Any]] = {**_LORA_OFF, "use_dora": True, "use_rslora": False, "init_lora_weights": True}

    @classmethod
    def accepts(cls, peft_cfg: dict[str, Any]) -> bool:
        return bool(peft_cfg.get("use_dora", False))

    @classmethod
    def check_fixed(cls, peft_cfg: dict[str, Any]) -> None:
        LoRAConverter.check_fixed({**peft_cfg, "use_dora": False})
        patterns = [k for k in ("rank_pattern", "alpha_pattern") if peft_cfg.get(k)]
        if patterns:
            raise InteropError(f"PEFT DoRA adapter uses {', '.join(patterns)}; peftatlas dora has one r and alpha")
        if peft_cfg.get("use_rslora"):
            raise InteropError("PEFT DoRA adapter uses use_rslora=True; peftatlas dora scales by alpha / r only")


@register_converter
class VBLoRAConverter(Converter):
    """VB-LoRA ↔ PEFT ``VBLORA``: the logits per layer and the shared bank ``base_model.vblora_vector_bank``.

    Only ``init="paper"`` converts: our default also subtracts the frozen initial product
    ``B₀A₀`` (a no-op start), which PEFT's VB-LoRA has no place for.
    """

    method = "vblora"
    peft_type = "VBLORA"
    layer_keys: ClassVar[dict[str, str]] = {"vblora_logits_A": "logits_A", "vblora_logits_B": "logits_B"}
    fields: ClassVar[dict[str, str]] = {"r": "r", "num_vectors": "num_vectors", "vector_length": "vector_length",
                                        "topk": "topk", "init_logits_std": "init_logits_std",
                                        "init_vector_bank_bound": "init_bank_bound"}
    fixed: ClassVar[dict[str, Any]] = {"fan_in_fan_out": False, "bias": "none", "save_only_topk_weights": False,
                                       "vblora_dropout": 0.0}
    peft_compatible: ClassVar[dict[str, Any]] = {"init": "paper"}

    @classmethod
    def config_to_peft(cls, cfg: Any, **options: Any) -> dict[str, Any]:
        if cfg.init != "paper":
            raise InteropError("vblora: only init='paper' converts to PEFT; the default init='noop' subtracts the "
                               "frozen initial product B0·A0, which PEFT's VB-LoRA cannot represent")
        return super().config_to_peft(cfg, **options)

    @classmethod
    def config_from_peft(cls, peft_cfg: dict[str, Any], layers: dict[str, dict[str, Tensor]]) -> dict[str, Any]:
        return {**super().config_from_peft(peft_cfg, layers), "init": "paper"}

    @classmethod
    def shared_to_peft(cls, model: Any, name: str, **options: Any) -> dict[str, Tensor]:
        return {"vblora_vector_bank": model.shared[name].bank}

    @classmethod
    def shared_from_peft(cls, model: Any, name: str, tensors: dict[str, Tensor], peft_cfg: dict[str, Any]
                         ) -> dict[str, Tensor]:
        if set(tensors) != {"vblora_vector_bank"}:
            raise InteropError(f"vblora: expected exactly base_model.vblora_vector_bank, found {sorted(tensors)}")
        return {"bank": tensors["vblora_vector_bank"]}
