"""The backend contract."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from ...kernels import QuantParams, WeightFormat


class Backend(ABC):
    name: str
    emulated: bool = False  # numerics are right, but this is not the kernel production would run
    # It also runs one expert of a QuantExperts module at a time, through a per-expert view of
    # the stacked buffers (engine/modules/quant_experts.py): true unless prepare() re-lays out
    # a module's weights into buffers of its own.
    runs_experts: bool = True

    @abstractmethod
    def supports(self, fmt: WeightFormat, p: QuantParams, in_features: int, out_features: int,
                 device: torch.device, dtype: torch.dtype) -> bool:
        """Whether this backend runs the layer well on `device` with `dtype` activations."""

    def prepare(self, module) -> None:
        """Called once the module's packed buffers hold real weights on their device."""

    @abstractmethod
    def linear(self, module, x: torch.Tensor) -> torch.Tensor: ...
