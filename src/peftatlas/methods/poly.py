"""Mixtures of LoRA modules with learned routing: Poly (task routing) and MoLoRA (token routing).

Hypothesis: a small library of low-rank skills, recombined per task (Poly) or per token (MoLoRA),
adapts better than one low-rank update of the same size — tasks share skills, and the routing
learns which.

Insertion point: weight — each adapted linear layer gets a routed mixture of low-rank updates.

Poly — Polytropon (Ponti et al., EACL 2023, arXiv:2202.13914) with multi-head routing (MHR,
Caccia et al., arXiv:2211.03831); ``task_ids`` is passed to the adapted model's forward::

    per layer: skills A_k ∈ R^{d_in×r} (Kaiming), B_k ∈ R^{r×d_out} (0), k = 1..K; logits Z ∈ R^{T×(S·K)}
    w = sigmoid(Z[task]) (training: relaxed-Bernoulli sample);  w ← w / Σ_k w   per split s = 1..S
    A = concat_s Σ_k w[s,k] A_k[s-th d_in/S rows];  B = concat_s Σ_k w[s,k] B_k[s-th d_out/S columns]
    y = W0 x + (α/r) · x A B
    parameters per layer: K·r·(d_in + d_out) + T·S·K

MoLoRA — mixture of LoRA experts with a per-token soft router (Zadouri et al., arXiv:2309.05444)::

    per layer: experts A_k ∈ R^{r×d_in} (Kaiming), B_k ∈ R^{d_out×r} (0); router G ∈ R^{K×d_in} (0)
    g(x) = softmax(G x);  y = W0 x + (α/r) Σ_k g_k(x) B_k A_k x
    parameters per layer: K·r·(d_in + d_out) + K·d_in

Both start as the exact base model (B = 0) and are not mergeable: the update depends on the task
id (Poly) or on the token (MoLoRA). X-LoRA's two-pass router (scalings from a first forward's
hidden states over frozen, pre-trained experts) is not implemented.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions.relaxed_bernoulli import RelaxedBernoulli

from ..core.method import LayerAdapter, MethodError, register
from ._model_level import shared_state

EPS = 1e-12


class TaskIds(nn.Module):
    """Per-call state shared by one Poly adapter's layers: the task id of every row of the batch."""

    def __init__(self, n_tasks: int = 1) -> None:
        super().__init__()
        self.n_tasks = n_tasks
        self.task_ids: Tensor | None = None

    def check(self, ids: Tensor) -> None:
        """Task ids must lie in ``[0, n_tasks)``: checked once per model call (not per layer, where
        reading them back would stall a GPU at every adapted layer), and skipped under
        ``torch.compile``, where an out-of-range id still fails in the router's indexing."""
        if torch.compiler.is_compiling() or not ids.numel():
            return
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.n_tasks:
            raise MethodError(f"poly: task ids must lie in [0, {self.n_tasks}), got {lo}…{hi}")


