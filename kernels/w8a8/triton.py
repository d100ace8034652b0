"""W8A8 INT8 on Triton: per-token (or static) int8 activation quantization, then the int8 GEMM
with exact int32 accumulation and the scale epilogue (kernels/scaled_mm_triton.py)."""

from __future__ import annotations

import torch

from ..act_quant import INT8_MAX
from ..scaled_mm_triton import quantized_activation_linear


def linear(x: torch.Tensor, qweight: torch.Tensor, weight_scale: torch.Tensor, input_scale: torch.Tensor | None,
           bias: torch.Tensor | None) -> torch.Tensor:
    return quantized_activation_linear(x, qweight, weight_scale, input_scale, bias, torch.int8, INT8_MAX, "w8a8")
