"""The model wrapper: inject, switch, disable, merge, unload and count adapters on any module."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import serving
from .heads import HeadCopies
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

    ``AdaptedModel(model)`` returns an instance of a subclass made once per wrapped class, whose
    ``forward`` carries the wrapped model's signature (plus ``adapter_names``): code that reads the
    signature, such as transformers' ``Trainer`` (which keeps only the dataset columns ``forward``
    accepts, and finds the label names there), sees the real arguments.
    """

    def __new__(cls, model: nn.Module | None = None, *args: Any, **kwargs: Any) -> AdaptedModel:
        if cls is AdaptedModel and isinstance(model, nn.Module):
            cls = _signed_class(type(model))
        return super().__new__(cls)

    def __init__(self, model: nn.Module, head: str | Sequence[str] | None = "auto") -> None:
        super().__init__()
        self.model = model
        self.specs: dict[str, AdapterSpec] = {}
        self.shared = nn.ModuleDict()
        self.active_adapters: list[str] = []
        self.head_names = head_module_names(model, head)
        for p in model.parameters():
            p.requires_grad_(False)
        for h in self.head_names:  # the pretrained head stays; each adapter trains its own copy
            set_user_submodule(model, h, HeadCopies(get_user_submodule(model, h)))
        if callable(getattr(model, "save_pretrained", None)):  # its checkpoint would hold wrapped names
            model.save_pretrained = _refuse_wrapped_save
        self.train(model.training)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["model"], name)

    # --- structure -------------------------------------------------------------------------------
    def adapted_layers(self) -> dict[str, AdaptedModule]:
        return {n: m for n, m in user_named_modules(self.model, unwrap=False) if isinstance(m, AdaptedModule)}

    def heads(self) -> dict[str, HeadCopies]:
        """The task-head wrappers by module name (see :mod:`peftatlas.core.heads`)."""
        return {h: get_user_submodule(self.model, h) for h in self.head_names}

    def _head_params(self, name: str | None = None) -> dict[str, nn.Parameter]:
        """Adapter ``name``'s copy of the head parameters (default: the first active adapter)."""
        name = name or (self.active_adapters[0] if self.active_adapters else None)
        out: dict[str, nn.Parameter] = {}
        for h, wrapper in self.heads().items():
            if name in wrapper.adapters:
                for pn, p in wrapper.adapters[name].named_parameters():
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
            raise ValueError(f"adapter {name!r} already exists (adapters: {', '.join(self.specs)}); "
                             f"delete it first or pick another name, e.g. {name}_2")
        cls = get_method(method)
        head = hyperparameters.pop("modules_to_save", None)
        if head is not None and sorted([head] if isinstance(head, str) else head) != sorted(self.head_names):
            raise ValueError(f"modules_to_save={head!r}: the trained head is chosen when the model is first "
                             f"wrapped (attach(..., head=...)); this model's head is {self.head_names}")
        targets = peft_keywords(cls, targets, hyperparameters)
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
        for wrapper in self.heads().values():
            wrapper.add(name)
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
        for wrapper in self.heads().values():
            wrapper.active = next((n for n in self.active_adapters if n in wrapper.adapters), None)

    @contextlib.contextmanager
    def disable(self) -> Iterator[None]:
        """Run the exact pretrained model (its original head included) inside the block.

        The previous state (active adapters, merges) returns afterwards.
        """
        layers = self.adapted_layers()
        heads = self.heads()
        merged = {n: list(layer.merged) for n, layer in layers.items()}
        previous = {n: layer.disabled for n, layer in layers.items()}
        previous_heads = {h: w.disabled for h, w in heads.items()}
        for layer in layers.values():
            if layer.merged:
                layer.unmerge()
            layer.disabled = True
        for w in heads.values():
            w.disabled = True
        try:
            yield
        finally:
            for n, layer in layers.items():
                layer.disabled = previous[n]
                if merged[n]:
                    layer.merge(merged[n])
            for h, w in heads.items():
                w.disabled = previous_heads[h]

    def delete_adapter(self, name: str) -> None:
        if name not in self.specs:
            raise ValueError(f"unknown adapter {name!r}; known: {sorted(self.specs)}")
        layers = self.adapted_layers()
        if any(name in layer.merged for layer in layers.values()):
            raise MergeError(f"adapter {name!r} is merged; call unmerge() first")
        for n, layer in layers.items():
            serving.forget(layer, name)  # stacked banks holding this adapter (a new one may reuse its memory)
            if name in layer.adapters:
                layer.remove(name)
                if not layer.adapters:
                    set_user_submodule(self.model, n, layer.base)
        for wrapper in self.heads().values():
            if name in wrapper.adapters:
                wrapper.remove(name)
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
        """Remove every adapter and return the exact original base model (its original head too)."""
        self.unmerge()
        for n, layer in self.adapted_layers().items():
            set_user_submodule(self.model, n, layer.base)
        for h, wrapper in self.heads().items():
            set_user_submodule(self.model, h, wrapper.base)
        return self._release()

    def merge_and_unload(self) -> nn.Module:
        """Merge the active adapters, remove the wrappers, keep the active adapter's trained head."""
        self.merge()
        for n, layer in self.adapted_layers().items():
            layer.drop_backup()
            set_user_submodule(self.model, n, layer.base)
        for h, wrapper in self.heads().items():
            set_user_submodule(self.model, h, wrapper.current())
        return self._release()

    def _release(self) -> nn.Module:
        model = self.model
        if model.__dict__.get("save_pretrained") is _refuse_wrapped_save:
            del model.__dict__["save_pretrained"]
        for p in model.parameters():
            p.requires_grad_(True)
        self.specs.clear()
        self.active_adapters = []
        return model

    # --- running -------------------------------------------------------------------------------------
    def forward(self, *args: Any, adapter_names: Sequence[str] | None = None, **kwargs: Any) -> Any:
        """The wrapped model's forward with the active adapters; ``adapter_names`` routes row *i* to its own."""
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

    def generate(self, *args: Any, adapter_names: Sequence[str] | None = None, **kwargs: Any) -> Any:
        """``model.generate`` with the active adapters' model-level hooks applied (soft prompts, prefixes).

        ``adapter_names=[...]`` (one name per input row, ``"__base__"`` for the base model) generates
        each row with its own adapter. Generation may run a layer on ``m`` rows per input row
        (``num_beams``, ``num_return_sequences``, both laid out row by row): each name then covers
        its ``m`` consecutive rows.
        """
        if args:
            if "input_ids" in kwargs or len(args) > 1:
                raise TypeError("generate() takes input_ids as its only positional argument")
            kwargs["input_ids"] = args[0]
        kwargs = self._model_input_hooks(kwargs, generate=True)
        try:
            if adapter_names is None:
                return self.model.generate(**kwargs)
            with self.mixed_batch(adapter_names), self._rows_follow_expansion(list(adapter_names)):
                return self.model.generate(**kwargs)
        finally:
            self._model_output_hooks(kwargs, None)

    @contextlib.contextmanager
    def _rows_follow_expansion(self, names: list[str]) -> Iterator[None]:
        """Inside the block, a routed layer that sees ``m·len(names)`` rows repeats each name ``m`` times."""

        def route(module: nn.Module, args: tuple, kwargs: dict) -> None:
            first = next((v for v in (*args, *kwargs.values()) if isinstance(v, Tensor) and v.dim() > 0), None)
            rows = first.shape[0] if first is not None else len(names)
            m = rows // len(names)
            module.row_adapters = names if m <= 1 or m * len(names) != rows else [n for n in names for _ in range(m)]

        routed = [*self.adapted_layers().values(), *self.heads().values()]
        handles = [layer.register_forward_pre_hook(route, with_kwargs=True) for layer in routed]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

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
        routed = [*layers.values(), *self.heads().values()]
        for layer in routed:
            layer.row_adapters = rows
        try:
            yield
        finally:
            for layer in routed:
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

    def head_parameters(self, name: str | None = None) -> dict[str, nn.Parameter]:
        """Adapter ``name``'s trainable head copy (default: the first active), keyed by the head's own paths."""
        return self._head_params(name)

    def count_parameters(self, name: str | None = None) -> ParamCount:
        """Adapter parameters (total and per layer) and head parameters, counted separately."""
        name = name or (self.active_adapters[0] if self.active_adapters else None)
        per_layer: dict[str, int] = {}
        for ln, layer in self.adapted_layers().items():
            if name in layer.adapters:
                per_layer[ln] = sum(p.numel() for p in layer.adapters[name].parameters())
        shared = sum(p.numel() for p in self.shared_parameters(name).values())
        head = sum(p.numel() for p in self._head_params(name).values())
        base_total = sum(p.numel() for n, p in self.model.named_parameters() if ".adapters." not in f".{n}")
        return ParamCount(sum(per_layer.values()) + shared, head, per_layer, base_total, shared)

    def set_trainable(self, trainable: bool, name: str | None = None) -> None:
        for p in self.adapter_parameters(name).values():
            p.requires_grad_(trainable)
        for p in self._head_params(name).values():
            p.requires_grad_(trainable)


    # --- files (PEFT-style entry points; the format lives in peftatlas.core.io) -----------------------
    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        selected_adapters: Sequence[str] | None = None,
        is_main_process: bool = True,
        **_ignored: Any,
    ) -> Path:
        """Save the adapters (never the base model) into ``save_directory``.

        The first of ``selected_adapters`` (default: the active adapters, then the others) goes
        into ``save_directory`` itself, every other one into ``save_directory/<name>`` (PEFT's
        layout). Each is ``adapter.safetensors`` + ``adapter.json`` with its head copy; other files
        in the folder are left alone. Options a caller passes for a full checkpoint (``state_dict``,
        ``safe_serialization``, ...) are ignored: the base model is never written. A full model comes
        only from ``merge_and_unload().save_pretrained(...)``.
        """
        from .io import save_adapter

        names = list(selected_adapters) if selected_adapters is not None else list(
            dict.fromkeys([*self.active_adapters, *self.specs]))
        if not names:
            raise ValueError("this model has no adapter to save; add one with add_adapter() first")
        unknown = [n for n in names if n not in self.specs]
        if unknown:
            raise ValueError(f"unknown adapter(s) {unknown}; known: {sorted(self.specs)}")
        folder = Path(save_directory)
        if is_main_process:
            for i, n in enumerate(names):
                save_adapter(self, folder if i == 0 else folder / n, name=n)
        return folder

    def push_to_hub(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError("push_to_hub is not supported by peftatlas: save the adapter with save_pretrained(dir) "
                         "and upload that folder, or merge_and_unload() for a full model")

    @classmethod
    def from_pretrained(cls, base: nn.Module | str | os.PathLike, adapter_dir: str | os.PathLike,
                        adapter_name: str = "default", is_trainable: bool = False, **base_kwargs: Any
                        ) -> AdaptedModel:
        """Base model (a model or a transformers path) + the adapter in ``adapter_dir``, in one call."""
        from .io import from_pretrained

        return from_pretrained(base, adapter_dir, name=adapter_name, trainable=is_trainable, **base_kwargs)

    def load_adapter(self, path: str | os.PathLike, adapter_name: str = "default",
                     is_trainable: bool = False, **_ignored: Any) -> AdaptedModel:
        """Load another adapter folder (peftatlas or HF PEFT) into this model under ``adapter_name``."""
        from .io import load_adapter

        return load_adapter(self, path, name=adapter_name, trainable=is_trainable)

    def print_trainable_parameters(self) -> None:
        """PEFT's one-line summary: trainable parameters (adapter + head copy), all, and their ratio."""
        count = self.count_parameters()
        total = count.total_model + count.trainable
        print(f"trainable params: {count.trainable:,} || all params: {total:,} "
              f"|| trainable%: {100.0 * count.trainable / max(total, 1):.4f}")


_SIGNED_CLASSES: dict[type, type[AdaptedModel]] = {}


# HF PEFT keyword → ours, for users coming from PEFT (LoraConfig(r=8, lora_alpha=16, ...)).
PEFT_KEYWORDS = {"lora_alpha": "alpha", "lora_dropout": "dropout", "use_rslora": "rslora"}


def peft_keywords(cls: type[LayerAdapter], targets: Any, hyperparameters: dict[str, Any]) -> Any:
    """Accept PEFT's names: ``target_modules`` for ``targets``, ``lora_alpha`` for ``alpha``, ...

    Rewrites ``hyperparameters`` in place and returns the targets. A PEFT name whose meaning this
    method lacks is refused in one line naming the method's own hyperparameters.
    """
    if "target_modules" in hyperparameters:
        if targets is not None:
            raise ValueError("give the target modules once: targets= (peftatlas) or target_modules= (PEFT), not both")
        targets = hyperparameters.pop("target_modules")
    fields = [f.name for f in dataclasses.fields(cls.Config)]
    for theirs, ours in PEFT_KEYWORDS.items():
        if theirs not in hyperparameters:
            continue
        if ours not in fields:
            raise ValueError(f"{cls.name} has no {ours!r} (PEFT's {theirs}); its hyperparameters: "
                             f"{', '.join(fields) or '(none)'}; choose modules with targets=")
        if ours in hyperparameters:
            raise ValueError(f"give {ours} once: {ours}= or {theirs}=, not both")
        hyperparameters[ours] = hyperparameters.pop(theirs)
    return targets


def _signed_class(model_cls: type) -> type[AdaptedModel]:
    """``AdaptedModel`` with ``forward.__signature__`` = ``model_cls.forward``'s + ``adapter_names``."""
    made = _SIGNED_CLASSES.get(model_cls)
    if made is not None:
        return made
    try:
        sig = inspect.signature(model_cls.forward)
        params = list(sig.parameters.values())
        if any(p.name == "adapter_names" for p in params):
            raise ValueError("the model's forward already takes adapter_names")
        at = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD), len(params))
        params.insert(at, inspect.Parameter("adapter_names", inspect.Parameter.KEYWORD_ONLY, default=None))
        signature = sig.replace(parameters=params)
    except (TypeError, ValueError):
        made = AdaptedModel
    else:
        def forward(self: AdaptedModel, *args: Any, adapter_names: Sequence[str] | None = None, **kwargs: Any) -> Any:
            return AdaptedModel.forward(self, *args, adapter_names=adapter_names, **kwargs)

        forward.__signature__ = signature  # type: ignore[attr-defined]
        forward.__doc__ = AdaptedModel.forward.__doc__
        name = f"Adapted{model_cls.__name__}"
        forward.__qualname__ = f"{name}.forward"
        made = type(name, (AdaptedModel,), {"forward": forward, "__module__": __name__, "__qualname__": name})
    _SIGNED_CLASSES[model_cls] = made
    return made


