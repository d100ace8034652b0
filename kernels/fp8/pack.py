"""FP8 E4M3 packing and reference numerics.

qweight: float8_e4m3fn [N, K]; weight_scale: fp32 [N, 1]; input_scale: fp32 [1] for static
activations. Reference: activations scaled into E4M3 (per token by absmax/448, or by the
static scale), products accumulated in fp32, then y = acc * s_x * s_w (+ bias).
"""

from __future__ import annotations

import torch

from ..act_quant import FP8_E4M3_MAX, activation_scale, quantize_fp8
from ..format import QuantizedWeight, QuantParams, WeightFormat


class FP8Format(WeightFormat):
    name = "fp8"
    weight_bits = 8
    activation_dtype = "fp8"

    def check(self, out_features, in_features, p):
        if p.group_size is not None:
            return "FP8 uses per-channel weight scales; set group_size to channel"
        if not p.symmetric:
            return "FP8 weights are symmetric; set symmetric to true"
        return None

    def buffer_specs(self, out_features, in_features, p):
        specs = {"qweight": ((out_features, in_features), torch.float8_e4m3fn),
                 "weight_scale": ((out_features, 1), torch.float32)}
        if p.activation == "static":
            specs["input_scale"] = ((1,), torch.float32)
        return specs

    def pack(self, w: QuantizedWeight, p: QuantParams):
        out = {"qweight": w.q.to(torch.float8_e4m3fn).contiguous(),
               "weight_scale": w.scale.to(torch.float32).reshape(-1, 1).contiguous()}
        if p.activation == "static":
            if w.input_scale is None:
                raise ValueError("fp8 with static activations needs a calibrated input_scale")
            out["input_scale"] = w.input_scale.to(torch.float32).reshape(1)
        return out

    def unpack(self, buffers, p):
        return QuantizedWeight(q=buffers["qweight"], scale=buffers["weight_scale"], zero=None,
                               input_scale=buffers.get("input_scale"))

    def dequantize(self, buffers, p, dtype):
        return (buffers["qweight"].to(torch.float32) * buffers["weight_scale"]).to(dtype)

    def reference_linear(self, x, buffers, p, bias):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        s_x = activation_scale(x2, FP8_E4M3_MAX, buffers.get("input_scale"))
        xq = quantize_fp8(x2, s_x)
        acc = xq.to(torch.float32) @ buffers["qweight"].to(torch.float32).T
        y = acc * s_x * buffers["weight_scale"].reshape(1, -1)
        if bias is not None:
            y = y + bias.to(torch.float32)
        return y.to(x.dtype).reshape(*shape[:-1], -1)


FORMAT = FP8Format()
