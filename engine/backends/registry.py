"""Backends in order of preference (explicit; a new backend is one line here)."""

from __future__ import annotations

import torch

from ...kernels import QuantParams, WeightFormat
from .base import Backend
from .emulated import EmulatedBackend
from .torch_backend import TorchBackend

BACKENDS: list[Backend] = [TorchBackend(), EmulatedBackend()]


def select_backend(fmt: WeightFormat, p: QuantParams, in_features: int, out_features: int,
                   device: torch.device | str) -> Backend:
    device = torch.device(device)
    for backend in BACKENDS:
        if backend.supports(fmt, p, in_features, out_features, device):
            return backend
    raise RuntimeError(f"no backend supports {fmt.name} on {device}")  # unreachable: emulation supports all
