"""CLOVER — cross-layer orthogonal vectors (Meng, Tang, Jiang, Zhang, ICML 2025, arXiv:2411.17426).

Hypothesis: an attention head's Q-K pair and V-O pair are each one low-rank bilinear map,
``W_Q,hᵀ W_K,h`` and ``W_O,h W_V,h`` (rank ≤ d_h); fine-tuning should recombine *all* the orthogonal
vectors of these cross-layer products, i.e. train the d_h × d_h "singular value matrix" between
their singular bases (a full-rank update per head at LoRA-like cost).

Pseudocode, per head h (W_Q,h, W_K,h, W_V,h ∈ R^{d_h×d}, W_O,h ∈ R^{d×d_h}; GQA maps h to its kv head)::

    W_Q,hᵀ W_K,h = U_Q Σ U_Kᵀ,   W_O,h W_V,h = U_O Σ' U_Vᵀ      # via QR of each factor + SVD of the d_h×d_h core
    D_h ← 0 (d_h × d_h), D'_h ← 0                               # trainable "S − Σ"
    target:  W_Q,hᵀ W_K,h → U_Q (Σ + D) U_Kᵀ,   W_O,h W_V,h → U_O (Σ' + D') U_Vᵀ

What is implemented (the engine adapts one linear layer at a time and never edits base weights):
the Q-K change is carried by the *query* projection and the V-O change by the *output* projection,
as per-head d_h × d_h maps built from frozen factors of the pair:

    q_h ← q_h + L_h D_hᵀ R_h (q_h − b_Q,h)      with L_h = (V_cᵀ R_K)⁻¹, R_h = Pᵀ R_Q⁻ᵀ
    z_h ← z_h + L'_h D'_h R'_h z_h  (input of O) with L'_h = R_O⁻¹ P', R'_h = (R_Vᵀ V'_c)⁻¹

(``A_Qᵀ = Q_Q R_Q`` etc. are QR factors, ``R_Q R_Kᵀ = P Σ V_cᵀ``). Then exactly
``(W_Q + ΔW_Q)_hᵀ W_K,h = U_Q (Σ + D) U_Kᵀ`` and ``W_O,h (I + N'_h) W_V,h = U_O (Σ' + D') U_Vᵀ``
(checked in the tests). Key and value projections get no adapter. The per-head factors
(``2 d_h²`` numbers each) are stored in the adapter file, so loading needs no partner layer.

Deviations, stated: with a key bias the Q-side update also shifts the linear term ``xᵀU_Q D C⁻¹ b_K``;
a value bias passes through the V-O map (a constant shift). With rotary position embeddings (Llama)
the Q-K update is applied before the rotation, so it is exact only for the pre-RoPE bilinear form —
the paper instead decomposes K alone for RoPE models (not implemented; use ``pairs="vo"``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.method import BaseFn, LayerAdapter, MethodError, register
from ._rotation import effective_bias
from ._svd import batched_svd

ROLES = {
    "query": re.compile(r"(^|.*\.)(q_proj|query|q_lin|q)$"),
    "key": re.compile(r"(^|.*\.)(k_proj|key|k_lin|k)$"),
    "value": re.compile(r"(^|.*\.)(v_proj|value|v_lin|v)$"),
    "output": re.compile(r"(^|.*\.)(o_proj|out_proj|out_lin|o|attention\.output\.dense)$"),
}
ATTENTION_PROJECTIONS = (r".*\.(q_proj|k_proj|v_proj|o_proj|out_proj|query|key|value|q_lin|k_lin|v_lin|out_lin"
                         r"|q|k|v|o|attention\.output\.dense)")
PAIRS = {"qk,vo": ("qk", "vo"), "qk": ("qk",), "vo": ("vo",)}


def role_of(name: str) -> str | None:
    for role, pattern in ROLES.items():
        if pattern.fullmatch(name):
            return role
    return None


def _parent(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _upper_qr(A: Tensor) -> tuple[Tensor, Tensor]:
    """Batched reduced QR with ``diag(R) ≥ 0`` (a canonical, deterministic factorisation)."""
    Q, R = torch.linalg.qr(A)
    sign = torch.sign(torch.diagonal(R, dim1=-2, dim2=-1))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return Q * sign[..., None, :], R * sign[..., :, None]


def qk_factors(W_q: Tensor, W_k: Tensor, head_dim: int) -> tuple[Tensor, Tensor]:
    """Per-query-head ``(L, R)`` with ``ΔW_Q,h = L D_hᵀ R W_Q,h`` realising ``ΔW_Q,hᵀW_K,h = U_Q D U_Kᵀ``."""
    n_q, n_kv = W_q.shape[0] // head_dim, W_k.shape[0] // head_dim
    A_q = W_q.double().reshape(n_q, head_dim, -1)
    A_k = W_k.double().reshape(n_kv, head_dim, -1).repeat_interleave(n_q // n_kv, dim=0)
    _, R_q = _upper_qr(A_q.transpose(1, 2))
    _, R_k = _upper_qr(A_k.transpose(1, 2))
    P, _, Vch = batched_svd(R_q @ R_k.transpose(1, 2))
    P, Vch = P.double(), Vch.double()
    left = torch.linalg.inv(Vch @ R_k)  # (V_cᵀ R_K)⁻¹
    right = P.transpose(1, 2) @ torch.linalg.inv(R_q).transpose(1, 2)  # Pᵀ R_Q⁻ᵀ
    return left.float(), right.float()


def vo_factors(W_o: Tensor, W_v: Tensor, head_dim: int) -> tuple[Tensor, Tensor]:
    """Per-head ``(L, R)`` with ``W_O,h N_h W_V,h = U_O D U_Vᵀ`` for ``N_h = L D R``."""
    n_q, n_kv = W_o.shape[1] // head_dim, W_v.shape[0] // head_dim
    B_o = W_o.double().reshape(W_o.shape[0], n_q, head_dim).transpose(0, 1)  # (n, d_out, d_h)
    A_v = W_v.double().reshape(n_kv, head_dim, -1).repeat_interleave(n_q // n_kv, dim=0)
    _, R_o = _upper_qr(B_o)
    _, R_v = _upper_qr(A_v.transpose(1, 2))
    P, _, Vch = batched_svd(R_o @ R_v.transpose(1, 2))
    P, Vch = P.double(), Vch.double()
    left = torch.linalg.inv(R_o) @ P  # R_O⁻¹ P
    right = torch.linalg.inv(R_v.transpose(1, 2) @ Vch.transpose(1, 2))  # (R_Vᵀ V_c)⁻¹
    return left.float(), right.float()


@register("clover")
class CLOVER(LayerAdapter):
    family = "svd-basis"
    summary = "Train the d_h×d_h core between the singular bases of each head's Q-K and V-O products."
    formula = "query proj: d_out·d_h; output proj: d_in·d_h (key/value projections: none)"
    default_targets: ClassVar[Any] = ATTENTION_PROJECTIONS
    test_config: ClassVar[dict[str, Any]] = {"head_dim": 8}
    test_skip: ClassVar[dict[str, str]] = {"mlp": "CLOVER acts on attention heads; the MLP has none"}
    layer_types: ClassVar[tuple[str, ...]] = ("Linear",)  # per-head q/k, v/o Linear pairs

    @dataclasses.dataclass
    class Config:
        head_dim: int = 0  # required: the attention head size d_h
        pairs: str = "qk,vo"  # which pairs to adapt: "qk,vo", "qk" or "vo" (RoPE models: prefer "vo")
        role: str = "auto"  # resolved per layer ("query" / "output") from the module names

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        if cfg.head_dim < 1:
            raise MethodError("clover: head_dim is required (the attention head size, e.g. 64 for BERT-base, "
                              f"32 for MiniLM-L6, 128 for Llama-2-7B); got {cfg.head_dim}")
        if cfg.pairs not in PAIRS:
            raise MethodError(f"clover: pairs must be one of {sorted(PAIRS)}, got {cfg.pairs!r}")
        if cfg.role not in ("auto", "query", "output"):
            raise MethodError(f"clover: role is resolved from module names; got {cfg.role!r}")

    @classmethod
    def layer_configs(cls, bases: dict[str, nn.Module], cfg: Config) -> dict[str, Config]:
        """Keep query and output projections; attach each one's pair partner (key / value) when present."""
        roles = {n: role_of(n) for n in bases}
        wanted = PAIRS[cfg.pairs]
        out: dict[str, CLOVER.Config] = {}
        for n, role in roles.items():
            if role == "query" and "qk" in wanted:
                keys = [k for k, r in roles.items() if r == "key" and _parent(k) == _parent(n)]
                partner = bases[keys[0]] if keys else None
            elif role == "output" and "vo" in wanted:
                values = [k for k, r in roles.items() if r == "value"]
                best = max(values, key=lambda v: _common_prefix(v, n), default=None)
                partner = bases[best] if best is not None else None
            else:
                continue
            layer_cfg = dataclasses.replace(cfg, role=role)
            object.__setattr__(layer_cfg, "_partner", partner)
            out[n] = layer_cfg
        return out

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        if cfg.role not in ("query", "output"):
            raise MethodError("clover: the role of each layer is resolved by layer_configs(); "
                              "use attach()/add_adapter()")
        object.__setattr__(self, "_base", base)
        d_out, d_in = self.dims(base)
        h = cfg.head_dim
        width = d_out if cfg.role == "query" else d_in
        if width % h:
            raise MethodError(f"clover: head_dim {h} does not divide the {cfg.role} projection's head axis ({width})")
        n = width // h
        partner = cfg.__dict__.pop("_partner", None)
        if partner is not None:
            pw = partner.weight.detach()
            kv_heads = pw.shape[0] // h
            if pw.shape[0] % h or n % max(kv_heads, 1) or (cfg.role == "query" and pw.shape[1] != d_in):
                raise MethodError(f"clover: the {'key' if cfg.role == 'query' else 'value'} partner of shape "
                                  f"{tuple(pw.shape)} does not fit {n} heads of size {h}")
            with torch.no_grad():
                left, right = (qk_factors(base.weight.detach(), pw, h) if cfg.role == "query"
                               else vo_factors(base.weight.detach(), pw, h))
        else:  # loading: the factors come from the adapter file; NaN until then
            left, right = torch.full((n, h, h), math.nan), torch.full((n, h, h), math.nan)
        self.register_buffer("clover_left", left)
        self.register_buffer("clover_right", right)
        self.clover_d = nn.Parameter(torch.zeros(n, h, h))
        self._checked = False

    def head_maps(self) -> Tensor:
        """``N_h`` (n, d_h, d_h): the per-head change applied to q (output side) or to O's input.

        The first eager call checks that the pair factors exist (a data-dependent test that
        ``torch.compile`` cannot trace; a compiled first call skips it and would give NaN outputs)."""
        if not self._checked and not torch.compiler.is_compiling():
            if not torch.isfinite(self.clover_left).all():
                raise MethodError("clover: this layer's pair factors are missing — target the key/value partner "
                                  "projections too (the default targets do) or load a saved adapter")
            self._checked = True
        D = self.clover_d.transpose(1, 2) if self.cfg.role == "query" else self.clover_d
        return self.clover_left @ D @ self.clover_right

    def forward(self, x: Tensor, base_fn: BaseFn) -> Tensor:
        N = self.head_maps()
        n, h, _ = N.shape
        if self.cfg.role == "output":
            z = x.to(N.dtype).reshape(*x.shape[:-1], n, h)
            z = z + torch.einsum("...nj,nkj->...nk", z, N)
            return base_fn(z.reshape(x.shape).to(x.dtype))
        y = base_fn(x)
        bias = effective_bias(base_fn, self._base, x)
        q = y.float() if bias is None else y.float() - bias.float()
        q = q.reshape(*y.shape[:-1], n, h)
        return y + torch.einsum("...nj,nkj->...nk", q, N).reshape(y.shape).to(y.dtype)

    def merged_params(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        w = params["weight"]
        N = self.head_maps().detach()
        n, h, _ = N.shape
        if self.cfg.role == "query":  # rows of head h: W_h + N_h W_h
            Wh = w.float().reshape(n, h, -1)
            merged = (Wh + N @ Wh).reshape(w.shape)
        else:  # columns of head h: W_h + W_h N_h
            Wh = w.float().reshape(w.shape[0], n, h)
            merged = (Wh + torch.einsum("onk,nkj->onj", Wh, N)).reshape(w.shape)
        return {**params, "weight": merged.to(w.dtype)}

    def reference_forward(self, x: Tensor, base: nn.Module) -> Tensor:
        N = torch.block_diag(*self.head_maps().detach())
        eye = torch.eye(N.shape[0])
        W = base.weight.detach().float()
        W = (eye + N) @ W if self.cfg.role == "query" else W @ (eye + N)
        bias = None if base.bias is None else base.bias.detach().float()
        return F.linear(x.float(), W, bias)

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Config) -> int:
        d_out, d_in = cls.dims(base)
        width = d_out if cfg.role == "query" else d_in
        if cfg.role not in ("query", "output") or width % cfg.head_dim:
            raise MethodError(f"clover: cannot count a layer with role {cfg.role!r} and head axis {width} "
                              f"(head_dim {cfg.head_dim})")
        return width * cfg.head_dim
