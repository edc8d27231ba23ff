"""The model wrapper: inject, switch, disable, merge, unload and count adapters on any module."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .layer import BASE_NAME, AdaptedModule, MergeError, store_row_major_
from .layer_types import adapts_as_matrix, as_matrix, select_targets, tied_partners
from .method import LayerAdapter, MethodError, get_method, make_config
from .targeting import TargetError, head_module_names
from .tree import get_user_submodule, set_user_submodule, user_named_modules


@dataclasses.dataclass
class AdapterSpec:
    """Everything needed to rebuild one named adapter: method, config, exact targets."""

    method: str
    config: Any
    targets: list[str]
    init_seed: int = 0


@dataclasses.dataclass
class ParamCount:
    """Trainable parameter counts: adapter (total and per layer) and the task head, separately."""

    adapter: int
    head: int
    per_layer: dict[str, int]
    total_model: int
    shared: int = 0  # model-wide trainable tensors of the adapter (included in ``adapter``)

    @property
    def trainable(self) -> int:
        return self.adapter + self.head

    def __str__(self) -> str:
        pct = 100.0 * self.adapter / max(self.total_model, 1)
        return (f"adapter params: {self.adapter:,} ({pct:.4f}% of {self.total_model:,}) "
                f"|| head params: {self.head:,} || layers: {len(self.per_layer)}")


class AdaptedModel(nn.Module):
    """A base model with named adapters injected into some of its modules.

    The wrapped model is ``self.model``; attribute access falls through to it, so ``generate``,
    ``config`` and friends work. ``forward(..., adapter_names=[...])`` runs a mixed batch.
    """

    def __init__(self, model: nn.Module, head: str | Sequence[str] | None = "auto") -> None:
        super().__init__()
        self.model = model
        self.specs: dict[str, AdapterSpec] = {}
        self.shared = nn.ModuleDict()
        self.active_adapters: list[str] = []
        self.head_names = head_module_names(model, head)
        self._head_backup = {k: v.detach().clone() for k, v in self._head_params().items()}
        for p in model.parameters():
            p.requires_grad_(False)
        for p in self._head_params().values():
            p.requires_grad_(True)
        self.train(model.training)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["model"], name)

    # --- structure -------------------------------------------------------------------------------
    def adapted_layers(self) -> dict[str, AdaptedModule]:
        return {n: m for n, m in user_named_modules(self.model, unwrap=False) if isinstance(m, AdaptedModule)}

    def _head_params(self) -> dict[str, nn.Parameter]:
        out: dict[str, nn.Parameter] = {}
        for h in self.head_names:
            for pn, p in get_user_submodule(self.model, h, unwrap=True).named_parameters():
                out[f"{h}.{pn}"] = p
        return out

    # --- adding adapters --------------------------------------------------------------------------
    def add_adapter(
        self,
        name: str,
        method: str,
        targets: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        seed: int = 0,
        **hyperparameters: Any,
    ) -> AdaptedModel:
        """Inject a new adapter ``name`` of ``method`` into the modules selected by ``targets``.

        ``seed`` fixes the adapter's random initialisation. The model is left unchanged if
        anything fails (unknown method, bad hyperparameter, no matching module).
        """
        if not name or name == BASE_NAME or "." in name:
            raise ValueError(f"invalid adapter name {name!r}")
        if name in self.specs:
            raise ValueError(f"adapter {name!r} already exists; delete it first or pick another name")
        cls = get_method(method)
        cfg = make_config(cls, hyperparameters)
        cls.check_model(self.model, cfg)
        if targets is None:
            targets = cls.default_targets
        view = self._unwrapped_view()
        names = [] if targets is None else select_targets(cls, view, targets, self.head_names, exclude)
        self._inject(name, cls, cfg, names, seed)
        return self

    def _unwrapped_view(self) -> nn.Module:
        """The model as the user sees it, with AdaptedModule wrappers hidden (for matching)."""
        return _UnwrappedView(self.model)

    def _inject(self, name: str, cls: type[LayerAdapter], cfg: Any, names: list[str], seed: int) -> None:
        layers = self.adapted_layers()
        bases = {n: get_user_submodule(self.model, n, unwrap=True) for n in names}
        for n, b in bases.items():
            if isinstance(b, AdaptedModule):
                raise ValueError(f"module {n} is nested inside another adapted module")
        raw = bases
        if adapts_as_matrix(cls):  # weight-space methods see every layer type as a matrix on vectors
            bases = {n: layers[n].matrix if n in layers else as_matrix(b) for n, b in raw.items()}
        layer_cfgs = cls.layer_configs(bases, cfg)
        bases = {n: b for n, b in bases.items() if n in layer_cfgs}
        names = list(bases)
        if not names and cls.default_targets is not None:
            raise TargetError(f"{cls.name}: no module is left to adapt with this configuration")
        shared = cls.build_shared(bases, cfg)
        created: dict[str, LayerAdapter] = {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for n, base in bases.items():
                adapter = cls(base, layer_cfgs[n], shared)
                ref = next(iter(raw[n].parameters()), None)
                if ref is not None:
                    adapter.to(device=ref.device)
                created[n] = adapter
        # commit (nothing above touched the model)
        if shared is not None:
            store_row_major_(shared)
            self.shared[name] = shared.train(self.model.training)
            for p in shared.parameters():  # trainable shared state (e.g. Compacter's slow factors)
                p.requires_grad_(True)
        for n, adapter in created.items():
            layer = layers.get(n)
            if layer is None:
                layer = AdaptedModule(raw[n], matrix=bases[n])
                layer.tied_with = tied_partners(self.model, n, raw[n])
                set_user_submodule(self.model, n, layer)
            layer.add(name, adapter)
            layer.train(self.model.training)  # new adapters follow the model's train/eval mode
            for p in adapter.parameters():
                p.requires_grad_(True)
        self.specs[name] = AdapterSpec(cls.name, cfg, list(names), seed)
        if not self.active_adapters:
            self.set_active(name)
        else:
            self._sync_active()

    # --- switching ----------------------------------------------------------------------------------
    def set_active(self, names: str | Sequence[str]) -> None:
        """Make ``names`` (one or several, applied in order) the active adapters."""
        names = [names] if isinstance(names, str) else list(names)
        unknown = [n for n in names if n not in self.specs]
        if unknown:
            raise ValueError(f"unknown adapter(s) {unknown}; known: {sorted(self.specs)}")
        if any(layer.merged for layer in self.adapted_layers().values()):
            raise MergeError("adapters are merged; call unmerge() before changing the active adapters")
        self._refuse_unstackable(names)
        self.active_adapters = names
        self._sync_active()

    def _refuse_unstackable(self, names: Sequence[str]) -> None:
        """Adapters composed on one layer must all be of stackable methods (:attr:`LayerAdapter.stackable`)."""
        for layer_name, layer in self.adapted_layers().items():
            here = [n for n in names if n in layer.adapters]
            lone = [n for n in here if not layer.adapters[n].stackable]
            if len(here) > 1 and lone:
                raise MethodError(
                    f"method {layer.adapters[lone[0]].name!r} (adapter {lone[0]!r}) is not stackable: adapters "
                    f"{here} would be stacked on {layer_name}; activate one of them at a time")

    def _sync_active(self) -> None:
        for layer in self.adapted_layers().values():
            layer.active = [n for n in self.active_adapters if n in layer.adapters]

    @contextlib.contextmanager
    def disable(self) -> Iterator[None]:
        """Run the exact base model inside the block; the previous state returns afterwards."""
        layers = self.adapted_layers()
        merged = {n: list(layer.merged) for n, layer in layers.items()}
        previous = {n: layer.disabled for n, layer in layers.items()}
        for layer in layers.values():
            if layer.merged:
                layer.unmerge()
            layer.disabled = True
        try:
            yield
        finally:
            for n, layer in layers.items():
                layer.disabled = previous[n]
                if merged[n]:
                    layer.merge(merged[n])

    def delete_adapter(self, name: str) -> None:
        if name not in self.specs:
            raise ValueError(f"unknown adapter {name!r}; known: {sorted(self.specs)}")
        layers = self.adapted_layers()
        if any(name in layer.merged for layer in layers.values()):
            raise MergeError(f"adapter {name!r} is merged; call unmerge() first")
        for n, layer in layers.items():
            if name in layer.adapters:
                layer.remove(name)
                if not layer.adapters:
                    set_user_submodule(self.model, n, layer.base)
        self.specs.pop(name)
        if name in self.shared:
            del self.shared[name]
        self.active_adapters = [n for n in self.active_adapters if n != name]
        self._sync_active()

    # --- merging ---------------------------------------------------------------------------------
    def merge(self, names: Sequence[str] | None = None) -> None:
        """Fold the active adapters (or ``names``) into the base weights; exact ``unmerge()`` later.

        Raises :class:`MergeError` and leaves every weight untouched if any result is not finite.
        """
        names = list(self.active_adapters if names is None else names)
        self._refuse_unstackable(names)
        done: list[AdaptedModule] = []
        try:
            for layer in self.adapted_layers().values():
                todo = [n for n in names if n in layer.adapters]
                if todo and layer.merge(todo):
                    done.append(layer)
        except MergeError:
            for layer in done:
                layer.unmerge()
            raise

    def unmerge(self) -> None:
        for layer in self.adapted_layers().values():
            layer.unmerge()

    def unload(self) -> nn.Module:
        """Remove every adapter and return the exact original base model (head restored too)."""
        self.unmerge()
        for n, layer in self.adapted_layers().items():
            set_user_submodule(self.model, n, layer.base)
        with torch.no_grad():
            for k, p in self._head_params().items():
                p.copy_(self._head_backup[k])
        return self._release()

    def merge_and_unload(self) -> nn.Module:
        """Merge the active adapters, remove the wrappers, keep the trained head; return the model."""
        self.merge()
        for n, layer in self.adapted_layers().items():
            layer.drop_backup()
            set_user_submodule(self.model, n, layer.base)
        return self._release()

    def _release(self) -> nn.Module:
        model = self.model
        for p in model.parameters():
            p.requires_grad_(True)
        self.specs.clear()
        self.active_adapters = []
        return model

    # --- running -------------------------------------------------------------------------------------
    def forward(self, *args: Any, adapter_names: Sequence[str] | None = None, **kwargs: Any) -> Any:
        if args and self._has_input_hooks():  # input-space methods read input_ids & co. by name
            kwargs = {**inspect.signature(self.model.forward).bind_partial(*args).arguments, **kwargs}
            args = ()
        kwargs = self._model_input_hooks(kwargs)
        try:
            if adapter_names is None:
                out = self.model(*args, **kwargs)
            else:
                with self.mixed_batch(adapter_names):
                    out = self.model(*args, **kwargs)
        except BaseException:
            self._model_output_hooks(kwargs, None)  # let the hooks clear per-call state
            raise
        return self._model_output_hooks(kwargs, out)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """``model.generate`` with the active adapters' model-level hooks applied (soft prompts, prefixes)."""
        if args:
            if "input_ids" in kwargs or len(args) > 1:
                raise TypeError("generate() takes input_ids as its only positional argument")
            kwargs["input_ids"] = args[0]
        kwargs = self._model_input_hooks(kwargs, generate=True)
        try:
            return self.model.generate(**kwargs)
        finally:
            self._model_output_hooks(kwargs, None)

    def _has_input_hooks(self) -> bool:
        base_hook = LayerAdapter.transform_model_inputs.__func__  # type: ignore[attr-defined]
        return any(get_method(self.specs[n].method).transform_model_inputs.__func__ is not base_hook
                   for n in self.active_adapters)

    def _hooks_apply(self) -> bool:
        layers = self.adapted_layers()
        return not (layers and all(layer.disabled for layer in layers.values()))

    def _model_input_hooks(self, kwargs: dict[str, Any], generate: bool = False) -> dict[str, Any]:
        if not self._hooks_apply():
            return kwargs
        for n in self.active_adapters:
            cls = get_method(self.specs[n].method)
            hook = cls.transform_generate_inputs if generate else cls.transform_model_inputs
            kwargs = hook(self, n, kwargs)
        return kwargs

    def _model_output_hooks(self, kwargs: dict[str, Any], out: Any) -> Any:
        if not self._hooks_apply():
            return out
        for n in reversed(self.active_adapters):
            out = get_method(self.specs[n].method).transform_model_outputs(self, n, kwargs, out)
        return out

    def on_train_step(self, step: int, total_steps: int) -> None:
        """Call after each optimizer step: runs the methods' cross-layer schedules (AdaLoRA, ...)."""
        layers = self.adapted_layers()
        for n in self.active_adapters:
            cls = get_method(self.specs[n].method)
            group = {ln: layer.adapters[n] for ln, layer in layers.items() if n in layer.adapters}
            cls.on_train_step(group, step, total_steps)

    @contextlib.contextmanager
    def mixed_batch(self, adapter_names: Sequence[str]) -> Iterator[None]:
        """Route row *i* of every batch inside the block to adapter ``adapter_names[i]``."""
        rows = list(adapter_names)
        unknown = sorted({n for n in rows if n != BASE_NAME and n not in self.specs})
        if unknown:
            raise ValueError(f"adapter_names contains unknown adapter(s) {unknown}; known: {sorted(self.specs)}")
        if self.model.training:
            raise ValueError("mixed-adapter batches are for inference; call .eval() first")
        layers = self.adapted_layers()
        if any(layer.merged for layer in layers.values()):
            raise MergeError("mixed-adapter batches need unmerged adapters; call unmerge() first")
        for n in sorted(set(rows) - {BASE_NAME}):
            cls = get_method(self.specs[n].method)
            if not cls.supports_mixed_batch:
                raise ValueError(f"method {cls.name!r} (adapter {n!r}) does not support mixed-adapter batches")
        for layer in layers.values():
            layer.row_adapters = rows
        try:
            yield
        finally:
            for layer in layers.values():
                layer.row_adapters = None

    def extra_loss(self) -> Tensor | None:
        """Sum of the active adapters' regularisers (qGOFT's orthogonality penalty, ...)."""
        total: Tensor | None = None
        for layer in self.adapted_layers().values():
            for n in layer.active:
                term = layer.adapters[n].extra_loss()
                if term is not None:
                    total = term if total is None else total + term
        return total

    # --- parameters -------------------------------------------------------------------------------
    def adapter_parameters(self, name: str | None = None) -> dict[str, nn.Parameter]:
        """Trainable tensors of one adapter (default: the first active), keyed by module path."""
        name = name or (self.active_adapters[0] if self.active_adapters else None)
        out: dict[str, nn.Parameter] = {}
        for ln, layer in self.adapted_layers().items():
            if name in layer.adapters:
                for pn, p in layer.adapters[name].named_parameters():
                    out[f"{ln}.{pn}"] = p
        out.update(self.shared_parameters(name))
        return out

    def shared_parameters(self, name: str | None = None) -> dict[str, nn.Parameter]:
        """Trainable model-wide tensors of one adapter (e.g. Compacter's shared factors), as ``shared.<name>.*``."""
        name = name or (self.active_adapters[0] if self.active_adapters else None)
        if name is None or name not in self.shared:
            return {}
        return {f"shared.{name}.{pn}": p for pn, p in self.shared[name].named_parameters()}

    def head_parameters(self) -> dict[str, nn.Parameter]:
        return self._head_params()

    def count_parameters(self, name: str | None = None) -> ParamCount:
        """Adapter parameters (total and per layer) and head parameters, counted separately."""
        name = name or (self.active_adapters[0] if self.active_adapters else None)
        per_layer: dict[str, int] = {}
        for ln, layer in self.adapted_layers().items():
            if name in layer.adapters:
                per_layer[ln] = sum(p.numel() for p in layer.adapters[name].parameters())
        shared = sum(p.numel() for p in self.shared_parameters(name).values())
        head = sum(p.numel() for p in self._head_params().values())
        base_total = sum(p.numel() for n, p in self.model.named_parameters() if ".adapters." not in f".{n}")
        return ParamCount(sum(per_layer.values()) + shared, head, per_layer, base_total, shared)

    def set_trainable(self, trainable: bool, name: str | None = None) -> None:
        for p in self.adapter_parameters(name).values():
            p.requires_grad_(trainable)
        for p in self._head_params().values():
            p.requires_grad_(trainable)


class _UnwrappedView(nn.Module):
    """Presents a model with its adapter wrappers hidden, for target matching and fingerprints."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_inner", model)

    def named_modules(self, memo=None, prefix: str = "", remove_duplicate: bool = True):  # type: ignore[override]
        return user_named_modules(self._inner, unwrap=True)

    def get_output_embeddings(self):
        getter = getattr(self._inner, "get_output_embeddings", None)
        return getter() if callable(getter) else None


def attach(
    model: nn.Module,
    method: str,
    targets: str | Sequence[str] | None = None,
    *,
    name: str = "default",
    head: str | Sequence[str] | None = "auto",
    exclude: str | Sequence[str] | None = None,
    seed: int = 0,
    **hyperparameters: Any,
) -> AdaptedModel:
    """Wrap ``model`` and inject adapter ``name`` of ``method``; only adapter + head params train.

    ``head="auto"`` trains a top-level ``classifier``/``score`` module if present; pass a module
    name, a list, or ``None`` to choose.
    """
    wrapped = model if isinstance(model, AdaptedModel) else AdaptedModel(model, head=head)
    return wrapped.add_adapter(name, method, targets, exclude=exclude, seed=seed, **hyperparameters)
