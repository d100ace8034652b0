"""The Triton kernels as torch.library custom ops (namespace `qrecipe`), each with a
shape-only fake, so torch.compile(fullgraph=True) traces a model of QuantLinear modules as
one graph: the compiler sees an opaque op with a known output shape, not Triton internals.

The kernel modules are imported inside the ops, at the first call: importing this module
imports no Triton (TRITON_INTERPRET must be set before Triton kernels are defined).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def _linear_fake(x: Tensor, qweight: Tensor) -> Tensor:
    return x.new_empty((*x.shape[:-1], qweight.shape[0]))


@torch.library.custom_op("qrecipe::w4a16_linear", mutates_args=())
def w4a16_linear(x: Tensor, qweight: Tensor, scales: Tensor, zeros: Optional[Tensor], bias: Optional[Tensor],
                 group_size: Optional[int]) -> Tensor:
    from .w4a16.triton import linear

    return linear(x, qweight, scales, zeros, bias, group_size)


@torch.library.custom_op("qrecipe::w8a16_linear", mutates_args=())
def w8a16_linear(x: Tensor, qweight: Tensor, scales: Tensor, zeros: Optional[Tensor], bias: Optional[Tensor],
                 group_size: Optional[int]) -> Tensor:
    from .w8a16.triton import linear

    return linear(x, qweight, scales, zeros, bias, group_size)


@torch.library.custom_op("qrecipe::w8a8_linear", mutates_args=())
def w8a8_linear(x: Tensor, qweight: Tensor, weight_scale: Tensor, input_scale: Optional[Tensor],
                bias: Optional[Tensor]) -> Tensor:
    from .w8a8.triton import linear

    return linear(x, qweight, weight_scale, input_scale, bias)


@torch.library.custom_op("qrecipe::fp8_linear", mutates_args=())
def fp8_linear(x: Tensor, qweight: Tensor, weight_scale: Tensor, input_scale: Optional[Tensor],
               bias: Optional[Tensor]) -> Tensor:
    from .fp8.triton import linear

    return linear(x, qweight, weight_scale, input_scale, bias)


@w4a16_linear.register_fake
@w8a16_linear.register_fake
def _weight_only_fake(x, qweight, scales, zeros, bias, group_size):
    return _linear_fake(x, qweight)


@w8a8_linear.register_fake
@fp8_linear.register_fake
def _quantized_activation_fake(x, qweight, weight_scale, input_scale, bias):
    return _linear_fake(x, qweight)


_WEIGHT_ONLY_OPS = {"w4a16": w4a16_linear, "w8a16": w8a16_linear}
_QUANTIZED_ACTIVATION_OPS = {"w8a8": w8a8_linear, "fp8": fp8_linear}


def has_triton_kernel(format_name: str) -> bool:
    return format_name in _WEIGHT_ONLY_OPS or format_name in _QUANTIZED_ACTIVATION_OPS


def triton_linear(format_name: str, x: Tensor, buffers: dict[str, Tensor], group_size: Optional[int],
                  bias: Optional[Tensor]) -> Tensor:
    """y = x W^T + b through the custom op of a format, from its packed buffers (a new format
    adds its op above and one entry to the tables here)."""
    if format_name in _WEIGHT_ONLY_OPS:
        return _WEIGHT_ONLY_OPS[format_name](x, buffers["qweight"], buffers["scales"], buffers.get("zeros"), bias,
                                             group_size)
    return _QUANTIZED_ACTIVATION_OPS[format_name](x, buffers["qweight"], buffers["weight_scale"],
                                                  buffers.get("input_scale"), bias)
