"""QuantLinear: a drop-in for nn.Linear holding packed weights and scales.

Its state_dict is the checkpoint layout of its format (kernels/<format>/pack.py). Its
forward is one call into the backend chosen for its format, shape and device.
"""

from __future__ import annotations

import torch
from torch import nn

from ...kernels import QuantizedWeight, QuantParams
from ..backends import Backend
from .packed import PackedWeights


class QuantLinear(PackedWeights):
    def __init__(self, in_features: int, out_features: int, *, bias: bool, scheme: str, params: QuantParams,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        super().__init__(in_features, out_features, scheme=scheme, params=params, dtype=dtype, device=device)
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), requires_grad=False) \
            if bias else None
        self._runtime_buffers: list[str] = []

    @classmethod
    def from_quantized(cls, linear: nn.Linear, scheme: str, params: QuantParams, qw: QuantizedWeight) -> "QuantLinear":
        device = linear.weight.device
        m = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, scheme=scheme, params=params,
                dtype=linear.weight.dtype, device=device)
        for name, t in m.format.pack(qw, params).items():
            setattr(m, name, t.to(device))
        if linear.bias is not None:
            m.bias.data.copy_(linear.bias.data)
        return m

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.format.dequantize(self.packed(), self.params, dtype)

    def set_runtime_buffer(self, name: str, t: torch.Tensor) -> None:
        """A backend's own layout of the weights: moves with the module, stays out of state_dict
        (which keeps the checkpoint layout), and is dropped when another backend is chosen."""
        self.register_buffer(name, t, persistent=False)
        if name not in self._runtime_buffers:
            self._runtime_buffers.append(name)

    def prepare(self) -> Backend:
        """Pick the backend for this module's device and let it re-lay out weights if it wants."""
        for name in self._runtime_buffers:
            delattr(self, name)
        self._runtime_buffers = []
        self.backend = self._select_backend()
        self.backend.prepare(self)
        return self.backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend is None:
            self.prepare()
        return self.backend.linear(self, x)
