"""The backend contract."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from ...kernels import QuantParams, WeightFormat


KERNEL, FALLBACK, EMULATED = "kernel", "fallback", "emulated"


class Backend(ABC):
    name: str
    emulated: bool = False  # numerics are right, but this is not the kernel production would run
    # It also runs one expert of a QuantExperts module at a time, through a per-expert view of
    # the stacked buffers (engine/modules/quant_experts.py): true unless prepare() re-lays out
    # a module's weights into buffers of its own.
    runs_experts: bool = True

    def kind(self, fmt: WeightFormat) -> str:
        """What running `fmt` here is: a kernel made for the format (KERNEL), a generic path
        such as dequantize-then-matmul (FALLBACK), or the reference numerics (EMULATED)."""
        return EMULATED if self.emulated else KERNEL

    def describe(self, fmt: WeightFormat) -> str:
        """How this backend computes `fmt`, in a few words (run summaries)."""
        return "the format's reference numerics" if self.emulated else f"{self.name} kernel"

    @abstractmethod
    def supports(self, fmt: WeightFormat, p: QuantParams, in_features: int, out_features: int,
                 device: torch.device, dtype: torch.dtype) -> bool:
        """Whether this backend runs the layer well on `device` with `dtype` activations."""

    def prepare(self, module) -> None:
        """Called once the module's packed buffers hold real weights on their device."""

    @abstractmethod
    def linear(self, module, x: torch.Tensor) -> torch.Tensor: ...
