"""Issue 17 (7): generate(..., adapter_names=[...]) with left padding, greedy and beam search."""

from __future__ import annotations

import pytest
import torch

import peftatlas as pa
from peftatlas.testing import tiny_model


def _two_adapters():
    model = pa.attach(tiny_model("llama").model, "lora", targets="all-linear", r=4, name="a")
    model.add_adapter("b", "lora", targets="all-linear", r=4, seed=1)
    g = torch.Generator().manual_seed(5)
    for layer in model.adapted_layers().values():
        for a in layer.adapters.values():
            a.perturb_(g, scale=0.5)
    return model.eval()


def _left_padded() -> dict[str, torch.Tensor]:
    ids = torch.randint(3, 100, (3, 6), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    ids[0, :2], mask[0, :2] = 0, 0  # row 0 is shorter: padded on the left
    ids[2, :1], mask[2, :1] = 0, 0
    return {"input_ids": ids, "attention_mask": mask}


def _alone(model, name: str, batch, **gen):
    """The whole batch generated with only ``name`` (``"__base__"`` = disabled)."""
    if name == "__base__":
        with model.disable():
            return model.generate(**batch, **gen)
    model.set_active(name)
    return model.generate(**batch, **gen)


@pytest.mark.parametrize("gen", [{"do_sample": False}, {"do_sample": False, "num_beams": 3},
                                 {"do_sample": False, "num_beams": 2, "num_return_sequences": 2}])
def test_generate_routes_each_row_to_its_adapter(gen):
    model = _two_adapters()
    batch = _left_padded()
    names = ["b", "__base__", "a"]
    gen = {**gen, "max_new_tokens": 5, "pad_token_id": 0}
    with torch.no_grad():
        mixed = model.generate(**batch, adapter_names=names, **gen)
        per_row = mixed.shape[0] // len(names)
        singles = {n: _alone(model, n, batch, **gen) for n in set(names)}
    assert any(not torch.equal(singles["a"], singles[n]) for n in ("b", "__base__"))  # adapters differ
    for i, n in enumerate(names):
        rows = slice(i * per_row, (i + 1) * per_row)
        assert torch.equal(mixed[rows], singles[n][rows]), f"row {i} ({n})"
