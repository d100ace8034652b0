"""W4A16 on the CPU through torch's int4 kernel, `aten._weight_int4pack_mm_for_cpu`.

Its weights are in a tiled layout of its own, made by `_convert_weight_to_int4pack_for_cpu`
(which has no inverse in torch), and it takes per-group (scale, zero) pairs with
value = (q - 8) * scale + zero, so our (q - z) * s becomes zero = (8 - z) * s. prepare() adds
both as non-persistent buffers beside the checkpoint buffers: state_dict() stays the checkpoint
layout, at the price of a second copy of the int4 codes (0.5 byte per weight) on the CPU.

torch's constraints (2.13): out_features a multiple of 16, groups of 32/64/128/256 columns;
per-channel layers qualify when in_features itself is such a size.

Used for bfloat16/float16 activations; float32 activations are dequantized and multiplied as in
the torch backend (see linear()).
"""

from __future__ import annotations

import torch

from ...kernels.w4a16.pack import W4A16Format
from .base import Backend
from .torch_backend import TorchBackend

_DEQUANTIZE = TorchBackend()  # for fp32 activations (see linear())

GROUP_SIZES = (32, 64, 128, 256)
_TORCH_ZERO = 8


class CpuInt4PackBackend(Backend):
    name = "cpu-int4pack"
    runs_experts = False  # prepare() re-lays out the weights into the module's own buffers

    def supports(self, fmt, p, in_features, out_features, device, dtype):
        # fp32 activations: torch's packed kernels were 10-50x slower than dequantize + matmul
        # (bench/RESULTS.md), so the plain torch backend takes those layers.
        return (device.type == "cpu" and dtype in (torch.bfloat16, torch.float16) and isinstance(fmt, W4A16Format)
                and out_features % 16 == 0
                and p.group_len(in_features) in GROUP_SIZES
                and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"))

    def prepare(self, module):
        w = module.format.unpack(module.packed(), module.params)
        scale = w.scale.to(torch.float32)
        zero = w.zero.to(torch.float32) if w.zero is not None else torch.full_like(scale, _TORCH_ZERO)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(w.q.to(torch.int32).contiguous(), 1)
        scales_zeros = torch.stack([scale.T, ((_TORCH_ZERO - zero) * scale).T], dim=-1).contiguous()  # [G, N, 2]
        module.set_runtime_buffer("int4pack_weight", packed)
        module.set_runtime_buffer("int4pack_scales_zeros", scales_zeros)

    def linear(self, module, x):
        if x.dtype == torch.float32:
            # torch's packed kernel is fast for 16-bit activations only; for fp32 it was 10-50x
            # slower than dequantize + matmul (bench/RESULTS.md), so fp32 takes that path
            return _DEQUANTIZE.linear(module, x)
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, module.int4pack_weight,
                                                       module.params.group_len(module.in_features),
                                                       module.int4pack_scales_zeros.to(x.dtype))
        if module.bias is not None:
            y = y + module.bias.to(y.dtype)
        return y.reshape(*shape[:-1], -1)
