"""Plain torch: dequantize-then-matmul for weight-only formats, torch._int_mm for W8A8 on CPU.

Dequantization happens per call into a temporary, so the module keeps only packed bytes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...kernels.act_quant import INT8_MAX, activation_scale, quantize_int8
from .base import FALLBACK, KERNEL, Backend


class TorchBackend(Backend):
    name = "torch"

    def kind(self, fmt):
        # int8 x int8 GEMMs are what a CPU serves W8A8 with; weight-only formats are only
        # dequantized into a float weight here, which no serving kernel does
        return KERNEL if fmt.activation_dtype == "int8" else FALLBACK

    def describe(self, fmt):
        return "torch._int_mm" if fmt.activation_dtype == "int8" else "dequantize, then matmul"

    def supports(self, fmt, p, in_features, out_features, device, dtype):
        if fmt.weight_only:
            return True
        # int8 x int8 -> int32 runs natively on CPU; CUDA's _int_mm has shape limits the
        # Triton backend handles instead.
        return fmt.activation_dtype == "int8" and device.type == "cpu"

    def linear(self, module, x):
        fmt, p = module.format, module.params
        if fmt.weight_only:
            w = fmt.dequantize(module.packed(), p, x.dtype)
            return F.linear(x, w, module.bias)
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        s_x = activation_scale(x2, INT8_MAX, getattr(module, "input_scale", None))
        acc = torch._int_mm(quantize_int8(x2, s_x), module.qweight.T)
        y = acc.to(torch.float32) * s_x * module.weight_scale.reshape(1, -1)
        if module.bias is not None:
            y = y + module.bias.to(torch.float32)
        return y.to(x.dtype).reshape(*shape[:-1], -1)
