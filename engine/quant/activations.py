"""Activation quantization as the W8A8 and FP8 formats compute it (kernels/scaled_activation.py),
for calibration: a static per-tensor scale, and a fake-quantized round trip. Both read the
format's own traits (its largest code, its activation codes)."""

from __future__ import annotations

import torch

from ...kernels.act_quant import per_token_scale
from ...kernels.scaled_activation import ScaledActivationFormat


def static_scale(absmax: torch.Tensor, fmt: ScaledActivationFormat) -> torch.Tensor:
    """The per-tensor scale [1] that maps the largest observed |x| onto the largest code."""
    return (absmax.max() / fmt.act_max).clamp_min(1e-12).reshape(1).to(torch.float32)


def fake_quantize_activations(x: torch.Tensor, fmt: ScaledActivationFormat,
                              static_absmax: torch.Tensor | None) -> torch.Tensor:
    """x [M, K] through the format's activation quantization: per tensor with the scale
    from `static_absmax`, or per token when it is None."""
    scale = static_scale(static_absmax, fmt).reshape(1, 1) if static_absmax is not None \
        else per_token_scale(x, fmt.act_max)
    return fmt.quantize_activations(x, scale).to(torch.float32) * scale
