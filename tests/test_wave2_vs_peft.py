"""Same parameters, same function: LoHa, LoKr, FourierFT and C3A against HF PEFT 0.21 (when installed).

These pin down that the benchmark in ``bench/bench_wave2_cpu.py`` compares like with like, and
that the conventions (scales, factor shapes, frequency sets, circulant orientation) are documented
correctly in the method modules.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import peftatlas as pa

peft = pytest.importorskip("peft")


def _pair(method: str, peft_config, d_in: int = 32, d_out: int = 24, **hp):
    torch.manual_seed(0)
    ours_net = nn.Sequential(nn.Linear(d_in, d_out))
    theirs_net = nn.Sequential(nn.Linear(d_in, d_out))
    theirs_net.load_state_dict(ours_net.state_dict())
    ours = pa.attach(ours_net, method, targets=["0"], head=None, **hp)
    theirs = peft.get_peft_model(theirs_net, peft_config)
    return ours, ours.adapted_layers()["0"].adapters["default"], theirs, theirs.base_model.model[0]


def _check(ours, theirs, ours_adapter, theirs_layer, d_in: int = 32):
    x = torch.randn(5, d_in)
    with torch.no_grad():
        torch.testing.assert_close(ours_adapter.delta_weight(theirs_layer.get_base_layer().weight),
                                   theirs_layer.get_delta_weight("default"), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


def _fill(*tensors: torch.Tensor, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in tensors:
            t.copy_(torch.randn(t.shape, generator=g) * 0.3)


def test_loha_matches_peft():
    ours, a, theirs, layer = _pair("loha", peft.LoHaConfig(r=3, alpha=6, target_modules=["0"]), r=3, alpha=6.0)
    _fill(a.hada_B1, a.hada_A1, a.hada_B2, a.hada_A2)
    with torch.no_grad():
        for mine, peft_name in ((a.hada_B1, "hada_w1_a"), (a.hada_A1, "hada_w1_b"),
                                (a.hada_B2, "hada_w2_a"), (a.hada_A2, "hada_w2_b")):
            getattr(layer, peft_name)["default"].copy_(mine)
    _check(ours, theirs, a, layer)


def test_lokr_matches_peft():
    ours, a, theirs, layer = _pair("lokr", peft.LoKrConfig(r=2, alpha=4, target_modules=["0"]), r=2, alpha=4.0)
    _fill(a.lokr_C, a.lokr_B, a.lokr_A)
    with torch.no_grad():
        layer.lokr_w1["default"].copy_(a.lokr_C)  # same factor shapes: (4, 4) ⊗ (6, 8)
        layer.lokr_w2_a["default"].copy_(a.lokr_B)
        layer.lokr_w2_b["default"].copy_(a.lokr_A)
    _check(ours, theirs, a, layer)


def test_fourierft_matches_peft_including_the_frequency_set():
    cfg = peft.FourierFTConfig(n_frequency=40, scaling=20.0, random_loc_seed=777, target_modules=["0"])
    ours, a, theirs, layer = _pair("fourierft", cfg, n_frequency=40, scaling=20.0, random_loc_seed=777)
    assert torch.equal(torch.stack([a.rows, a.cols]), layer.indices["default"])
    _fill(a.spectrum)
    with torch.no_grad():
        layer.fourierft_spectrum["default"].copy_(a.spectrum)
    _check(ours, theirs, a, layer)


def test_c3a_matches_peft_with_the_kernel_reversed():
    """Ours: blocks circ(w)[p, q] = w[(p − q) mod b]; PEFT's: w'[(q − p) mod b], so w'[k] = w[−k mod b]."""
    cfg = peft.C3AConfig(block_size=4, target_modules=["0"], init_weights=True)
    ours, a, theirs, layer = _pair("c3a", cfg, block_size=4)
    _fill(a.c3a_kernel)
    b = a.c3a_kernel.shape[-1]
    with torch.no_grad():
        layer.c3a_kernel["default"].copy_(a.c3a_kernel[..., (-torch.arange(b)) % b])
    _check(ours, theirs, a, layer)
