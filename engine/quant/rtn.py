"""Round-to-nearest: the floor every other algorithm is measured against, and the last
step of the transforms (AWQ, SmoothQuant) once they have rescaled the weights."""

from __future__ import annotations

import torch

from ...kernels import QuantizedWeight, QuantParams
from ..schemes import Scheme
from .primitives import affine_qparams, fp8_weight, quantize_codes


def rtn_quantize(w: torch.Tensor, scheme: Scheme, p: QuantParams) -> QuantizedWeight:
    """Codes and scales of weight w [N, K] under the scheme (no calibration)."""
    if scheme.format == "fp8":
        q, scale = fp8_weight(w)
        return QuantizedWeight(q=q, scale=scale)
    if scheme.format == "w8a8":
        scale, zero = affine_qparams(w, 8, None, True, scale_dtype=torch.float32)
        return QuantizedWeight(q=quantize_codes(w, scale, zero, 8, None), scale=scale)
    if scheme.format in ("w4a16", "w8a16"):
        bits = scheme.weight_bits
        scale, zero = affine_qparams(w, bits, p.group_size, p.symmetric)
        q = quantize_codes(w, scale, zero, bits, p.group_size)
        return QuantizedWeight(q=q, scale=scale, zero=None if p.symmetric else zero)
    raise ValueError(f"scheme {scheme.name} has no weight format to quantize into")
