"""Converters of the rotation family: OFT / OFTv2, BOFT, HRA (PEFT ``OFT``, ``BOFT``, ``HRA``).

Conventions that differ (checked numerically by the interop tests):

* PEFT rotates row vectors (``x @ R``), we rotate column vectors (``R x``), so PEFT's ``R`` is our
  ``Rᵀ``. For a Cayley rotation ``R(Q)ᵀ = R(−Q)``.
* PEFT's exact Cayley is ``(I − Q)(I + Q)⁻¹ = R_ours(−Q)``: with the transpose, the same ``Q``.
* PEFT's Neumann series is ``I + 2Q + … + 2Q^{n−2} + Q^{n−1}`` = ours with ``t = n − 1`` terms
  (PEFT's ``n`` = 3 and 4 coincide) and the same sign as ours, so the transpose flips ``Q``.
* BOFT stores full ``b × b`` blocks and skew-symmetrises them (``½(P − Pᵀ)``); we store the packed
  upper triangle. HRA stores the reflection vectors as columns (``d_in × r``), we as rows.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from ..methods._rotation import packed_size, skew
from .registry import Converter, InteropError, register_converter

_ROT_OFF: dict[str, Any] = {"fan_in_fan_out": False, "bias": "none", "module_dropout": 0.0, "coft": False,
                            "block_share": False}


def _peft_terms(ours: int) -> int:
    """PEFT's ``num_cayley_neumann_terms`` giving our ``t``-term series (exists for t ≥ 3)."""
    if ours < 3:
        raise InteropError(f"oft: a Neumann series of {ours} term(s) has no PEFT equivalent (PEFT's shortest "
                           "non-trivial series equals ours with 3 terms)")
    return 3 if ours == 3 else ours + 1


def _our_terms(peft: int) -> int:
    if peft < 3:
        raise InteropError(f"PEFT OFT with num_cayley_neumann_terms={peft} has no peftatlas equivalent (need ≥ 3)")
    return 3 if peft in (3, 4) else peft - 1


def _packed_from_skew(Q: Tensor, b: int) -> Tensor:
    rows, cols = torch.triu_indices(b, b, offset=1, device=Q.device)
    return Q[..., rows, cols]


@register_converter
class OFTConverter(Converter):
    """OFT (exact Cayley) ↔ PEFT ``OFT`` with ``use_cayley_neumann=False``: ``oft_R.weight`` = packed Q."""

    method = "oft"
    peft_type = "OFT"
    neumann = False
    layer_keys: ClassVar[dict[str, str]] = {"oft_R.weight": "oft_q"}
    fixed: ClassVar[dict[str, Any]] = {**_ROT_OFF, "r": 0}
    export_only: ClassVar[dict[str, Any]] = {"init_weights": True}

    @classmethod
    def accepts(cls, peft_cfg: dict[str, Any]) -> bool:
        return bool(peft_cfg.get("use_cayley_neumann", True)) == cls.neumann

    @classmethod
    def _sign(cls) -> float:
        return -1.0 if cls.neumann else 1.0

    @classmethod
    def config_to_peft(cls, cfg: Any, **options: Any) -> dict[str, Any]:
        if options:
            raise InteropError(f"{cls.method}: unknown export option(s) {sorted(options)}")
        if (cfg.cayley == "neumann") != cls.neumann:
            raise InteropError(f"{cls.method} with cayley={cfg.cayley!r} is not this converter's form")
        out = {**cls.fixed, **cls.export_only, "oft_block_size": cfg.block_size, "use_cayley_neumann": cls.neumann}
        if cls.neumann:
            out["num_cayley_neumann_terms"] = _peft_terms(cfg.neumann_terms)
        return out

    @classmethod
    def config_from_peft(cls, peft_cfg: dict[str, Any], layers: dict[str, dict[str, Tensor]]) -> dict[str, Any]:
        cls.check_fixed({k: v for k, v in peft_cfg.items() if k != "r"})
        b = int(peft_cfg.get("oft_block_size") or 0)
        if b <= 0:
            n_params = next(iter(layers.values()))["oft_R.weight"].shape[-1]
            b = next(k for k in range(2, 4096) if packed_size(k) == n_params)
        out: dict[str, Any] = {"block_size": b, "cayley": "neumann" if cls.neumann else "exact"}
        if cls.neumann:
            out["neumann_terms"] = _our_terms(int(peft_cfg.get("num_cayley_neumann_terms", 5)))
        return out

    @classmethod
    def layer_to_peft(cls, adapter: Any) -> dict[str, Tensor]:
        return {"oft_R.weight": cls._sign() * adapter.oft_q.detach()}

    @classmethod
    def layer_from_peft(cls, tensors: dict[str, Tensor], adapter: Any) -> dict[str, Tensor]:
        return {"oft_q": cls._sign() * tensors["oft_R.weight"]}


