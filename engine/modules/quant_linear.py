"""QuantLinear: a drop-in for nn.Linear holding packed weights and scales.

Its state_dict is the checkpoint layout of its format (kernels/<format>/pack.py). Its
forward is one call into the backend chosen for its format, shape and device.
"""

from __future__ import annotations

import torch
from torch import nn

from ...kernels import QuantizedWeight, QuantParams, get_format
from ..backends import Backend, select_backend
from ..schemes import SCHEMES


class QuantLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, *, bias: bool, scheme: str, params: QuantParams,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.scheme = scheme
        self.params = params
        self.format = get_format(SCHEMES[scheme].format)
        self._buffer_names = tuple(self.format.buffer_specs(out_features, in_features, params))
        for name, t in self.format.empty_buffers(out_features, in_features, params, device or "cpu").items():
            self.register_buffer(name, t)
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), requires_grad=False) \
            if bias else None
        self.compute_dtype = dtype  # the activation dtype the backend is chosen for
        self.backend: Backend | None = None
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

    def packed(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self._buffer_names}

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
        device = next(iter(self.packed().values())).device
        self.backend = select_backend(self.format, self.params, self.in_features, self.out_features, device,
                                      self.compute_dtype)
        self.backend.prepare(self)
        return self.backend

    def _apply(self, fn, recurse=True):
        # Moving or casting the buffers (model.to("cuda")) invalidates the backend chosen for
        # the old device: forget it, so the next forward (or prepare) chooses again.
        self.backend = None
        # A cast (.half(), .to(torch.bfloat16)) changes the activation dtype the backend is
        # chosen for; a move keeps it.
        self.compute_dtype = fn(torch.empty(0, dtype=self.compute_dtype)).dtype
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend is None:
            self.prepare()
        return self.backend.linear(self, x)

    def weight_nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.packed().values())

    def extra_repr(self) -> str:
        p = self.params
        group = "channel" if p.group_size is None else p.group_size
        backend = self.backend.name if self.backend else "unprepared"
        return (f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme}, "
                f"group_size={group}, symmetric={p.symmetric}, activation={p.activation}, backend={backend}")
