"""The Triton GEMM of the formats that quantize activations too (W8A8 INT8, FP8 E4M3):
8-bit x 8-bit products accumulated exactly (int32) or in fp32, then the epilogue
y = acc * s_x[token] * s_w[channel] + b in the output dtype, fused so the accumulator never
leaves registers.

Tiles follow the usual tensor-core GEMM: acc[M, N] over K tiles of 128 bytes, with programs
grouped along M so consecutive programs reuse the same weight columns from L2. Both operands
are K-contiguous, the layout 8-bit Hopper MMAs require.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import tuning
from .act_quant_triton import quantize_per_token
from .triton_support import cdiv, next_pow2, require_triton_device

_GROUP_M = tl.constexpr(8)


@triton.jit
def _scaled_mm_kernel(a_ptr, b_ptr, sa_ptr, sb_ptr, bias_ptr, out_ptr,
                      M, N, K, stride_am, stride_bn, stride_om,
                      PER_TOKEN: tl.constexpr, HAS_BIAS: tl.constexpr, IS_INT8: tl.constexpr,
                      ZERO: tl.constexpr,  # what masked loads read: 0 for int8, 0.0 for fp8 (it must be a float)
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    per_group = _GROUP_M * grid_n
    first_m = (pid // per_group) * _GROUP_M
    group_rows = tl.minimum(grid_m - first_m, _GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32 if IS_INT8 else tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        a = tl.load(a_ptr + offs_m[:, None] * stride_am + offs_k[None, :], mask=m_mask[:, None] & k_mask[None, :],
                    other=ZERO)
        b = tl.load(b_ptr + offs_n[None, :] * stride_bn + offs_k[:, None], mask=k_mask[:, None] & n_mask[None, :],
                    other=ZERO)
        if IS_INT8:
            acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        else:
            # promote the fp8 MMA's partial sums to full fp32 every K tile (Hopper accumulates
            # fp8 products in reduced precision otherwise)
            acc = tl.dot(a, b, acc, max_num_imprecise_acc=BLOCK_K)

    y = acc.to(tl.float32)
    if PER_TOKEN:
        y *= tl.load(sa_ptr + offs_m, mask=m_mask, other=0.0)[:, None]
    else:
        y *= tl.load(sa_ptr)
    y *= tl.load(sb_ptr + offs_n, mask=n_mask, other=0.0)[None, :]
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :], y.to(out_ptr.dtype.element_ty),
             mask=m_mask[:, None] & n_mask[None, :])


def scaled_mm(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
              bias: torch.Tensor | None, out_dtype: torch.dtype, kernel: str) -> torch.Tensor:
    """(a [M, K] @ b [N, K]^T) * scale_a [M, 1] or [1, 1] * scale_b [N, 1] + bias, in out_dtype."""
    M, K = a.shape
    N = b.shape[0]
    out = torch.empty((M, N), dtype=out_dtype, device=a.device)
    if M == 0:
        return out
    scale_b = scale_b.reshape(-1).contiguous()

    def launch(tile: tuning.Tile) -> torch.Tensor:
        block_m = max(16, min(tile.block_m, next_pow2(M)))
        grid = (cdiv(M, block_m) * cdiv(N, tile.block_n),)
        _scaled_mm_kernel[grid](a, b, scale_a, scale_b, bias if bias is not None else scale_b, out,
                                M, N, K, a.stride(0), b.stride(0), out.stride(0),
                                PER_TOKEN=scale_a.numel() > 1,
                                HAS_BIAS=bias is not None, IS_INT8=a.dtype == torch.int8,
                                ZERO=0 if a.dtype == torch.int8 else 0.0,
                                BLOCK_M=block_m, BLOCK_N=tile.block_n, BLOCK_K=tile.block_k,
                                num_warps=tile.num_warps, num_stages=tile.num_stages)
        return out

    key = (next_pow2(M), N, K, str(out_dtype))
    launch(tuning.pick(kernel, tuning.SCALED_MM, key, M, launch))
    return out


def quantized_activation_linear(x: torch.Tensor, qweight: torch.Tensor, weight_scale: torch.Tensor,
                                input_scale: torch.Tensor | None, bias: torch.Tensor | None,
                                act_dtype: torch.dtype, qmax: float, kernel: str) -> torch.Tensor:
    """y = x W^T + b with x quantized per token (or by input_scale) to act_dtype, like W."""
    require_triton_device(f"{kernel}_linear", x)
    shape = x.shape
    xq, scale_x = quantize_per_token(x.reshape(-1, shape[-1]), act_dtype, qmax, input_scale)
    y = scaled_mm(xq, qweight, scale_x, weight_scale, bias, x.dtype, kernel)
    return y.reshape(*shape[:-1], qweight.shape[0])
