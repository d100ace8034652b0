"""The Triton kernel of the integer weight-only formats (W4A16, W8A16): y = x W^T + b with W
dequantized in registers, read straight from the checkpoint layout (kernels/w4a16/pack.py,
kernels/w8a16/pack.py), so a module needs no second copy of its weights on the GPU.

Design, for decode and prefill alike:
- The product is computed transposed, acc[N, M] = W_tile @ x_tile^T: the weight tile is the
  wide side of the tensor-core MMA and M (1 to 16 in decode) the narrow side, so decode wastes
  no MMA rows on padding beyond 16 and the dequantized tile can feed the MMA from registers.
- Dequantization is exact: (q - z) is a small integer, made without an int->float convert on
  the fp16 path (q or-ed into the mantissa of 1024.0), and the group scale multiplies the
  fp32 partial product of a K tile (a K tile never straddles a group), not every weight.
- Small M splits K over programs (auto_split_k) when N alone gives too few tiles; the partial
  sums go to an fp32 buffer summed by torch, which keeps the result deterministic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import tuning
from .triton_support import cdiv, next_pow2, require_triton_device

_FP16_MAGIC = tl.constexpr(0x6400)  # 1024.0 in fp16; or-ing q < 1024 into it gives 1024 + q exactly
_BF16_MAGIC = tl.constexpr(0x4300)  # 128.0 in bf16; likewise for q < 128


@triton.jit
def _codes_as_float(q, DTYPE: tl.constexpr, BITS: tl.constexpr):
    """Unsigned codes (uint8) as exact floats of DTYPE."""
    if DTYPE == tl.float16:
        return (q.to(tl.int16) | _FP16_MAGIC).to(tl.float16, bitcast=True) - 1024.0
    elif DTYPE == tl.bfloat16 and BITS == 4:
        return (q.to(tl.int16) | _BF16_MAGIC).to(tl.bfloat16, bitcast=True) - 128.0
    else:
        return q.to(DTYPE)


@triton.jit
def _load_codes(qw_ptr, offs_n, k0, N, K, stride_qn, BITS: tl.constexpr, BLOCK_K: tl.constexpr):
    """Unsigned codes [BLOCK_N, BLOCK_K] (uint8) of columns k0.. from the checkpoint layout."""
    if BITS == 4:
        # byte j of a row holds column 2j (low nibble) and 2j+1 (high nibble)
        offs_b = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        mask = (offs_n[:, None] < N) & (offs_b[None, :] < K // 2)
        b = tl.load(qw_ptr + offs_n[:, None] * stride_qn + offs_b[None, :], mask=mask, other=0)
        return tl.interleave(b & 0xF, b >> 4)
    else:
        # int8 holding q - 128: flipping the sign bit gives q
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask = (offs_n[:, None] < N) & (offs_k[None, :] < K)
        b = tl.load(qw_ptr + offs_n[:, None] * stride_qn + offs_k[None, :], mask=mask, other=0)
        return b.to(tl.uint8, bitcast=True) ^ 0x80


@triton.jit
def _load_zero(z_ptr, offs_n, g, N, stride_zn, BITS: tl.constexpr, HAS_ZERO: tl.constexpr):
    """Zero points of group g as unsigned codes [BLOCK_N, 1]; symmetric: the fixed mid code."""
    if HAS_ZERO:
        z = tl.load(z_ptr + offs_n * stride_zn + g, mask=offs_n < N, other=0)
        if BITS == 8:
            z = z.to(tl.uint8, bitcast=True) ^ 0x80  # stored as z - 128
        return z[:, None]
    else:
        return tl.full((offs_n.shape[0], 1), 2 ** (BITS - 1), tl.uint8)


@triton.jit
def _weight_only_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, bias_ptr, out_ptr,
    M, N, K, K_PER_SPLIT,
    stride_xm, stride_qn, stride_sn, stride_zn, stride_om, stride_osplit,
    GROUP: tl.constexpr,  # group length; 0: per-channel (one scale per row)
    BITS: tl.constexpr, HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)
    DTYPE: tl.constexpr = x_ptr.dtype.element_ty
    # fp32 activations: a plain fp32 dot (tf32 would lose the precision fp32 asked for)
    PRECISION: tl.constexpr = "ieee" if DTYPE == tl.float32 else "tf32"
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n_mask = offs_n < N
    m_mask = offs_m < M

    if GROUP == 0:
        zero = _codes_as_float(_load_zero(z_ptr, offs_n, 0, N, stride_zn, BITS, HAS_ZERO), DTYPE, BITS)
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    k_start = pid_k * K_PER_SPLIT
    for k0 in range(k_start, tl.minimum(k_start + K_PER_SPLIT, K), BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        xt = tl.load(x_ptr + offs_m[None, :] * stride_xm + offs_k[:, None],
                     mask=(offs_k[:, None] < K) & m_mask[None, :], other=0.0)
        q = _codes_as_float(_load_codes(qw_ptr, offs_n, k0, N, K, stride_qn, BITS, BLOCK_K), DTYPE, BITS)
        if GROUP == 0:
            acc = tl.dot(q - zero, xt, acc, input_precision=PRECISION)
        else:
            g = k0 // GROUP
            zero_g = _codes_as_float(_load_zero(z_ptr, offs_n, g, N, stride_zn, BITS, HAS_ZERO), DTYPE, BITS)
            part = tl.dot(q - zero_g, xt, input_precision=PRECISION)
            scale = tl.load(s_ptr + offs_n * stride_sn + g, mask=n_mask, other=0.0).to(tl.float32)
            acc += part * scale[:, None]
    if GROUP == 0:
        acc *= tl.load(s_ptr + offs_n * stride_sn, mask=n_mask, other=0.0).to(tl.float32)[:, None]

    out_mask = n_mask[:, None] & m_mask[None, :]
    out = out_ptr + pid_k * stride_osplit + offs_m[None, :] * stride_om + offs_n[:, None]
    if SPLIT:
        tl.store(out, acc, mask=out_mask)  # fp32 partial sums; the launcher adds them up
    else:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[:, None]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


def _processors(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the interpreter: small enough that tests on small shapes exercise split-K


def weight_only_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                       bias: torch.Tensor | None, group_size: int | None, bits: int) -> torch.Tensor:
    """y = x W^T + b for W in the checkpoint layout of W4A16 (bits=4) or W8A16 (bits=8)."""
    require_triton_device(f"w{bits}a16_linear", x)
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"w{bits}a16_linear takes float16, bfloat16 or float32 activations, got {x.dtype}")
    shape = x.shape
    K, N = shape[-1], qweight.shape[0]
    x2 = x.reshape(-1, K).contiguous()
    M = x2.shape[0]
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0:
        return y.reshape(*shape[:-1], N)
    scales = scales.contiguous()
    zeros = zeros.contiguous() if zeros is not None else None

    def launch(tile: tuning.Tile) -> torch.Tensor:
        block_m = max(16, min(tile.block_m, next_pow2(M)))
        block_k = tile.block_k if group_size is None else min(tile.block_k, group_size)
        grid_n, grid_m, k_blocks = cdiv(N, tile.block_n), cdiv(M, block_m), cdiv(K, block_k)
        split = tile.split_k or tuning.auto_split_k(grid_n * grid_m, k_blocks, _processors(x.device))
        k_per_split = cdiv(k_blocks, split) * block_k
        split = cdiv(K, k_per_split)
        out = y if split == 1 else torch.empty((split, M, N), dtype=torch.float32, device=x.device)
        _weight_only_kernel[(grid_n, grid_m, split)](
            x2, qweight, scales, zeros if zeros is not None else scales, bias if bias is not None else scales, out,
            M, N, K, k_per_split,
            x2.stride(0), qweight.stride(0), scales.stride(0), zeros.stride(0) if zeros is not None else 0,
            N, M * N,
            GROUP=group_size or 0, BITS=bits, HAS_ZERO=zeros is not None, HAS_BIAS=bias is not None,
            SPLIT=split > 1, BLOCK_M=block_m, BLOCK_N=tile.block_n, BLOCK_K=block_k,
            num_warps=tile.num_warps, num_stages=tile.num_stages)
        if split > 1:
            total = out.sum(0)
            if bias is not None:
                total += bias.to(torch.float32)
            y.copy_(total)
        return y

    key = (next_pow2(M), N, K, group_size, str(x.dtype))
    launch(tuning.pick(f"w{bits}a16", tuning.WEIGHT_ONLY, key, M, launch))
    return y.reshape(*shape[:-1], N)
