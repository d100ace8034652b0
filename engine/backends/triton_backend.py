"""Triton kernels on CUDA (kernels/<format>/triton.py), called through the `qrecipe::*` custom
ops so torch.compile keeps a model of QuantLinear modules in one graph.

The kernels read the checkpoint layout as it is, so prepare() has nothing to re-lay out and a
module holds one copy of its packed weights.
"""

from __future__ import annotations

import torch

from ...kernels.ops import has_triton_kernel, triton_linear
from ...kernels.triton_support import triton_installed
from .base import Backend

# Lowest compute capability each kind of kernel compiles for: bf16 and int8 tensor-core MMAs
# from Ampere (8.0), fp8 from Ada (8.9).
MIN_CAPABILITY = {"float": (8, 0), "int8": (8, 0), "fp8": (8, 9)}


class TritonBackend(Backend):
    name = "triton"

    def supports(self, fmt, p, in_features, out_features, device, dtype):
        if device.type != "cuda" or not triton_installed() or not torch.cuda.is_available():
            return False
        needed = MIN_CAPABILITY.get(fmt.activation_dtype)
        return (has_triton_kernel(fmt.name) and needed is not None
                and torch.cuda.get_device_capability(device) >= needed)

    def linear(self, module, x):
        return triton_linear(module.format.name, x, module.packed(), module.params.group_size, module.bias)
