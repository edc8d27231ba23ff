"""No wave-1 method builds a d × d (or d_out × d_in) tensor in its forward or backward pass.

Every ATen op run during ``adapter(x, base)`` and its backward is recorded (a dispatch mode); the
largest tensor it produces must stay well below the size of the weight. The dense oracles
(``reference_forward``) are run through the same recorder as a positive control.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import peftatlas as pa
from peftatlas.testing import tiny_model

D = 96


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op produces while active."""

    def __init__(self) -> None:
        super().__init__()
        self.largest, self.op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:  # new allocations only (views such as W.t() alias their input)
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs \
                    and t.numel() > self.largest:
                self.largest, self.op = t.numel(), str(func)
        return out


CONFIGS = [
    ("oft", {"block_size": 8}), ("oftv2", {"block_size": 8}), ("boft", {"block_size": 4, "n_factors": 3}),
    ("hra", {"r": 8}), ("ether", {"n_blocks": 2}), ("ether_plus", {"two_sided": True}),
    ("road", {"group_size": 8, "variant": "road_4"}), ("pissa", {"r": 4}), ("milora", {"r": 4}),
    ("svft", {"band": 1}), ("ssvd", {"r": 8, "rotation": "cayley"}), ("psoft", {"r": 8}),
    ("antipasto", {"r": 8, "rotate_u": True}), ("dora", {"r": 4}), ("delora", {"r": 4}),
]


def _record(fn) -> LargestTensor:
    mode = LargestTensor()
    with mode:
        fn()
    return mode


def _check(adapter, base, x) -> None:
    d_out, d_in = base.weight.shape
    adapter.perturb_(torch.Generator().manual_seed(0), 0.1)

    def fwd_bwd():
        out = adapter(x, base)
        out.pow(2).sum().backward()

    rec = _record(fwd_bwd)
    assert rec.largest < d_out * d_in // 2, f"{adapter.name}: {rec.op} produced {rec.largest} elements"
    with torch.no_grad():
        dense = _record(lambda: adapter.reference_forward(x, base))
    assert dense.largest >= d_out * d_in, "the recorder should see the dense oracle's matrix"


@pytest.mark.parametrize(("method", "hp"), CONFIGS)
def test_forward_and_backward_never_build_the_dense_matrix(method, hp):
    torch.manual_seed(0)
    base = nn.Linear(D, D)
    for p in base.parameters():
        p.requires_grad_(False)
    model = pa.attach(nn.Sequential(base), method, targets=["0"], head=None, **hp)
    layer = model.adapted_layers()["0"]
    x = torch.randn(2, D, requires_grad=True)
    _check(layer.adapters["default"], layer.base, x)


@pytest.mark.parametrize("proj", ["q_proj", "o_proj"])
def test_clover_forward_is_per_head(proj):
    tm = tiny_model("llama", hidden=128)  # 4 heads of 32
    model = pa.attach(tm.model, "clover", head_dim=32)
    layer = model.adapted_layers()[f"model.layers.0.self_attn.{proj}"]
    x = torch.randn(2, layer.base.in_features, requires_grad=True)
    _check(layer.adapters["default"], layer.base, x)
