"""W8A8 INT8 packing and reference numerics.

qweight: int8 [N, K] (symmetric, code - 128); weight_scale: fp32 [N, 1]; input_scale: fp32
[1] when activations use a static calibrated scale. Reference: activations quantized to
int8 (per token, or by the static scale), exact int32 accumulation, then the epilogue
y = acc * s_x * s_w (+ bias).
"""

from __future__ import annotations

import torch

from ..act_quant import INT8_MAX, activation_scale, quantize_int8
from ..format import QuantizedWeight, QuantParams, WeightFormat


class W8A8Format(WeightFormat):
    name = "w8a8"
    weight_bits = 8
    activation_dtype = "int8"

    def check(self, out_features, in_features, p):
        if p.group_size is not None:
            return "W8A8 uses per-channel weight scales; set group_size to channel"
        if not p.symmetric:
            return "W8A8 weights are symmetric; set symmetric to true"
        return None

    def buffer_specs(self, out_features, in_features, p):
        specs = {"qweight": ((out_features, in_features), torch.int8),
                 "weight_scale": ((out_features, 1), torch.float32)}
        if p.activation == "static":
            specs["input_scale"] = ((1,), torch.float32)
        return specs

    def pack(self, w: QuantizedWeight, p: QuantParams):
        out = {"qweight": (w.q.to(torch.int16) - 128).to(torch.int8).contiguous(),
               "weight_scale": w.scale.to(torch.float32).reshape(-1, 1).contiguous()}
        if p.activation == "static":
            if w.input_scale is None:
                raise ValueError("w8a8 with static activations needs a calibrated input_scale")
            out["input_scale"] = w.input_scale.to(torch.float32).reshape(1)
        return out

    def unpack(self, buffers, p):
        return QuantizedWeight(q=(buffers["qweight"].to(torch.int16) + 128).to(torch.uint8),
                               scale=buffers["weight_scale"], zero=None,
                               input_scale=buffers.get("input_scale"))

    def dequantize(self, buffers, p, dtype):
        return (buffers["qweight"].to(torch.float32) * buffers["weight_scale"]).to(dtype)

    def reference_linear(self, x, buffers, p, bias):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        s_x = activation_scale(x2, INT8_MAX, buffers.get("input_scale"))
        xq = quantize_int8(x2, s_x)
        acc = xq.to(torch.int32) @ buffers["qweight"].to(torch.int32).T  # exact
        y = acc.to(torch.float32) * s_x * buffers["weight_scale"].reshape(1, -1)
        if bias is not None:
            y = y + bias.to(torch.float32)
        return y.to(x.dtype).reshape(*shape[:-1], -1)


FORMAT = W8A8Format()
