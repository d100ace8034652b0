"""QuantLinear computes what its packed weights stand for, on every backend that takes it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qrecipe.engine.modules import QuantLinear
from qrecipe.engine.quant.rtn import rtn_quantize
from qrecipe.engine.schemes import SCHEMES
from qrecipe.kernels import QuantParams

CASES = [("W4A16", QuantParams(32)), ("W4A16", QuantParams(64, symmetric=False)), ("W8A16", QuantParams(None)),
         ("W8A16", QuantParams(32, symmetric=False)), ("W8A8", QuantParams(None, activation="dynamic")),
         ("FP8", QuantParams(None, activation="dynamic"))]
WEIGHT_ONLY = [c for c in CASES if SCHEMES[c[0]].activation == "float"]


def make(scheme, p, bias=True, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(128, 96, bias=bias)
    q = QuantLinear.from_quantized(lin, scheme, p, rtn_quantize(lin.weight.data, SCHEMES[scheme], p))
    return lin, q


@pytest.mark.parametrize("scheme, p", WEIGHT_ONLY)
@pytest.mark.parametrize("m", [1, 7])
def test_weight_only_matches_dequantize_then_matmul(scheme, p, m):
    lin, q = make(scheme, p)
    x = torch.randn(3, m, 128)
    expect = torch.nn.functional.linear(x, q.dequantized_weight(torch.float32), lin.bias)
    torch.testing.assert_close(q(x), expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scheme, p", CASES)
def test_quantized_output_is_close_to_float(scheme, p):
    # End-to-end numerics (weights and, where the scheme says, activations quantized).
    lin, q = make(scheme, p)
    x = torch.randn(16, 128)
    ref, out = lin(x), q(x)
    sqnr = 10 * torch.log10(ref.pow(2).sum() / (ref - out).pow(2).sum())
    floor = 14.0 if scheme == "W4A16" else 25.0
    assert sqnr > floor


def test_packed_bytes_shrink():
    lin, q4 = make("W4A16", QuantParams(32), bias=False)
    assert q4.weight_nbytes() < lin.weight.numel() * 4 / 7


def test_fp8_on_cpu_is_emulated():
    _, q = make("FP8", QuantParams(None, activation="dynamic"))
    assert q.prepare().emulated


def test_w8a8_on_cpu_runs_int8_natively():
    _, q = make("W8A8", QuantParams(None, activation="dynamic"))
    backend = q.prepare()
    assert not backend.emulated
