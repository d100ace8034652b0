"""Backends in order of preference (explicit; a new backend is one line here)."""

from __future__ import annotations

import torch

from ...kernels import QuantParams, WeightFormat
from .base import Backend
from .cpu_int4pack import CpuInt4PackBackend
from .cpu_int8pack import CpuInt8PackBackend
from .emulated import EmulatedBackend
from .torch_backend import TorchBackend
from .triton_backend import TritonBackend

# Production kernels first (Triton on CUDA, torch's packed CPU kernels), then plain torch
# (dequantize + matmul, or _int_mm for W8A8 on the CPU), then emulation, which takes anything.
BACKENDS: list[Backend] = [TritonBackend(), CpuInt4PackBackend(), CpuInt8PackBackend(), TorchBackend(),
                           EmulatedBackend()]


def select_backend(fmt: WeightFormat, p: QuantParams, in_features: int, out_features: int,
                   device: torch.device | str, dtype: torch.dtype = torch.float32, experts: bool = False) -> Backend:
    """The first backend that runs this layer on `device` with `dtype` activations (with
    `experts`: that runs it one expert at a time, for a QuantExperts module)."""
    device = torch.device(device)
    for backend in BACKENDS:
        if experts and not backend.runs_experts:
            continue
        if backend.supports(fmt, p, in_features, out_features, device, dtype):
            return backend
    raise RuntimeError(f"no backend supports {fmt.name} on {device}")  # unreachable: emulation supports all
