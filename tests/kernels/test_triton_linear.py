"""Every Triton linear kernel matches its format's torch reference (reference_linear), run
through its custom op, on shapes that are no multiple of the block sizes, M = 1 included."""

from __future__ import annotations

import pytest
import torch

from qrecipe.kernels import tuning
from qrecipe.kernels.ops import triton_linear

# Both sides accumulate in fp32 and round once to the output dtype; they differ by summation
# order only, so a few units in the last place of the output dtype.
RTOL = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}

# (M, groups, per-channel in_features, out_features): M = 1 (decode), M and N off the blocks,
# per-channel K off every block size.
SHAPES = [(1, 3, 200, 80), (5, 2, 142, 40), (37, 5, 330, 136)]


def check(case, device, m, k, n, dtype, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(m, k, dtype=dtype, device=device)
    buffers = case.make(n, k, x, seed)
    bias = torch.randn(n, dtype=dtype, device=device)
    y = triton_linear(case.fmt.name, x, buffers, case.params.group_size, bias)
    ref = case.fmt.reference_linear(x, buffers, case.params, bias)
    assert y.shape == ref.shape and y.dtype == dtype
    scale = ref.float().abs().max()
    torch.testing.assert_close(y.float(), ref.float(), rtol=RTOL[dtype], atol=RTOL[dtype] * scale)


@pytest.mark.parametrize("m, groups, per_channel, n", SHAPES)
def test_matches_reference_fp16(case, device, m, groups, per_channel, n):
    check(case, device, m, case.in_features(groups, per_channel), n, torch.float16)


def test_leading_dims_are_kept(case, device):
    k = case.in_features(2, 64)
    x = torch.randn(2, 3, k, dtype=torch.float16, device=device)
    buffers = case.make(24, k, x)
    y = triton_linear(case.fmt.name, x, buffers, case.params.group_size, None)
    ref = case.fmt.reference_linear(x, buffers, case.params, None)
    assert y.shape == (2, 3, 24)
    torch.testing.assert_close(y.float(), ref.float(), rtol=2e-3, atol=2e-3 * ref.float().abs().max())


def test_split_k_sums_partials_exactly_once(weight_only_case, device):
    """Few output tiles and a long K: the weight-only launcher splits K (auto_split_k)."""
    case = weight_only_case
    k = case.in_features(32, 1024)
    block_k = min(tuning.candidates(tuning.WEIGHT_ONLY, 3)[0].block_k, case.params.group_size or k)
    assert tuning.auto_split_k(1, k // block_k, 4) > 1  # the shape below does split in the interpreter
    check(case, device, 3, k, 48, torch.float16)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 tl.dot is only right compiled (needs CUDA)")
@pytest.mark.parametrize("m, groups, per_channel, n", SHAPES + [(300, 4, 520, 264)])
def test_matches_reference_bf16_on_gpu(case, device, m, groups, per_channel, n):
    check(case, device, m, case.in_features(groups, per_channel), n, torch.bfloat16)
