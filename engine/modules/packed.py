"""What QuantLinear and PackedExperts share: a format's packed buffers (with a leading experts
dimension for expert tensors), the scheme's parameters, and the backend chosen for the device
and activation dtype the module is on.
"""

from __future__ import annotations

import torch
from torch import nn

from ...kernels import QuantParams
from ..backends import Backend, select_backend
from ..schemes import SCHEMES


class PackedWeights(nn.Module):
    experts: int | None = None  # None: one linear; else the leading dimension of every buffer

    def __init__(self, in_features: int, out_features: int, *, scheme: str, params: QuantParams,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                 experts: int | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.scheme = scheme
        self.params = params
        self.experts = experts
        self.format = SCHEMES[scheme].weight_format
        self._buffer_names = tuple(self.format.buffer_specs(out_features, in_features, params))
        lead = () if experts is None else (experts,)
        for name, (shape, dt) in self.format.buffer_specs(out_features, in_features, params).items():
            self.register_buffer(name, torch.empty(lead + tuple(shape), dtype=dt, device=device or "cpu"))
        self.compute_dtype = dtype  # the activation dtype the backend is chosen for
        self.backend: Backend | None = None

    def packed(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self._buffer_names}

    def _select_backend(self) -> Backend:
        device = next(iter(self.packed().values())).device
        return select_backend(self.format, self.params, self.in_features, self.out_features, device,
                              self.compute_dtype, experts=self.experts is not None)

    def _apply(self, fn, recurse=True):
        # Moving or casting the buffers (model.to("cuda")) invalidates the backend chosen for
        # the old device: forget it, so the next forward (or prepare) chooses again.
        self.backend = None
        # A cast (.half(), .to(torch.bfloat16)) changes the activation dtype the backend is
        # chosen for; a move keeps it.
        self.compute_dtype = fn(torch.empty(0, dtype=self.compute_dtype)).dtype
        return super()._apply(fn, recurse)

    def weight_nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.packed().values())

    def extra_repr(self) -> str:
        p = self.params
        group = "channel" if p.group_size is None else p.group_size
        backend = self.backend.name if self.backend else "unprepared"
        experts = "" if self.experts is None else f"experts={self.experts}, "
        return (f"{experts}in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme}, "
                f"group_size={group}, symmetric={p.symmetric}, activation={p.activation}, backend={backend}")
