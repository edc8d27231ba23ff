"""The method interface: every hook the engine calls is declared on LayerAdapter (none looked up by
name), and a non-stackable method is refused when it would be composed with another adapter."""

from __future__ import annotations

import inspect
import re
import typing

import pytest
import torch

import peftatlas as pa
import peftatlas.core.io
import peftatlas.core.layer
import peftatlas.core.model
import peftatlas.serving
from peftatlas.core.method import LayerAdapter
from peftatlas.testing import TINY_KINDS, tiny_model

ENGINE = (peftatlas.core.layer, peftatlas.core.model, peftatlas.core.io, peftatlas.serving)

# What the engine calls on a method class or adapter, each declared with a default and a docstring.
HOOKS = (
    "forward", "delta_output", "delta_weight", "merged_params", "reference_forward", "perturb_", "extra_loss",
    "param_count", "functional_forward", "mixed_batch_forward", "mixed_batch_functional_forward",
    "build_shared", "on_train_step", "transform_model_inputs", "transform_generate_inputs",
    "transform_model_outputs", "check_model", "layer_configs", "can_adapt", "validate_config", "check_layer",
)
CAPABILITIES = ("mergeable", "noop_at_init", "supports_mixed_batch", "target_types", "default_targets",
                "insertion", "size_knob", "stackable", "rank_within_width", "suggested_lr")


@pytest.mark.parametrize("hook", HOOKS)
def test_every_engine_hook_is_declared_with_a_docstring(hook):
    declared = LayerAdapter.__dict__.get(hook)
    assert declared is not None, f"LayerAdapter does not declare {hook}"
    assert inspect.getdoc(getattr(LayerAdapter, hook)), f"LayerAdapter.{hook} has no docstring"


def test_capabilities_are_declared_with_defaults():
    for name in CAPABILITIES:
        assert name in LayerAdapter.__dict__, name


def test_engine_looks_up_no_method_attribute_by_name():
    """No ``hasattr`` in the engine, and no ``getattr(…, "name")`` of anything a method class defines."""
    method_attributes = {a for cls in pa.registered_methods().values() for klass in cls.__mro__ for a in vars(klass)}
    for module in ENGINE:
        source = inspect.getsource(module)
        assert "hasattr(" not in source, f"{module.__name__} uses hasattr"
        for name in re.findall(r"getattr\([^,()]+(?:\([^()]*\))?,\s*\"(\w+)\"", source):
            assert name not in method_attributes, f"{module.__name__} looks up {name!r} by name"


def test_the_default_functional_forward_refuses_calls_with_extra_arguments():
    model = pa.attach(tiny_model("mlp").model, "lora", targets=["fc1"], r=2)
    layer = model.adapted_layers()["fc1"]
    x = torch.randn(2, 12)
    with pytest.raises(TypeError, match="lora on Linear cannot handle a call with extra arguments"):
        layer(x, x)


NON_STACKABLE = sorted(m for m, c in pa.registered_methods().items() if not c.stackable)


def _first_kind(method: str) -> str:
    return next(k for k in TINY_KINDS if k not in pa.get_method(method).test_skip)


def test_non_stackable_methods_exist():
    assert {"dora", "prefix_tuning", "prompt_tuning", "bone"} <= set(NON_STACKABLE)


@pytest.mark.parametrize("method", NON_STACKABLE)
def test_non_stackable_method_is_refused_when_stacked(method):
    cls = pa.get_method(method)
    tm = tiny_model(_first_kind(method))
    model = pa.attach(tm.model, method, name="a", **cls.test_config)
    model.add_adapter("b", method, seed=1, **cls.test_config)  # a second adapter to switch to is fine
    if not model.adapted_layers():
        pytest.skip(f"{method} adds no layer adapters")  # (full fine-tuning and head-only train the model itself)
    model.set_active("b")
    with pytest.raises(pa.MethodError) as exc:
        model.set_active(["a", "b"])
    text = str(exc.value)
    assert "\n" not in text and f"'{cls.name}'" in text and "not stackable" in text
    assert model.active_adapters == ["b"]
    with pytest.raises(pa.MethodError, match="not stackable"):
        model.merge(["a", "b"])
    assert not any(layer.merged for layer in model.adapted_layers().values())


def test_stackable_with_non_stackable_on_another_layer_is_fine():
    tm = tiny_model("mlp")
    model = pa.attach(tm.model, "dora", name="a", targets=["fc1"], r=2)
    model.add_adapter("b", "lora", targets=["fc2"], r=2)
    model.set_active(["a", "b"])  # no layer holds both
    assert model.active_adapters == ["a", "b"]


def test_lora_stacks():
    tm = tiny_model("mlp")
    model = pa.attach(tm.model, "lora", name="a", r=2)
    model.add_adapter("b", "lora", r=2)
    model.set_active(["a", "b"])
    assert model.adapted_layers()["fc1"].active == ["a", "b"]


def test_test_only_declarations_live_in_a_nested_testing_block_and_stay_readable():
    class Example(LayerAdapter):
        class Testing:
            config: typing.ClassVar[dict] = {"r": 2}
            skip: typing.ClassVar[dict] = {"vit": "example"}

    assert Example.test_config == {"r": 2} and Example.test_skip == {"vit": "example"}
    assert Example.test_atol == LayerAdapter.Testing.atol  # not declared: the default
    prefix = pa.get_method("prefix_tuning")
    assert "Testing" in vars(prefix) and "test_config" not in inspect.getsource(prefix)  # apart from the math
    assert prefix.test_config == {"num_virtual_tokens": 3} and "mlp" in prefix.test_skip
