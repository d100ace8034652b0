"""FP8 E4M3 packing and reference numerics (kernels/scaled_activation.py).

qweight: float8_e4m3fn [N, K]; weight_scale: fp32 [N, 1]; input_scale: fp32 [1] for static
activations. Activations are scaled into E4M3 (per token by absmax/448, or by the static
scale); products accumulate in fp32.
"""

from __future__ import annotations

import torch

from ..act_quant import FP8_E4M3_MAX, quantize_fp8
from ..scaled_activation import ScaledActivationFormat


class FP8Format(ScaledActivationFormat):
    name = "fp8"
    activation_dtype = "fp8"
    code_dtype = torch.float8_e4m3fn
    float_codes = True
    act_max = FP8_E4M3_MAX

    def _store_codes(self, q):
        return q.to(torch.float8_e4m3fn)

    def _load_codes(self, qweight):
        return qweight

    def quantize_activations(self, x2d, scale):
        return quantize_fp8(x2d, scale)

    def _accumulate(self, xq, qweight):
        return xq.to(torch.float32) @ qweight.to(torch.float32).T


FORMAT = FP8Format()