def _refuse_wrapped_save(*args: Any, **kwargs: Any) -> None:
    """Stands in for the wrapped model's ``save_pretrained`` while adapters sit in its layers."""
    raise ValueError("this model is wrapped by peftatlas (its layers hold adapters): save the adapter with "
                     "the wrapper's save_pretrained(dir), or a full model with merge_and_unload().save_pretrained(dir)")


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
    name, a list, or ``None`` to choose. PEFT's keywords work too: ``target_modules``,
    ``modules_to_save``, ``lora_alpha``, ``lora_dropout``, ``use_rslora``.
    """
    if "modules_to_save" in hyperparameters and not isinstance(model, AdaptedModel):  # PEFT's name for head=
        if head != "auto":
            raise ValueError("give the trained head once: head= (peftatlas) or modules_to_save= (PEFT), not both")
        head = hyperparameters.pop("modules_to_save")
    if isinstance(model, AdaptedModel):
        return model.add_adapter(name, method, targets, exclude=exclude, seed=seed, **hyperparameters)
    wrapped = AdaptedModel(model, head=head)
    try:
        return wrapped.add_adapter(name, method, targets, exclude=exclude, seed=seed, **hyperparameters)
    except Exception:
        wrapped.unload()  # a refused attach leaves the plain model as it was (head unwrapped)
        raise