@register("poly")
class Poly(LayerAdapter):
    """Poly / MHR (Ponti et al., arXiv:2202.13914; Caccia et al., arXiv:2211.03831).

    Hypothesis: tasks share a small inventory of low-rank skills; a learned task→skill allocation
    recombines them, so new tasks reuse old skills.

    Pseudocode: see the module docstring (Poly); ``task_ids`` goes to the adapted model's forward.
    """

    family = "architecture"
    insertion = "weight"
    summary = "Per-layer library of K LoRA skills mixed by learned task→skill routing (Polytropon / MHR)."
    formula = "K·r·(d_in + d_out) + T·S·K per layer"
    mergeable = False
    supports_mixed_batch = False
    size_knob: ClassVar[str | None] = "r"
    test_config: ClassVar[dict[str, Any]] = {"r": 2, "n_skills": 3, "n_splits": 2, "n_tasks": 1}

    @dataclasses.dataclass
    class Config:
        r: int = 8
        n_skills: int = 4
        n_splits: int = 1  # MHR: independent routing for S blocks of the input/output features
        n_tasks: int = 1
        alpha: float = 1.0  # scale α/r (HF PEFT's Poly uses 1/r)
        temperature: float = 1.0  # relaxed-Bernoulli temperature in training

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        for field in ("r", "n_skills", "n_splits", "n_tasks"):
            if getattr(cfg, field) < 1:
                raise MethodError(f"poly: {field} must be ≥ 1, got {getattr(cfg, field)}")
        if cfg.temperature <= 0:
            raise MethodError(f"poly: temperature must be > 0, got {cfg.temperature}")

    @classmethod
    def build_shared(cls, targets: dict[str, nn.Module], cfg: Config) -> nn.Module:
        return TaskIds(cfg.n_tasks)

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        d_out, d_in = self.dims(base)
        S, K, r = cfg.n_splits, cfg.n_skills, cfg.r
        if d_in % S or d_out % S:
            raise MethodError(f"poly: n_splits={S} must divide d_in={d_in} and d_out={d_out}")
        self.d_in, self.d_out = d_in, d_out
        A = torch.empty(S, K, d_in // S, r)
        for s in range(S):
            for k in range(K):  # each skill block's A like LoRA's A: Kaiming-uniform (fan-in d_in/S)
                nn.init.kaiming_uniform_(A[s, k].t(), a=math.sqrt(5))
        self.skills_A = nn.Parameter(A)
        self.skills_B = nn.Parameter(torch.zeros(S, K, r, d_out // S))
        self.router_logits = nn.Parameter(torch.empty(cfg.n_tasks, S * K).uniform_(-1e-3, 1e-3))
        self.scale = cfg.alpha / r

    # --- routing ---------------------------------------------------------------------------------------
    def task_ids(self, batch: int, device: torch.device) -> Tensor:
        state = self.shared
        ids = getattr(state, "task_ids", None)
        if ids is None:
            if self.cfg.n_tasks > 1:
                raise MethodError("poly: pass task_ids=<LongTensor of shape (batch,)> to the adapted model's forward")
            return torch.zeros(batch, dtype=torch.long, device=device)
        if ids.shape[0] != batch:
            if batch % ids.shape[0]:
                raise MethodError(f"poly: {ids.shape[0]} task ids for a batch of {batch} rows")
            ids = ids.repeat_interleave(batch // ids.shape[0])  # generate() repeats rows for beams
        return ids.to(device)

    def mixing_weights(self, task_ids: Tensor) -> Tensor:
        """(batch, S, K) routing weights, normalised over the K skills of each split."""
        S, K = self.cfg.n_splits, self.cfg.n_skills
        logits = self.router_logits[task_ids].view(-1, S, K)
        if self.training:
            w = RelaxedBernoulli(torch.tensor(self.cfg.temperature, device=logits.device), logits=logits).rsample()
        else:
            w = torch.sigmoid(logits)
        return w / (w.sum(dim=-1, keepdim=True) + EPS)

    def mixed_factors(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """Per-row (A: batch×d_in×r, B: batch×r×d_out)."""
        A = torch.einsum("bsk,skdr->bsdr", w, self.skills_A).reshape(w.shape[0], self.d_in, self.cfg.r)
        B = torch.einsum("bsk,skro->bsro", w, self.skills_B)  # (b, S, r, d_out/S)
        B = B.transpose(1, 2).reshape(w.shape[0], self.cfg.r, self.d_out)
        return A, B

    def delta_output(self, x: Tensor) -> Tensor:
        ids = self.task_ids(x.shape[0], x.device)
        A, B = self.mixed_factors(self.mixing_weights(ids))
        h = x.to(A.dtype).reshape(x.shape[0], -1, self.d_in)
        return (torch.bmm(torch.bmm(h, A), B) * self.scale).reshape(*x.shape[:-1], self.d_out)

    def reference_forward(self, x: Tensor, base: nn.Module) -> Tensor:
        """Dense oracle: per row, the explicit ΔW_task = (α/r)·(A B)ᵀ built from the eval-mode routing."""
        with torch.no_grad():
            ids = self.task_ids(x.shape[0], x.device)
            w = torch.sigmoid(self.router_logits[ids].view(-1, self.cfg.n_splits, self.cfg.n_skills))
            w = w / (w.sum(-1, keepdim=True) + EPS)
            A, B = self.mixed_factors(w)
            W = base.weight.detach().float()
            bias = 0 if base.bias is None else base.bias.detach().float()
            rows = []
            for i in range(x.shape[0]):
                W_task = W + self.scale * (A[i] @ B[i]).t()
                rows.append(x[i].float() @ W_task.t() + bias)
            return torch.stack(rows)

    # --- model level: task ids travel beside the inputs ---------------------------------------------------
    @classmethod
    def transform_model_inputs(cls, model: nn.Module, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        state = shared_state(model, name)
        ids = kwargs.get("task_ids")
        if ids is not None:
            kwargs = {k: v for k, v in kwargs.items() if k != "task_ids"}
            ids = torch.as_tensor(ids, dtype=torch.long)
            if isinstance(state, TaskIds):
                state.check(ids)
        if state is not None:
            state.task_ids = ids
        return kwargs

    @classmethod
    def transform_model_outputs(cls, model: nn.Module, name: str, kwargs: dict[str, Any], outputs: Any) -> Any:
        state = shared_state(model, name)
        if state is not None:
            state.task_ids = None
        return outputs

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Config) -> int:
        d_out, d_in = cls.dims(base)
        return cfg.n_skills * cfg.r * (d_in + d_out) + cfg.n_tasks * cfg.n_splits * cfg.n_skills


@register("molora")
class MoLoRA(LayerAdapter):
    """MoLoRA (Zadouri et al., arXiv:2309.05444), the single-pass relative of X-LoRA (arXiv:2402.07148).

    Hypothesis: different tokens need different low-rank updates; a per-token soft router over K
    LoRA experts beats one LoRA of the same size.

    Pseudocode: see the module docstring (MoLoRA).
    """

    family = "architecture"
    insertion = "weight"
    summary = "K LoRA experts per layer mixed per token by a learned softmax router (MoLoRA)."
    formula = "K·r·(d_in + d_out) + K·d_in per layer"
    mergeable = False
    size_knob: ClassVar[str | None] = "r"
    test_config: ClassVar[dict[str, Any]] = {"r": 2, "n_experts": 3}

    @dataclasses.dataclass
    class Config:
        r: int = 4
        n_experts: int = 4
        alpha: float = 8.0

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        if cfg.r < 1 or cfg.n_experts < 1:
            raise MethodError(f"molora: r and n_experts must be ≥ 1, got {cfg.r}, {cfg.n_experts}")

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        d_out, d_in = self.dims(base)
        A = torch.empty(cfg.n_experts, cfg.r, d_in)
        for k in range(cfg.n_experts):
            nn.init.kaiming_uniform_(A[k], a=math.sqrt(5))
        self.experts_A = nn.Parameter(A)
        self.experts_B = nn.Parameter(torch.zeros(cfg.n_experts, d_out, cfg.r))
        self.router = nn.Parameter(torch.zeros(cfg.n_experts, d_in))
        self.scale = cfg.alpha / cfg.r

    def gates(self, x: Tensor) -> Tensor:
        return torch.softmax(F.linear(x, self.router), dim=-1)

    def delta_output(self, x: Tensor) -> Tensor:
        x = x.to(self.router.dtype)
        h = torch.einsum("...d,krd->...kr", x, self.experts_A) * self.gates(x).unsqueeze(-1)
        return torch.einsum("...kr,kor->...o", h, self.experts_B) * self.scale

    def reference_forward(self, x: Tensor, base: nn.Module) -> Tensor:
        """Dense oracle: per token, ΔW(x) = (α/r) Σ_k g_k(x) B_k A_k formed explicitly."""
        with torch.no_grad():
            xs = x.float().reshape(-1, x.shape[-1])
            W = base.weight.detach().float()
            bias = 0 if base.bias is None else base.bias.detach().float()
            dense = torch.stack([B @ A for A, B in zip(self.experts_A.float(), self.experts_B.float())])  # K×o×d
            out = []
            for token in xs:
                g = torch.softmax(self.router.float() @ token, dim=0)
                delta = self.scale * torch.einsum("k,kod->od", g, dense)
                out.append((W + delta) @ token + bias)
            return torch.stack(out).reshape(*x.shape[:-1], W.shape[0])

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Config) -> int:
        d_out, d_in = cls.dims(base)
        return cfg.n_experts * cfg.r * (d_in + d_out) + cfg.n_experts * d_in
