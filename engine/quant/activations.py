"""Activation quantization as the W8A8 and FP8 formats compute it (kernels/act_quant.py),
for calibration: the largest code per format, and a fake-quantized round trip."""

from __future__ import annotations

import torch

from ...kernels.act_quant import FP8_E4M3_MAX, INT8_MAX, per_token_scale, quantize_fp8, quantize_int8

QMAX = {"w8a8": INT8_MAX, "fp8": FP8_E4M3_MAX}


def static_scale(absmax: torch.Tensor, fmt: str) -> torch.Tensor:
    """The per-tensor scale [1] that maps the largest observed |x| onto the largest code."""
    return (absmax.max() / QMAX[fmt]).clamp_min(1e-12).reshape(1).to(torch.float32)


def fake_quantize_activations(x: torch.Tensor, fmt: str, static_absmax: torch.Tensor | None) -> torch.Tensor:
    """x [M, K] through the format's activation quantization: per tensor with the scale
    from `static_absmax`, or per token when it is None."""
    scale = static_scale(static_absmax, fmt).reshape(1, 1) if static_absmax is not None \
        else per_token_scale(x, QMAX[fmt])
    q = quantize_fp8(x, scale) if fmt == "fp8" else quantize_int8(x, scale)
    return q.to(torch.float32) * scale
