"""FP8 E4M3 on Triton: per-token (or static) fp8 activation quantization, then the fp8 GEMM
with fp32 accumulation and the scale epilogue (kernels/scaled_mm_triton.py). Needs compute
capability 8.9 or newer when compiled."""

from __future__ import annotations

import torch

from ..act_quant import FP8_E4M3_MAX
from ..scaled_mm_triton import quantized_activation_linear


def linear(x: torch.Tensor, qweight: torch.Tensor, weight_scale: torch.Tensor, input_scale: torch.Tensor | None,
           bias: torch.Tensor | None) -> torch.Tensor:
    return quantized_activation_linear(x, qweight, weight_scale, input_scale, bias, torch.float8_e4m3fn,
                                       FP8_E4M3_MAX, "fp8")