@register_converter
class OFTv2Converter(OFTConverter):
    """OFTv2 (Cayley–Neumann) ↔ PEFT ``OFT`` with ``use_cayley_neumann=True`` (PEFT's default)."""

    method = "oftv2"
    neumann = True


@register_converter
class BOFTConverter(Converter):
    """BOFT with one butterfly factor ↔ PEFT ``BOFT``: ``boft_R`` = skew blocks, ``boft_s`` = s.

    PEFT 0.21 computes several butterfly factors only with its CUDA kernel (on CPU it silently
    keeps one), so its multi-factor layout cannot be checked here and is refused both ways.
    """

    method = "boft"
    peft_type = "BOFT"
    layer_keys: ClassVar[dict[str, str]] = {"boft_R": "boft_q", "boft_s": "boft_s"}
    fixed: ClassVar[dict[str, Any]] = {"fan_in_fan_out": False, "bias": "none", "boft_dropout": 0.0,
                                       "boft_n_butterfly_factor": 1, "boft_block_num": 0}
    export_only: ClassVar[dict[str, Any]] = {"init_weights": True}
    peft_compatible: ClassVar[dict[str, Any]] = {"n_factors": 1}

    @classmethod
    def config_to_peft(cls, cfg: Any, **options: Any) -> dict[str, Any]:
        if options:
            raise InteropError(f"boft: unknown export option(s) {sorted(options)}")
        if cfg.n_factors != 1 or cfg.cayley != "exact":
            raise InteropError(f"boft: only n_factors=1 with the exact Cayley transform converts to PEFT "
                               f"(got n_factors={cfg.n_factors}, cayley={cfg.cayley!r}); PEFT 0.21 needs its CUDA "
                               "kernel for more factors")
        return {**cls.fixed, **cls.export_only, "boft_block_size": cfg.block_size}

    @classmethod
    def config_from_peft(cls, peft_cfg: dict[str, Any], layers: dict[str, dict[str, Tensor]]) -> dict[str, Any]:
        cls.check_fixed(peft_cfg)
        R = next(iter(layers.values()))["boft_R"]
        return {"block_size": int(R.shape[-1]), "n_factors": int(R.shape[0]), "scale": True, "cayley": "exact"}

    @classmethod
    def layer_to_peft(cls, adapter: Any) -> dict[str, Tensor]:
        b = adapter.cfg.block_size
        s = adapter.boft_s if adapter.boft_s is not None else torch.ones(adapter.dims(adapter._base)[0])
        return {"boft_R": skew(adapter.boft_q.detach(), b), "boft_s": s.detach().reshape(-1, 1)}

    @classmethod
    def layer_from_peft(cls, tensors: dict[str, Tensor], adapter: Any) -> dict[str, Tensor]:
        P = tensors["boft_R"]
        Q = 0.5 * (P - P.transpose(-1, -2))
        return {"boft_q": _packed_from_skew(Q, P.shape[-1]), "boft_s": tensors["boft_s"].reshape(-1)}


@register_converter
class HRAConverter(Converter):
    """HRA ↔ PEFT ``HRA``: ``hra_u`` (d_in × r, columns) = our ``hra_u`` (r × d_in, rows), transposed.

    Our optional orthogonality regulariser ``lam`` is a training-loss term, not part of the adapter's
    function; PEFT's format has no field for it (dropped on export, 0 on import).
    """

    method = "hra"
    peft_type = "HRA"
    layer_keys: ClassVar[dict[str, str]] = {"hra_u": "hra_u"}
    fields: ClassVar[dict[str, str]] = {"r": "r"}
    fixed: ClassVar[dict[str, Any]] = {"apply_GS": False, "bias": "none"}
    export_only: ClassVar[dict[str, Any]] = {"init_weights": True}

    @classmethod
    def layer_to_peft(cls, adapter: Any) -> dict[str, Tensor]:
        return {"hra_u": adapter.hra_u.detach().t()}

    @classmethod
    def layer_from_peft(cls, tensors: dict[str, Tensor], adapter: Any) -> dict[str, Tensor]:
        return {"hra_u": tensors["hra_u"].t()}
