"""Activation quantization on Triton for the W8A8 and FP8 formats: one program per token
(row) finds its absmax, then writes the row in int8 or fp8 and its fp32 scale. Static
quantization takes the calibrated per-tensor scale instead of measuring one.

It must produce the very codes of the torch reference (kernels/act_quant.py): IEEE division
(div_rn), clamping, then round-half-to-even, to integers for int8 (what torch.round does) and
to the E4M3 grid for fp8 (what the cast does).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .act_quant import _TINY
from .triton_support import next_pow2, require_triton_device

# Adding then subtracting 1.5 * 2**23 rounds an fp32 |v| < 2**22 to the nearest integer, ties
# to even, in both the compiled kernel and the interpreter (libdevice's rint is CUDA-only).
_RNE_SHIFT = tl.constexpr(12582912.0)
_TINY_SCALE = tl.constexpr(_TINY)


@triton.jit
def _round_to_e4m3(v):
    """fp32 v (|v| <= 448) rounded to the nearest E4M3 value, ties to even, so the cast that
    follows is exact. Done by hand because the 3.9 interpreter's fp8 cast drops the carry
    into the exponent (124.3 becomes 64, not 128); on a GPU it costs a few ALU ops in a
    memory-bound kernel."""
    exp = (v.to(tl.int32, bitcast=True) >> 23) & 0xFF
    exp = tl.maximum(exp, 127 - 6)  # below E4M3's smallest normal its spacing stays 2**-9
    # c = 1.5 * 2**(23 + e - 3): v + c - c rounds v to a multiple of 2**(e - 3), E4M3's spacing
    c = (((exp + 20) << 23) | 0x400000).to(tl.float32, bitcast=True)
    return (v + c) - c


@triton.jit
def _per_token_quant_kernel(x_ptr, q_ptr, s_ptr, K, stride_xm, stride_qm,
                            QMAX: tl.constexpr, STATIC: tl.constexpr, TO_INT8: tl.constexpr,
                            BLOCK_K: tl.constexpr):
    row = tl.program_id(0)
    x_row = x_ptr + row * stride_xm
    if STATIC:
        scale = tl.load(s_ptr).to(tl.float32)
    else:
        absmax = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32)
            absmax = tl.maximum(absmax, tl.abs(x))
        scale = tl.maximum(tl.div_rn(tl.max(absmax, axis=0), QMAX), _TINY_SCALE)
        tl.store(s_ptr + row, scale)
    for k0 in range(0, K, BLOCK_K):
        offs = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32)
        v = tl.minimum(tl.maximum(tl.div_rn(x, scale), -QMAX), QMAX)
        if TO_INT8:
            v = (v + _RNE_SHIFT) - _RNE_SHIFT
        else:
            v = _round_to_e4m3(v)
        tl.store(q_ptr + row * stride_qm + offs, v.to(q_ptr.dtype.element_ty), mask=offs < K)


def quantize_per_token(x2d: torch.Tensor, dtype: torch.dtype, qmax: float,
                       input_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes [M, K] of `dtype`, fp32 scales [M, 1]); with input_scale, the static scale [1, 1]."""
    require_triton_device("activation quantization", x2d)
    M, K = x2d.shape
    x2d = x2d.contiguous()
    q = torch.empty((M, K), dtype=dtype, device=x2d.device)
    static = input_scale is not None
    scale = input_scale.to(torch.float32).reshape(1, 1) if static else \
        torch.empty((M, 1), dtype=torch.float32, device=x2d.device)
    if M:
        _per_token_quant_kernel[(M,)](x2d, q, scale, K, x2d.stride(0), q.stride(0), QMAX=qmax, STATIC=static,
                                      TO_INT8=dtype == torch.int8, BLOCK_K=min(4096, next_pow2(K)),
                                      num_warps=4 if K <= 4096 else 8)
    return q, scale
