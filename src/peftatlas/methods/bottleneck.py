"""Bottleneck adapters: Houlsby, Pfeiffer and AdapterDrop.

All three insert the same small nonlinear residual module on a sublayer's output, before the
transformer's residual add and LayerNorm::

    adapter(h) = h + W_up f(W_down h + b_down) + b_up          W_down ∈ R^{m×d}, W_up ∈ R^{d×m}, m ≪ d

They differ in *where* it goes:

* Houlsby et al., ICML 2019 (arXiv:1902.00751): after the attention output projection and after the
  FFN output projection of every layer (two per layer).
* Pfeiffer et al., EACL 2021 (arXiv:2005.00247; also Lin et al., arXiv:2004.03829): after the FFN
  output projection only (one per layer).
* AdapterDrop, Rücklé et al., EMNLP 2021 (arXiv:2010.11918): Houlsby's adapters, removed from the
  lowest ``drop_lowest`` layers — backpropagation then stops above them, which is the speed-up.

Insertion point: activations — the output of the sublayer's last linear layer (the adapter wraps
that ``nn.Linear``). Init: W_down ~ N(0, init_std²), W_up = 0, biases 0, so the adapter starts as
the exact identity (Houlsby draws W_up from the same small Gaussian: near, not exactly, identity).
Not mergeable (f is nonlinear). Houlsby also trains the LayerNorms; attach ``ln_tuning`` as a second
active adapter for that.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.method import BaseFn, LayerAdapter, MethodError, register

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh, "identity": lambda z: z}

# Sublayer output projections. Attention: BERT "attention.output.dense", Llama/ViT "o_proj", OPT "out_proj",
# T5 "o". FFN: BERT "<layer i>.output.dense", Llama "down_proj", ViT/OPT "fc2", T5 "wo", NeoX "dense_4h_to_h".
ATTENTION_OUTPUT = r".*attention\.output\.dense|(.*\.)?(o_proj|out_proj|o)"
FFN_OUTPUT = r".*layer\.\d+\.output\.dense|(.*\.)?(down_proj|fc2|wo|dense_4h_to_h)"


def layer_depth(name: str) -> int | None:
    """The block index in a module name: the first all-digit component ("model.layers.3.mlp" → 3)."""
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return None


class BottleneckAdapter(LayerAdapter):
    """``h ← h + W_up f(W_down h + b_down) + b_up`` on the output h of the wrapped linear layer."""

    family = "architecture"
    insertion = "activation"
    formula = "2·d·m + d + m per adapted sublayer (d = sublayer width, m = bottleneck)"
    mergeable = False
    size_knob: ClassVar[str | None] = "bottleneck"
    test_config: ClassVar[dict[str, Any]] = {"bottleneck": 4}

    @dataclasses.dataclass
    class Config:
        bottleneck: int = 64
        activation: str = "gelu"
        init_std: float = 1e-2
        dropout: float = 0.0

    @classmethod
    def validate_config(cls, cfg: Any) -> None:
        if cfg.bottleneck < 1:
            raise MethodError(f"{cls.name}: bottleneck must be ≥ 1, got {cfg.bottleneck}")
        if cfg.activation not in ACTIVATIONS:
            raise MethodError(f"{cls.name}: activation must be one of {', '.join(ACTIVATIONS)}, got {cfg.activation!r}")
        if not 0.0 <= cfg.dropout < 1.0:
            raise MethodError(f"{cls.name}: dropout must be in [0, 1), got {cfg.dropout}")

    def __init__(self, base: nn.Module, cfg: Any, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        d, m = self.dims(base)[0], cfg.bottleneck
        self.build_weights(d, m, cfg)
        self.act = ACTIVATIONS[cfg.activation]
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def build_weights(self, d: int, m: int, cfg: Any) -> None:
        self.down = nn.Parameter(torch.randn(m, d) * cfg.init_std)
        self.down_bias = nn.Parameter(torch.zeros(m))
        self.up = nn.Parameter(torch.zeros(d, m))
        self.up_bias = nn.Parameter(torch.zeros(d))

    def down_project(self, h: Tensor) -> Tensor:
        return F.linear(h, self.down, self.down_bias)

    def up_project(self, z: Tensor) -> Tensor:
        return F.linear(z, self.up, self.up_bias)

    def residual(self, h: Tensor) -> Tensor:
        """``W_up f(W_down h + b_down) + b_up`` in fp32."""
        return self.up_project(self.act(self.down_project(self.dropout(h.to(self.down_bias.dtype)))))

    def forward(self, x: Tensor, base_fn: BaseFn) -> Tensor:
        h = base_fn(x)
        return h + self.residual(h).to(h.dtype)

    def dense_weights(self) -> tuple[Tensor, Tensor]:
        """(W_down, W_up) as explicit matrices."""
        return self.down.detach().float(), self.up.detach().float()

    def reference_forward(self, x: Tensor, base: nn.Module) -> Tensor:
        """Dense oracle: explicit matrix products, no F.linear."""
        W = base.weight.detach().float()
        h = x.float() @ W.t() + (0 if base.bias is None else base.bias.detach().float())
        down, up = self.dense_weights()
        z = self.act(h @ down.t() + self.down_bias.detach().float())
        return h + z @ up.t() + self.up_bias.detach().float()

    @classmethod
    def param_count(cls, base: nn.Module, cfg: Any) -> int:
        d, m = cls.dims(base)[0], cfg.bottleneck
        return 2 * d * m + d + m


@register("houlsby")
class Houlsby(BottleneckAdapter):
    """Houlsby adapters (Houlsby et al., ICML 2019, arXiv:1902.00751).

    Hypothesis: task adaptation is a small nonlinear residual correction to each sublayer's output in
    an m-dimensional bottleneck, applied after both attention and FFN.

    Pseudocode::

        h = LN(h + adapter(Attn(h)))      # adapter on the attention output projection
        h = LN(h + adapter(FFN(h)))       # and on the FFN output projection
        adapter(z) = z + W_up f(W_down z + b_down) + b_up
    """

    summary = "Nonlinear bottleneck adapters after the attention and the FFN sublayers of every layer."
    default_targets: ClassVar[Any] = f"{ATTENTION_OUTPUT}|{FFN_OUTPUT}"


@register("pfeiffer")
class Pfeiffer(BottleneckAdapter):
    """Pfeiffer adapter (Pfeiffer et al., EACL 2021, arXiv:2005.00247; Lin et al., arXiv:2004.03829).

    Hypothesis: adapting the FFN-side output alone is enough; one FFN-side adapter per layer beats
    splitting the same budget between the attention and FFN sites.

    Pseudocode::

        h = LN(h + Attn(h))               # no adapter on the attention sublayer
        h = LN(h + adapter(FFN(h)))       # one adapter per layer (ReLU, reduction factor 16)

    AdapterHub's exact Pfeiffer layout applies the adapter after the FFN's add & norm with an extra
    residual; here it sits on the FFN output projection, like Houlsby's second adapter.
    """

    summary = "One nonlinear bottleneck adapter per layer, after the FFN sublayer only."
    default_targets: ClassVar[Any] = FFN_OUTPUT

    @dataclasses.dataclass
    class Config:
        bottleneck: int = 48  # reduction factor 16 for d = 768
        activation: str = "relu"
        init_std: float = 1e-2
        dropout: float = 0.0


class DropSchedule(nn.Module):
    """Robust AdapterDrop's state: how many of the lowest layers run without their adapter right now."""

    def __init__(self, depths: dict[int, int | None], num_layers: int, drop: int, seed: int) -> None:
        super().__init__()
        self.depth_of = depths  # id(base module) -> block index; read once by each adapter at init
        self.num_layers = num_layers
        self.drop = drop
        self.seed = seed

    def resample(self, step: int) -> None:
        """Draw 0..L−1 from a generator keyed by (seed, step): reproducible and resumable."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        self.drop = int(torch.randint(0, max(self.num_layers, 1), (1,), generator=g))


@register("adapterdrop")
class AdapterDrop(BottleneckAdapter):
    """AdapterDrop (Rücklé et al., EMNLP 2021, arXiv:2010.11918).

    Hypothesis: task-specific changes concentrate in the upper layers; removing adaptation from the
    lowest layers costs little accuracy and saves compute (no backward pass below the first adapter).

    Pseudocode::

        for l, layer in enumerate(layers):
            h = layer(h)                        # Houlsby adapters inside ...
            # ... only where l ≥ drop_lowest (specialised); robust: l ≥ n, n ~ U{0..L−1} per training step
        parameters: Houlsby's × (L − drop_lowest)/L
    """

    summary = "Houlsby adapters removed from the lowest layers (robust mode: a random number per training step)."
    formula = "2·d·m + d + m per adapted sublayer, in layers ≥ drop_lowest only"
    default_targets: ClassVar[Any] = f"{ATTENTION_OUTPUT}|{FFN_OUTPUT}"
    test_config: ClassVar[dict[str, Any]] = {"bottleneck": 4, "drop_lowest": 1}

    @dataclasses.dataclass
    class Config:
        bottleneck: int = 64
        activation: str = "gelu"
        init_std: float = 1e-2
        dropout: float = 0.0
        drop_lowest: int = 5  # layers 0 .. drop_lowest−1 carry no adapter (the paper drops 5 of 12)
        robust: bool = False  # keep adapters everywhere; in training drop a random 0..L−1 lowest layers per step
        seed: int = 0  # robust mode's sampler

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        super().validate_config(cfg)
        if cfg.drop_lowest < 0:
            raise MethodError(f"adapterdrop: drop_lowest must be ≥ 0, got {cfg.drop_lowest}")

    @classmethod
    def layer_configs(cls, bases: dict[str, nn.Module], cfg: Config) -> dict[str, Config]:
        """Specialised AdapterDrop: the lowest ``drop_lowest`` layers get no adapter at all."""
        if cfg.robust:
            return {n: cfg for n in bases}
        kept = {n: cfg for n in bases if (layer_depth(n) is None or layer_depth(n) >= cfg.drop_lowest)}
        if bases and not kept:
            depths = sorted({layer_depth(n) for n in bases} - {None})
            raise MethodError(f"adapterdrop: drop_lowest={cfg.drop_lowest} removes every adapted layer "
                              f"(the targets sit in layers {depths[0]}..{depths[-1]})")
        return kept

    @classmethod
    def build_shared(cls, targets: dict[str, nn.Module], cfg: Config) -> nn.Module | None:
        if not cfg.robust:
            return None
        depths = {id(m): layer_depth(n) for n, m in targets.items()}
        num_layers = 1 + max([d for d in depths.values() if d is not None], default=-1)
        return DropSchedule(depths, num_layers, cfg.drop_lowest, cfg.seed)

    def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
        super().__init__(base, cfg, shared)
        self.depth = None if shared is None else shared.depth_of.get(id(base))

    def forward(self, x: Tensor, base_fn: BaseFn) -> Tensor:
        schedule = self.shared
        if schedule is not None and self.depth is not None:
            drop = schedule.drop if self.training else self.cfg.drop_lowest
            if self.depth < drop:
                return base_fn(x)
        return super().forward(x, base_fn)

    @classmethod
    def on_train_step(cls, adapters: dict[str, LayerAdapter], step: int, total_steps: int) -> None:
        """Robust mode: draw the number of dropped lowest layers for the next step."""
        first = next(iter(adapters.values()), None)
        if first is not None and first.shared is not None:
            first.shared.resample(step)
