"""Formats that quantize activations too (W8A8 INT8, FP8 E4M3): symmetric per-channel weight
codes, an fp32 scale per output channel, and activations quantized per token (dynamic) or by
one calibrated scale (static, stored as input_scale).

Reference: y = (x_q @ w_q^T) * s_x * s_w (+ bias), with x_q = quantize(x / s_x). The two
formats differ only in the code dtype, the activation range and how products accumulate.
"""

from __future__ import annotations

import torch

from .act_quant import activation_scale
from .format import QuantizedWeight, QuantParams, WeightFormat


class ScaledActivationFormat(WeightFormat):
    weight_bits = 8
    scale_dtype = torch.float32
    activation_modes = ("dynamic", "static")
    code_dtype: torch.dtype  # storage dtype of the weight codes
    act_max: float  # activations are scaled so that absmax maps onto this

    def _store_codes(self, q: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _load_codes(self, qweight: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def quantize_activations(self, x2d: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Activation codes of x [M, K] for a per-token [M, 1] or per-tensor scale."""
        raise NotImplementedError

    def _accumulate(self, xq: torch.Tensor, qweight: torch.Tensor) -> torch.Tensor:
        """x_q @ w_q^T as float32."""
        raise NotImplementedError

    def check(self, out_features, in_features, p):
        if p.group_size is not None:
            return f"{self.name.upper()} uses per-channel weight scales; set group_size to channel"
        if not p.symmetric:
            return f"{self.name.upper()} weights are symmetric; set symmetric to true"
        return None

    def buffer_specs(self, out_features, in_features, p):
        specs = {"qweight": ((out_features, in_features), self.code_dtype),
                 "weight_scale": ((out_features, 1), torch.float32)}
        if p.activation == "static":
            specs["input_scale"] = ((1,), torch.float32)
        return specs

    def pack(self, w: QuantizedWeight, p: QuantParams):
        out = {"qweight": self._store_codes(w.q).contiguous(),
               "weight_scale": w.scale.to(torch.float32).reshape(-1, 1).contiguous()}
        if p.activation == "static":
            if w.input_scale is None:
                raise ValueError(f"{self.name} with static activations needs a calibrated input_scale")
            out["input_scale"] = w.input_scale.to(torch.float32).reshape(1)
        return out

    def unpack(self, buffers, p):
        return QuantizedWeight(q=self._load_codes(buffers["qweight"]), scale=buffers["weight_scale"], zero=None,
                               input_scale=buffers.get("input_scale"))

    def dequantize(self, buffers, p, dtype):
        return (buffers["qweight"].to(torch.float32) * buffers["weight_scale"]).to(dtype)

    def reference_linear(self, x, buffers, p, bias):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        s_x = activation_scale(x2, self.act_max, buffers.get("input_scale"))
        acc = self._accumulate(self.quantize_activations(x2, s_x), buffers["qweight"])
        y = acc * s_x * buffers["weight_scale"].reshape(1, -1)
        if bias is not None:
            y = y + bias.to(torch.float32)
        return y.to(x.dtype).reshape(*shape[:-1], -1)
