"""The Triton activation quantizer gives the very codes and scales of the torch reference."""

from __future__ import annotations

import pytest
import torch

from qrecipe.kernels.act_quant import FP8_E4M3_MAX, INT8_MAX, per_token_scale, quantize_fp8, quantize_int8
from qrecipe.kernels.act_quant_triton import quantize_per_token

TARGETS = [(torch.int8, INT8_MAX, quantize_int8), (torch.float8_e4m3fn, FP8_E4M3_MAX, quantize_fp8)]
IDS = ["int8", "fp8"]


def same_codes(q: torch.Tensor, expect: torch.Tensor) -> bool:
    # compared as values: the kernel writes +0.0 where the fp8 cast of a -0.0 keeps its sign,
    # which no product can tell apart
    return q.dtype == expect.dtype and torch.equal(q.float(), expect.float())


def rows(device) -> torch.Tensor:
    """Tokens of very different magnitudes, an all-zero token, and values on rounding ties."""
    torch.manual_seed(0)
    x = torch.randn(6, 300) * torch.tensor([1e-3, 1.0, 30.0, 1e3, 0.0, 1.0])[:, None]
    x[5, :254] = torch.arange(-127, 127) + 0.5  # with absmax 127 (below) these are exact .5 ties for int8
    x[5, 254] = 127.0
    return x.to(torch.float16).to(device)


@pytest.mark.parametrize("dtype, qmax, reference", TARGETS, ids=IDS)
def test_dynamic_codes_and_scales_equal_the_reference(dtype, qmax, reference, device):
    x = rows(device)
    q, scale = quantize_per_token(x, dtype, qmax)
    expect_scale = per_token_scale(x, qmax)
    assert torch.equal(scale, expect_scale)
    assert same_codes(q, reference(x, expect_scale))


@pytest.mark.parametrize("dtype, qmax, reference", TARGETS, ids=IDS)
def test_static_scale_clamps_like_the_reference(dtype, qmax, reference, device):
    x = rows(device)
    input_scale = torch.tensor([0.05], device=device)  # most tokens overflow it: the clamp decides
    q, scale = quantize_per_token(x, dtype, qmax, input_scale)
    assert scale.shape == (1, 1) and scale.item() == pytest.approx(0.05)
    assert same_codes(q, reference(x, input_scale.reshape(1, 1)))


@pytest.mark.parametrize("dtype, qmax, reference", TARGETS, ids=IDS)
def test_rows_longer_than_one_block(dtype, qmax, reference, device):
    torch.manual_seed(1)
    x = torch.randn(2, 4099, dtype=torch.float16, device=device)  # 4096-column blocks: two passes
    x[1, 4098] = 40.0  # the absmax sits in the last, partial block
    q, scale = quantize_per_token(x, dtype, qmax)
    assert torch.equal(scale, per_token_scale(x, qmax))
    assert same_codes(q, reference(x, scale))
