"""Reference activation quantization shared by the W8A8 and FP8 formats.

Dynamic: one scale per token (row), absmax / qmax. Static: one calibrated scale per tensor.
"""

from __future__ import annotations

import torch

INT8_MAX = 127.0
FP8_E4M3_MAX = float(torch.finfo(torch.float8_e4m3fn).max)  # 448
_TINY = 1e-12  # an all-zero token still gets a finite scale


def per_token_scale(x2d: torch.Tensor, qmax: float) -> torch.Tensor:
    return (x2d.abs().amax(dim=-1, keepdim=True).to(torch.float32) / qmax).clamp_min(_TINY)


def quantize_int8(x2d: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.round(x2d.to(torch.float32) / scale).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)


def quantize_fp8(x2d: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (x2d.to(torch.float32) / scale).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)


def activation_scale(x2d: torch.Tensor, qmax: float, input_scale: torch.Tensor | None) -> torch.Tensor:
    """Per-token dynamic scale [M, 1], or the static per-tensor scale broadcast as [1, 1]."""
    if input_scale is not None:
        return input_scale.to(torch.float32).reshape(1, 1)
    return per_token_scale(x2d, qmax)
