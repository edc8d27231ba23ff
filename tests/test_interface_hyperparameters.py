"""Typed hyperparameters: every Config field is checked for type and range from its declaration,
and a rank that cannot exceed a layer's width is refused — each with a one-line error naming the field."""

from __future__ import annotations

import dataclasses
import typing

import pytest

import peftatlas as pa
from peftatlas.core.hyperparameters import CONVENTIONAL_RANGES, HyperparameterTypeError, field_range
from peftatlas.core.method import make_config
from peftatlas.testing import tiny_model

METHODS = sorted(pa.registered_methods())


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text, f"error spans several lines: {text!r}"
    return text


@pytest.mark.parametrize(("value", "shown"), [(4.5, "4.5"), ("8", "'8'"), (True, "True")])
def test_wrong_typed_rank_names_method_field_type_and_value(value, shown):
    for exc_type in (TypeError, pa.MethodError):  # catchable as either
        with pytest.raises(exc_type) as exc:
            pa.attach(tiny_model("bert").model, "lora", r=value)
        text = _one_line(exc)
        assert "lora" in text and "hyperparameter r " in text and "integer" in text and shown in text


def test_negative_alpha_is_refused():
    with pytest.raises(pa.MethodError) as exc:
        pa.attach(tiny_model("bert").model, "lora", alpha=-1)
    assert "alpha must be > 0, got -1" in _one_line(exc)


def test_float_fields_take_integers():
    cfg = make_config(pa.get_method("lora"), {"alpha": 2, "r": 4})
    assert cfg.alpha == 2 and cfg.r == 4


@pytest.mark.parametrize("method", ["lora", "lora_fa", "dora", "pissa", "delta_lora", "dylora", "delora"])
def test_rank_far_above_width_is_refused_and_model_left_untouched(method):
    tm = tiny_model("bert")  # hidden size 32
    before = {k: v.clone() for k, v in tm.model.state_dict().items()}
    with pytest.raises(pa.MethodError) as exc:
        pa.attach(tm.model, method, targets=["query"], r=1000)
    text = _one_line(exc)
    assert "r=1000" in text and "width" in text and "32" in text
    after = tm.model.state_dict()
    assert list(after) == list(before)  # no wrapper was left behind
    pa.attach(tm.model, method, targets=["query"], r=32)  # the width itself is allowed


def test_adalora_initial_rank_is_bounded_too():
    with pytest.raises(pa.MethodError, match="init_r=64 exceeds the width"):
        pa.attach(tiny_model("bert").model, "adalora", targets=["query"], init_r=64, target_r=4)


def test_vera_shared_rank_may_exceed_the_width():
    model = pa.attach(tiny_model("bert").model, "vera", targets=["query"], r=64)
    assert model.count_parameters().adapter > 0


def _wrong_values(annotation) -> list:
    """Values of the wrong type for an int / float / bool / str field (``None`` too unless optional)."""
    options = set(typing.get_args(annotation)) or {annotation}
    out: list = [] if type(None) in options else [None]
    if int in options:
        out += [4.5, "8", True]
    elif float in options:
        out += ["1.0", False]
    elif bool in options:
        out += [1, "yes"]
    elif str in options:
        out += [3]
    return out


CASES = [
    (m, f.name, bad)
    for m in METHODS
    for f in dataclasses.fields(pa.get_method(m).Config)
    for bad in _wrong_values(typing.get_type_hints(pa.get_method(m).Config)[f.name])
    if typing.get_type_hints(pa.get_method(m).Config)[f.name] not in (typing.Any,)
]


def test_every_method_has_typed_fields_to_check():
    assert len({m for m, _, _ in CASES}) >= 45  # all but the methods without hyperparameters


@pytest.mark.parametrize(("method", "field", "bad"), CASES, ids=[f"{m}-{f}-{b!r}" for m, f, b in CASES])
def test_every_config_field_rejects_a_wrong_type(method, field, bad):
    cls = pa.get_method(method)
    with pytest.raises(HyperparameterTypeError) as exc:
        make_config(cls, {**cls.test_config, field: bad})
    text = _one_line(exc)
    assert text.startswith(f"{method}: hyperparameter {field} must be") and repr(bad) in text


@pytest.mark.parametrize("method", METHODS)
def test_defaults_and_test_configs_pass_the_checks(method):
    cls = pa.get_method(method)
    cfg = make_config(cls, cls.test_config)
    for f in dataclasses.fields(cfg):
        allowed = field_range(f)
        value = getattr(cfg, f.name)
        if allowed is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            assert allowed.contains(value)


@pytest.mark.parametrize(("field", "bad"), [("dropout", 1.0), ("dropout", -0.1), ("r", 0)])
def test_conventional_ranges_apply_to_methods_without_own_checks(field, bad):
    # methods whose validate_config does not check these fields: the conventional range does
    method = {"dropout": "vera", "r": "ssvd"}[field]
    with pytest.raises(pa.MethodError) as exc:
        make_config(pa.get_method(method), {field: bad})
    assert f"hyperparameter {field} must be {CONVENTIONAL_RANGES[field]}, got {bad}" in _one_line(exc)


def test_a_field_may_declare_its_own_range():
    # surm_kronecker's r = 0 means "automatic": its field metadata widens the conventional r ≥ 1
    assert make_config(pa.get_method("surm_kronecker")).r == 0
    with pytest.raises(pa.MethodError, match="r must be"):
        make_config(pa.get_method("surm_kronecker"), {"r": -2})
