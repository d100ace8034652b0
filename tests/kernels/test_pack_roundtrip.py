"""Packing is lossless and the packed bytes are what the plan promises."""

from __future__ import annotations

import pytest
import torch

from qrecipe.kernels import FORMATS, QuantizedWeight, QuantParams, get_format
from qrecipe.kernels.w4a16 import pack_int4, unpack_int4

CASES = [("w4a16", QuantParams(32)), ("w4a16", QuantParams(128, symmetric=False)), ("w4a16", QuantParams(None)),
         ("w8a16", QuantParams(64)), ("w8a16", QuantParams(None, symmetric=False)),
         ("w8a8", QuantParams(None, activation="dynamic")), ("w8a8", QuantParams(None, activation="static")),
         ("fp8", QuantParams(None, activation="dynamic")), ("fp8", QuantParams(None, activation="static"))]


def random_codes(fmt, p, n=48, k=256, seed=0) -> QuantizedWeight:
    g = torch.Generator().manual_seed(seed)
    groups = p.groups(k)
    if fmt.name == "fp8":
        q = (torch.randn(n, k, generator=g) * 50).to(torch.float8_e4m3fn)
        scale = torch.rand(n, 1, generator=g) + 0.1
    else:
        hi = 2 ** fmt.weight_bits - 1
        q = torch.randint(0, hi + 1, (n, k), generator=g, dtype=torch.int32).to(torch.uint8)
        # every code, 0 included: symmetric grids use the whole signed range ([-8, 7], [-128, 127])
        scale = (torch.rand(n, groups, generator=g) + 0.1).to(torch.float16).to(torch.float32)
    zero = None if p.symmetric else torch.randint(0, 2 ** fmt.weight_bits, (n, groups), generator=g, dtype=torch.int32)
    input_scale = torch.tensor([0.05]) if p.activation == "static" else None
    return QuantizedWeight(q=q, scale=scale, zero=zero, input_scale=input_scale)


@pytest.mark.parametrize("name, p", CASES)
def test_pack_unpack_is_exact(name, p):
    fmt = get_format(name)
    w = random_codes(fmt, p)
    packed = fmt.pack(w, p)
    back = fmt.unpack(packed, p)
    if name == "fp8":
        assert torch.equal(back.q.view(torch.uint8), w.q.view(torch.uint8))
    else:
        assert torch.equal(back.q.to(torch.int32), w.q.to(torch.int32))
    assert torch.equal(back.scale.to(torch.float32).reshape(w.scale.shape), w.scale)
    if not p.symmetric:
        assert torch.equal(back.zero.to(torch.int32), w.zero)
    if p.activation == "static":
        assert torch.equal(back.input_scale, w.input_scale)


@pytest.mark.parametrize("name, p", CASES)
def test_nbytes_matches_the_real_buffers(name, p):
    fmt = get_format(name)
    packed = fmt.pack(random_codes(fmt, p), p)
    real = sum(t.numel() * t.element_size() for t in packed.values())
    assert real == fmt.nbytes(48, 256, p)
    specs = fmt.buffer_specs(48, 256, p)
    assert {k: (tuple(t.shape), t.dtype) for k, t in packed.items()} == specs


def test_int4_is_half_a_byte_per_weight():
    p = QuantParams(128)
    assert get_format("w4a16").nbytes(4096, 4096, p) == 4096 * 4096 // 2 + 4096 * 32 * 2


def test_int4_nibble_order():
    q = torch.tensor([[1, 2, 15, 0]], dtype=torch.uint8)
    packed = pack_int4(q)
    assert packed.tolist() == [[0x21, 0x0F]]
    assert torch.equal(unpack_int4(packed), q)


@pytest.mark.parametrize("name, p", CASES)
def test_dequantize_is_q_minus_zero_times_scale(name, p):
    fmt = get_format(name)
    w = random_codes(fmt, p)
    deq = fmt.dequantize(fmt.pack(w, p), p, torch.float32)
    k = w.q.shape[1]
    if name == "fp8":
        expect = w.q.to(torch.float32) * w.scale
    else:
        zero = w.zero if w.zero is not None else 2 ** (fmt.weight_bits - 1)
        glen = p.group_len(k)
        z = zero if isinstance(zero, int) else zero.repeat_interleave(glen, 1)
        expect = (w.q.to(torch.float32) - z) * w.scale.repeat_interleave(glen, 1)
    torch.testing.assert_close(deq, expect, rtol=0, atol=0)


def test_every_registered_format_is_covered():
    assert {name for name, _ in CASES} == set(FORMATS)


def test_odd_columns_are_refused_for_int4():
    assert "odd" in get_format("w4a16").check(8, 7, QuantParams(None))
