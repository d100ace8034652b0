"""W8A16 on the CPU through torch's weight-only int8 kernel, `torch._weight_int8pack_mm`.

It takes symmetric per-channel weights as signed int8 [N, K], exactly the checkpoint layout
(kernels/w8a16/pack.py stores q - 128), and one scale per channel in the activation dtype, so
nothing is re-laid out and the module keeps one copy of its weights.

Used for bfloat16/float16 activations; float32 activations are dequantized and multiplied as in
the torch backend (see linear()).
"""

from __future__ import annotations

import torch

from ...kernels.w8a16.pack import W8A16Format
from .base import Backend
from .torch_backend import TorchBackend

_DEQUANTIZE = TorchBackend()  # for fp32 activations (see linear())


class CpuInt8PackBackend(Backend):
    name = "cpu-int8pack"

    def supports(self, fmt, p, in_features, out_features, device, dtype):
        # fp32 activations: torch's packed kernels were 10-50x slower than dequantize + matmul
        # (bench/RESULTS.md), so the plain torch backend takes those layers.
        return (device.type == "cpu" and dtype in (torch.bfloat16, torch.float16) and isinstance(fmt, W8A16Format)
                and p.symmetric and p.group_size is None
                and hasattr(torch, "_weight_int8pack_mm"))

    def linear(self, module, x):
        if x.dtype == torch.float32:
            # torch's packed kernel is fast for 16-bit activations only; for fp32 it was 10-50x
            # slower than dequantize + matmul (bench/RESULTS.md), so fp32 takes that path
            return _DEQUANTIZE.linear(module, x)
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        y = torch._weight_int8pack_mm(x2, module.qweight, module.scales.reshape(-1).to(x.dtype))
        if module.bias is not None:
            y = y + module.bias.to(y.dtype)
        return y.reshape(*shape[:-1], -1)
