"""W8A8 INT8 packing and reference numerics (kernels/scaled_activation.py).

qweight: int8 [N, K] (symmetric, code - 128); weight_scale: fp32 [N, 1]; input_scale: fp32
[1] when activations use a static calibrated scale. Activations are quantized to int8 (per
token by absmax/127, or by the static scale) and accumulated exactly in int32.
"""

from __future__ import annotations

import torch

from ..act_quant import INT8_MAX, quantize_int8
from ..scaled_activation import ScaledActivationFormat


class W8A8Format(ScaledActivationFormat):
    name = "w8a8"
    activation_dtype = "int8"
    code_dtype = torch.int8
    act_max = INT8_MAX

    def _store_codes(self, q):
        return (q.to(torch.int16) - 128).to(torch.int8)

    def _load_codes(self, qweight):
        return (qweight.to(torch.int16) + 128).to(torch.uint8)

    def quantize_activations(self, x2d, scale):
        return quantize_int8(x2d, scale)

    def _accumulate(self, xq, qweight):
        return (xq.to(torch.int32) @ qweight.to(torch.int32).T).to(torch.float32)  # exact


FORMAT = W8A8Format()
