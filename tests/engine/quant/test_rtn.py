"""RTN error bounds: SQNR floors per scheme on the real weights of TinyStories-656K.

Uniform b-bit quantization gives about 6 dB per bit; the floors below sit 1-2 dB under what
these weights reach (measured: W8 per-channel 42.0 dB min, W4 g128 16.8, W4 g32 19.6,
W4 g64 asymmetric 20.1, FP8 31.6)."""

from __future__ import annotations

import pytest
import torch

from qrecipe.engine.quant.grid import WeightGrid
from qrecipe.engine.quant.rtn import rtn_quantize
from qrecipe.engine.schemes import SCHEMES
from qrecipe.kernels import QuantParams, get_format

FLOORS = [
    ("W8A16", QuantParams(None), 40.0),
    ("W8A16", QuantParams(64, symmetric=False), 43.0),
    ("W4A16", QuantParams(128), 15.5),
    ("W4A16", QuantParams(None), 15.5),
    ("W4A16", QuantParams(32), 18.5),
    ("W4A16", QuantParams(64, symmetric=False), 19.0),
    ("W8A8", QuantParams(None, activation="dynamic"), 40.0),
    ("FP8", QuantParams(None, activation="dynamic"), 30.0),
]


def sqnr_db(x, y):
    return (10 * torch.log10(x.pow(2).sum() / (x - y).pow(2).sum())).item()


@pytest.fixture(scope="module")
def weights(tiny_model):
    model, _ = tiny_model
    return [m.weight.data for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]


@pytest.mark.parametrize("scheme, p, floor", FLOORS)
def test_sqnr_floor(scheme, p, floor, weights):
    fmt = get_format(SCHEMES[scheme].format)
    for w in weights:
        deq = fmt.dequantize(fmt.pack(rtn_quantize(w, SCHEMES[scheme], p), p), p, torch.float32)
        assert sqnr_db(w, deq) >= floor


def test_smaller_groups_are_more_accurate(weights):
    fmt, s = get_format("w4a16"), SCHEMES["W4A16"]
    w = weights[0]
    errs = [sqnr_db(w, fmt.dequantize(fmt.pack(rtn_quantize(w, s, QuantParams(g)), QuantParams(g)),
                                      QuantParams(g), torch.float32)) for g in (128, 64, 32)]
    assert errs[0] < errs[1] < errs[2]


def _int4(group_size, symmetric) -> WeightGrid:
    return WeightGrid.of(SCHEMES["W4A16"], QuantParams(group_size, symmetric=symmetric))


def test_rtn_is_nearest_point_of_the_grid():
    # Each weight lands on the grid point closest to it: error at most half a step.
    w = torch.randn(16, 64)
    grid = _int4(32, True)
    scale, zero = grid.qparams(w)
    q = grid.quantized(w, scale, zero).q
    deq = (q.float() - 8).reshape(16, 2, 32) * scale.unsqueeze(-1)
    inside = (w.reshape(16, 2, 32).abs() <= 7 * scale.unsqueeze(-1))
    err = (deq - w.reshape(16, 2, 32)).abs()
    assert (err[inside] <= scale.unsqueeze(-1).expand_as(err)[inside] / 2 + 1e-6).all()


def test_all_zero_group_gives_finite_scales_and_exact_zeros():
    w = torch.zeros(4, 64)
    w[0, :32] = torch.randn(32)
    for sym in (True, False):
        grid = _int4(32, sym)
        scale, zero = grid.qparams(w)
        assert torch.isfinite(scale).all() and (scale > 0).all()
        q = grid.quantized(w, scale, zero).q
        deq = ((q.float().reshape(4, 2, 32) - zero.unsqueeze(-1)) * scale.unsqueeze(-1)).reshape(4, 64)
        assert torch.equal(deq[1:], torch.zeros(3, 64))


def test_asymmetric_range_includes_zero():
    w = torch.rand(8, 32) + 1.0  # all positive: the grid must still represent 0 exactly
    scale, zero = _int4(None, False).qparams(w)
    assert (zero == 0).all()


@pytest.mark.parametrize("scheme, params", [("W4A16", QuantParams(64, False, "none")),
                                            ("W8A16", QuantParams(None, True, "none")),
                                            ("FP8", QuantParams(None, True, "dynamic"))])
def test_a_large_layer_rounded_in_slices_of_rows_gives_the_same_bits(scheme, params, monkeypatch):
    """Big layers (a 128k-vocabulary head) are rounded a slice of rows at a time to bound memory."""
    from qrecipe.engine.quant import rtn

    w = torch.randn(1000, 256, generator=torch.Generator().manual_seed(0))
    whole = rtn_quantize(w, SCHEMES[scheme], params)
    monkeypatch.setattr(rtn, "SLICE_WEIGHTS", 256 * 7)  # 143 slices of 7 rows, the last one shorter
    sliced = rtn_quantize(w, SCHEMES[scheme], params)
    for a, b in ((whole.q, sliced.q), (whole.scale, sliced.scale), (whole.zero, sliced.zero)):
        assert (a is None and b is None) or torch.equal(a.view(torch.uint8) if a.dtype.itemsize == 1 else a,
                                                        b.view(torch.uint8) if b.dtype.itemsize == 1 else b)
