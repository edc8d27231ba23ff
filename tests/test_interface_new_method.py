"""docs/adding-a-method.md, verified: method #55 of the walkthrough, registered inside this test (never
shipped), passes the generic property suite and the interface checks with no test code of its own."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor, nn

import peftatlas as pa
import test_properties as properties
from peftatlas.catalog import Claim, Entry, Paper
from peftatlas.catalog.model import marks
from peftatlas.core.hyperparameters import POSITIVE
from peftatlas.core.method import LayerAdapter, make_config, register, unregister
from peftatlas.testing import TINY_KINDS

NAME = "rank_one_example"


def define_method() -> type[LayerAdapter]:
    """The walkthrough's file, ``peftatlas/methods/rank_one.py``, as written in docs/adding-a-method.md."""

    @register(NAME)
    class RankOne(LayerAdapter):
        """Rank-one update ΔW = s·u vᵀ (v ~ N(0, 1/d_in), u ← 0); merge W0 += s·u vᵀ; d_in + d_out per layer."""

        family = "low-rank"
        summary = "ΔW = s·u vᵀ: one trainable pair of directions per layer."
        formula = "d_in + d_out"

        class Testing:
            config: ClassVar[dict[str, Any]] = {"scale": 2.0}

        @dataclasses.dataclass
        class Config:
            scale: float = dataclasses.field(default=1.0, metadata={"range": POSITIVE})  # s

        def __init__(self, base: nn.Module, cfg: Config, shared: nn.Module | None = None) -> None:
            super().__init__(base, cfg, shared)
            d_out, d_in = self.dims(base)
            self.v = nn.Parameter(torch.randn(d_in) / d_in**0.5)
            self.u = nn.Parameter(torch.zeros(d_out))

        def delta_output(self, x: Tensor) -> Tensor:
            return self.cfg.scale * (x.to(self.v.dtype) @ self.v).unsqueeze(-1) * self.u

        def delta_weight(self, weight: Tensor) -> Tensor:
            return (self.cfg.scale * torch.outer(self.u, self.v)).to(weight.dtype)

        @classmethod
        def param_count(cls, base: nn.Module, cfg: Config) -> int:
            d_out, d_in = cls.dims(base)
            return d_in + d_out

    return RankOne


@pytest.fixture
def method():
    cls = define_method()
    try:
        yield cls
    finally:
        unregister(NAME)
    assert NAME not in pa.registered_methods()


def test_catalog_entry_of_the_walkthrough_is_valid():
    entry = Entry(
        id=NAME, name="Rank-one update (example)", family="low-rank", methods=(NAME,),
        paper=Paper("(documentation example)", "peftatlas", "docs", 2026, ""),
        hypothesis="One direction pair per layer carries the adaptation: a rank-1 update recovers most of LoRA's gain.",
        pseudocode="v ~ N(0, 1/d_in), u ← 0\ny = W0 x + s·u (vᵀ x)\nmerge: W0 += s·u vᵀ",
        measurements=("arena: recovered fraction at its (fixed) size",),
        headline=Claim("(none: an example)", "docs/adding-a-method.md", "CALC"),
        counter=(),
        literature=marks(*[(False, "example")] * 6),
    )
    assert entry.literature_points == 0


def _property_checks() -> list:
    """Every (method, kind) property test of the generic suite (compilation aside: it takes one method only)."""
    out = []
    for name, fn in vars(properties).items():
        if name.startswith("test_") and callable(fn):
            params = list(inspect.signature(fn).parameters)
            if params[:2] == ["method", "kind"] and set(params) <= {"method", "kind", "tmp_path"}:
                out.append(fn)
    return out


def test_the_example_method_passes_the_property_suite(method, tmp_path):
    checks = _property_checks()
    assert len(checks) >= 10
    ran = 0
    for fn in checks:
        refusal = fn is properties.test_unsupported_layer_type_is_refused_in_one_line
        for kind in TINY_KINDS:
            # the same (method, kind) pairs the suite's parametrisation gives a registered method
            refused = (properties._layer_method(NAME) and kind in properties.LAYER_TYPE_KINDS
                       and not properties._applies(NAME, kind))
            if refused != refusal:
                continue
            wants_dir = "tmp_path" in inspect.signature(fn).parameters
            kwargs = {"tmp_path": tmp_path / f"{fn.__name__}-{kind}"} if wants_dir else {}
            try:
                fn(NAME, kind, **kwargs)
                ran += 1
            except pytest.skip.Exception as skip:
                assert kind not in ("bert", "llama"), f"{fn.__name__} skipped on {kind}: {skip}"
    assert ran >= len(checks) * 2


def test_the_example_method_gets_the_interface_checks(method):
    with pytest.raises(TypeError, match=f"{NAME}: hyperparameter scale must be a number, got '2'"):
        make_config(method, {"scale": "2"})
    with pytest.raises(pa.MethodError, match="scale must be > 0, got 0"):
        make_config(method, {"scale": 0})
    model = pa.attach(properties.tiny_model("mlp").model, NAME)
    assert model.count_parameters().adapter == (12 + 24) + (24 + 24)  # fc1: 12 → 24, fc2: 24 → 24
