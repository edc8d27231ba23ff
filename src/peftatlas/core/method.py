"""The method interface: one adapter on one module, and the registry of methods by name.

Every weight-space method is a parametrization of the update of one layer, ``W' = f(W0; θ)``.
A method is a subclass of :class:`LayerAdapter` that states, as briefly as its pseudocode:

* ``Config``            — a dataclass of hyperparameters (with defaults from the paper);
* ``__init__(base, cfg, shared)`` — build θ for one base module (``shared`` is the method's
  model-wide state, e.g. VeRA's frozen random bases, built once by :meth:`build_shared`);
* ``forward(x, base_fn)`` — the fast path; the default is additive: ``base_fn(x) + delta_output(x)``;
* ``merged_params(params)`` — the merged base parameters (default ``W0 + delta_weight(W0)``);
* ``param_count(base, cfg)`` — the closed-form parameter count, checked against the real one;
* ``reference_forward(x, base)`` — an independent dense computation used to test the fast path.

Everything else the engine reads from a method — capabilities (``mergeable``, ``stackable``, ...),
model-level hooks (``transform_model_inputs``, ``build_shared``, ...), batched mixed-adapter paths
(``mixed_batch_forward``) — is declared below with a docstring and a default; the engine never looks a
hook up by name. Hyperparameters are typed and range-checked from ``Config`` (see
:mod:`peftatlas.core.hyperparameters`). ``docs/adding-a-method.md`` walks through adding a method.

Several adapters active on one layer compose in order: adapter *i* sees the previous adapters'
function as its ``base_fn``. Merging adapters in the same order reproduces that composition.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .layer_types import LAYER_TYPES

BaseFn = Callable[[Tensor], Tensor]

_REGISTRY: dict[str, type[LayerAdapter]] = {}


class MethodError(ValueError):
    """A method was asked for something it cannot do (unknown name, bad hyperparameter, ...)."""


class LayerAdapter(nn.Module):
    """One adapter attached to one base module (usually an ``nn.Linear``).

    Subclasses set the class attributes below and implement the math. The engine (see
    :mod:`peftatlas.core.layer`) owns the base module; adapters never modify it except through
    :meth:`merged_params`, which returns new tensors.
    """

    # --- identity and catalog hooks -------------------------------------------------------------
    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    formula: ClassVar[str] = ""  # human-readable parameter-count formula, e.g. "r·(d_in + d_out)"

    # --- capabilities ----------------------------------------------------------------------------
    mergeable: ClassVar[bool] = True
    noop_at_init: ClassVar[bool] = True
    supports_mixed_batch: ClassVar[bool] = True
    target_types: ClassVar[tuple[type[nn.Module], ...]] = (nn.Linear,)
    # Layer types adapted (names from core.layer_types.LAYER_TYPES). Methods with the default
    # target_types see each as "a matrix W on vectors" (so by default every type); a method whose
    # math needs more (e.g. attention heads) narrows it. Methods with their own target_types wrap
    # those natively (the default then names those types).
    layer_types: ClassVar[tuple[str, ...]] = LAYER_TYPES
    default_targets: ClassVar[Any] = "all-linear"
    # Where the method acts: "weight" (a layer's parameters), "activation" (a layer's input/output),
    # "input" (the token embeddings), "attention cache" (per-layer keys/values), "block output".
    insertion: ClassVar[str] = "weight"
    # The integer hyperparameter that sets the size (e.g. "r"); the arena's budget solver searches it.
    # None = the method has a fixed size for a given model.
    size_knob: ClassVar[str | None] = None
    # Whether a second adapter of this method may be stacked on the same layer (composition).
    stackable: ClassVar[bool] = True
    # Whether ``size_knob`` is a rank bounded by the layer's width, ``r ≤ min(d_out, d_in)``: beyond it a
    # rank-r factorisation only adds linearly dependent directions, so a larger value is refused with a
    # one-line error (VeRA's shared r is not bounded: its random bases may be wider than a layer by design).
    rank_within_width: ClassVar[bool] = False
    # A learning rate the arena starts its sweep from (None = by family; see evidence.profiles).
    suggested_lr: ClassVar[float | None] = None

    # --- test-only declarations (read by the test suites, never by the math) ----------------------
    class Testing:
        """What the generic test suites need to know about a method, kept apart from its math.

        A method declares a nested ``class Testing:`` with any of these; each is also readable as
        ``test_<field>`` on the method class (``test_config``, ``test_skip``, ``test_atol``), the names
        the suites read (a method may still set those directly).
        """

        config: ClassVar[dict[str, Any]] = {}  # small hyperparameters for the tiny models
        skip: ClassVar[dict[str, str]] = {}  # model kinds where the method does not apply, with the reason
        atol: ClassVar[float] = 1e-5  # absolute fp32 tolerance of the dense-reference / merge checks

    test_config: ClassVar[dict[str, Any]] = Testing.config
    test_skip: ClassVar[dict[str, str]] = Testing.skip
    test_atol: ClassVar[float] = Testing.atol

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("Testing")
        if own is not None:
            for field in ("config", "skip", "atol"):
                if hasattr(own, field):
                    setattr(cls, f"test_{field}", getattr(own, field))
        if "layer_types" not in cls.__dict__ and tuple(cls.target_types) != (nn.Linear,):
            cls.layer_types = tuple(t.__name__ for t in cls.target_types)

    @dataclasses.dataclass
    class Config:
        """Hyperparameters; subclasses replace this with their own dataclass."""

    def __init__(self, base: nn.Module, cfg: Any, shared: nn.Module | None = None) -> None:
        super().__init__()
        self.check_layer(base, cfg)
        self.cfg = cfg
        # Keep a plain reference (not a submodule) so shared state is stored once, on the model.
        object.__setattr__(self, "_shared", shared)

    @property
    def shared(self) -> nn.Module | None:
        return self._shared

    # --- model-wide hooks --------------------------------------------------------------------------
    @classmethod
    def build_shared(cls, targets: dict[str, nn.Module], cfg: Any) -> nn.Module | None:
        """Model-wide state shared by all layers of one adapter (default: none)."""
        return None

    @classmethod
    def on_train_step(cls, adapters: dict[str, LayerAdapter], step: int, total_steps: int) -> None:
        """Called by training loops after each optimizer step with this adapter's layers.

        ``adapters`` maps layer names to this method's adapters of one named adapter. Used for
        schedules that act across layers (AdaLoRA's rank budget, Delta-LoRA's weight update, ...).
        """

    @classmethod
    def transform_model_inputs(cls, model: nn.Module, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Model-level hook on the forward keyword arguments (input-space methods); default: none."""
        return kwargs

    @classmethod
    def transform_generate_inputs(cls, model: nn.Module, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Model-level hook on ``generate()``'s keyword arguments; default: the forward hook."""
        return cls.transform_model_inputs(model, name, kwargs)

    @classmethod
    def transform_model_outputs(cls, model: nn.Module, name: str, kwargs: dict[str, Any], outputs: Any) -> Any:
        """Model-level hook on the forward's outputs (e.g. drop soft-prompt positions); default: none.

        ``kwargs`` are the keyword arguments the wrapped model was called with (after the input hooks);
        after ``generate()``, or when the forward raised, it is called with ``outputs=None`` (to clear
        per-call state).
        """
        return outputs

    @classmethod
    def check_model(cls, model: nn.Module, cfg: Any) -> None:
        """Raise :class:`MethodError` if ``model`` as a whole cannot take this method (default: any can)."""

    @classmethod
    def layer_configs(cls, bases: dict[str, nn.Module], cfg: Any) -> dict[str, Any]:
        """Per-layer configs of the matched modules, by name; a name left out gets no adapter.

        Default: every layer gets ``cfg``. Methods whose layers differ by position in the model
        ((IA)³'s input- vs output-side gains, AdapterDrop's depth) specialise ``cfg`` here.
        """
        return {n: cfg for n in bases}

    @classmethod
    def can_adapt(cls, module: nn.Module) -> bool:
        """Whether this method can wrap ``module`` (beyond its type); used to filter broad targets."""
        return True

    @classmethod
    def validate_config(cls, cfg: Any) -> None:
        """Raise :class:`MethodError` for impossible hyperparameters (after the generic type checks;
        the generic range checks follow; see :func:`make_config`)."""

    @classmethod
    def check_layer(cls, base: nn.Module, cfg: Any) -> None:
        """Raise :class:`MethodError` if ``cfg`` cannot apply to the layer ``base`` (called on construction).

        Default: with :attr:`rank_within_width`, ``cfg.<size_knob> ≤ min(d_out, d_in)`` where ``d_in``
        counts a convolution's whole receptive field (``in_channels·k``).
        """
        weight = getattr(base, "weight", None)
        if not cls.rank_within_width or cls.size_knob is None or not isinstance(weight, Tensor) or weight.dim() < 2:
            return
        rank, width = getattr(cfg, cls.size_knob), min(int(weight.shape[0]), int(weight[0].numel()))
        if rank > width:
            raise MethodError(
                f"{cls.name}: {cls.size_knob}={rank} exceeds the width of this {type(base).__name__} "
                f"(min(d_out, d_in) = {width}, weight {list(weight.shape)}); a rank above it adds nothing")

    # --- the math ------------------------------------------------------------------------------
    def forward(self, x: Tensor, base_fn: BaseFn) -> Tensor:
        """Fast path. Default: additive update ``y = base_fn(x) + delta_output(x)``."""
        y = base_fn(x)
        return y + self.delta_output(x).to(y.dtype)

    def functional_forward(self, base: nn.Module, args: tuple, kwargs: dict) -> Any:
        """The layer's output for a call with more than one tensor argument (``base(*args, **kwargs)``).

        Methods that wrap a whole block or attention module (LoReFT, prefix tuning, BitFit's
        parameter deltas) see such calls; the default refuses them.
        """
        raise TypeError(f"{self.name} on {type(base).__name__} cannot handle a call with extra arguments "
                        f"(only a single input tensor)")

    @staticmethod
    def mixed_batch_forward(layer: nn.Module, x: Tensor, rows: list[str], present: list[str]) -> Tensor | None:
        """A batched mixed-adapter forward of ``layer`` (an ``AdaptedModule`` whose ``present`` adapters
        are all of this method): row ``i`` of ``x`` through adapter ``rows[i]`` (or the base).

        Default ``None``: the engine groups rows by adapter and runs each group on its own. LoRA and
        VeRA override it with the gathered/grouped kernels of :mod:`peftatlas.serving`.
        """
        return None

    @staticmethod
    def mixed_batch_functional_forward(layer: nn.Module, args: tuple, kwargs: dict, rows: list[str],
                                       present: list[str]) -> Any:
        """As :meth:`mixed_batch_forward`, for calls with extra arguments (block-level methods); default ``None``."""
        return None

    def delta_output(self, x: Tensor) -> Tensor:
        """``ΔW x`` (plus any bias change) computed without forming ``ΔW`` where possible."""
        raise NotImplementedError(f"{type(self).__name__} does not define an additive update")

    def delta_weight(self, weight: Tensor) -> Tensor:
        """Dense ``ΔW`` such that ``W' = W0 + ΔW`` (same shape and dtype as ``weight``)."""
        raise NotImplementedError(f"{type(self).__name__} is not mergeable")

    def merged_params(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        """New values of the base module's parameters with this adapter folded in.

        ``params`` maps the base module's parameter names (``weight``, ``bias``) to their current
        values; the default adds :meth:`delta_weight` to ``weight`` in fp32 and casts back.
        """
        w = params["weight"]
        delta = self.delta_weight(w.float())
        return {**params, "weight": (w.float() + delta.float()).to(w.dtype)}

    def reference_forward(self, x: Tensor, base: nn.Module) -> Tensor:
        """A dense, independent computation of this adapter's output (test oracle).

        The default applies the merged parameters with a plain functional call, which is an
        independent check whenever :meth:`merged_params` builds the dense matrix explicitly.
        """
        params = {k: v.detach() for k, v in base.named_parameters(recurse=False)}
        merged = self.merged_params({k: v.float() for k, v in params.items()})
        return torch.func.functional_call(base, merged, (x.float() if x.is_floating_point() else x,), strict=False)

    @torch.no_grad()
    def perturb_(self, generator: torch.Generator, scale: float = 0.1) -> None:
        """Move parameters away from their init (tests use it to make adapters non-trivial)."""
        for p in self.parameters():
            p.add_(torch.randn(p.shape, generator=generator).to(p) * scale)

    def extra_loss(self) -> Tensor | None:
        """A regulariser the training loop adds to the task loss (e.g. qGOFT's penalty)."""
        return None

    # --- counting -----------------------------------------------------------------------------
    @classmethod
    def param_count(cls, base: nn.Module, cfg: Any) -> int:
        """Closed-form number of trainable parameters this method adds to ``base``."""
        raise NotImplementedError

    @staticmethod
    def dims(base: nn.Module) -> tuple[int, int]:
        """(d_out, d_in) of a linear-like module."""
        w = base.weight
        return int(w.shape[0]), int(w.shape[1])

    def extra_repr(self) -> str:
        fields = dataclasses.asdict(self.cfg) if dataclasses.is_dataclass(self.cfg) else {}
        return ", ".join(f"{k}={v}" for k, v in fields.items())


def register(name: str) -> Callable[[type[LayerAdapter]], type[LayerAdapter]]:
    """Class decorator adding a method to the registry under ``name``."""

    def wrap(cls: type[LayerAdapter]) -> type[LayerAdapter]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise MethodError(f"method name {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def unregister(name: str) -> None:
    """Remove a method from the registry (for methods registered by a test or a notebook)."""
    _REGISTRY.pop(name, None)


def _ensure_loaded() -> None:
    import peftatlas.methods  # noqa: F401  (imports every method module, which registers itself)


def get_method(name: str) -> type[LayerAdapter]:
    """The method class registered under ``name`` (case-insensitive, '-' and '_' equivalent)."""
    _ensure_loaded()
    exact = _REGISTRY.get(name)
    if exact is not None:  # the common case (names stored in specs); called per layer and per adapter
        return exact
    key = name.lower().replace("-", "_")
    for registered, cls in _REGISTRY.items():
        if registered.replace("-", "_") == key:
            return cls
    known = ", ".join(sorted(_REGISTRY))
    raise MethodError(f"unknown method {name!r}; registered methods: {known}")


def registered_methods() -> dict[str, type[LayerAdapter]]:
    _ensure_loaded()
    return dict(sorted(_REGISTRY.items()))


def make_config(cls: type[LayerAdapter], overrides: dict[str, Any] | None = None) -> Any:
    """Build ``cls.Config`` from keyword overrides, with a one-line error for anything it cannot take.

    Checked in order: unknown names; each field's type, from its annotation; the method's own
    :meth:`LayerAdapter.validate_config`; each numeric field's range (field metadata, else the
    conventional range of its name; see :mod:`peftatlas.core.hyperparameters`).
    """
    overrides = dict(overrides or {})
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise MethodError(
            f"{cls.name}: unknown hyperparameter(s) {', '.join(unknown)}; "
            f"valid: {', '.join(sorted(fields)) or '(none)'}"
        )
    from .hyperparameters import check_config, check_ranges  # (imports this module)

    cfg = cls.Config(**overrides)
    check_config(cls.name, cfg)  # types first: the method's own checks may compare numbers
    cls.validate_config(cfg)
    check_ranges(cls.name, cfg)
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else {}
