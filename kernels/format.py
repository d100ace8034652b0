"""The contract every format folder fulfils.

A format turns a `QuantizedWeight` (integer or fp8 codes plus scales, as the quantization
algorithms produce them) into the packed buffers a `QuantLinear` stores and a checkpoint
holds, back again exactly, and defines the reference numerics of a linear layer in that
format. Kernels (Triton, or a torch CPU op) must match `reference_linear`.

Integer codes use one convention everywhere: unsigned codes `q` in [0, 2**bits - 1] with an
integer zero point `z` in the same range, value = (q - z) * scale. Symmetric quantization
fixes z = 2**(bits-1) and stores no zero points.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class QuantParams:
    """The per-layer parameters a format needs (resolved by the plan)."""

    group_size: int | None = None  # None: one group per output channel (per-channel)
    symmetric: bool = True
    activation: str = "none"  # "none" (weight-only), "dynamic" per-token, "static" per-tensor

    def groups(self, in_features: int) -> int:
        return 1 if self.group_size is None else in_features // self.group_size

    def group_len(self, in_features: int) -> int:
        return in_features if self.group_size is None else self.group_size


@dataclass
class QuantizedWeight:
    """Codes and scales before packing. Shapes: q [N, K]; scale and zero [N, groups]."""

    q: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None = None
    input_scale: torch.Tensor | None = None  # static activation scale (scalar), if any


class WeightFormat(ABC):
    """A format's traits are class attributes here, so nothing else in qrecipe tests a format's
    name: adding a format is its folder, one line in kernels/__init__.py and its export mapping."""

    name: str
    weight_bits: int
    activation_dtype: str  # "float" (weight-only), "int8" or "fp8"
    scale_dtype: torch.dtype  # how weight scales are stored (codes are computed with the rounded scale)
    float_codes: bool = False  # codes are floating-point values (FP8 E4M3), not integers on a grid
    group_sizes: tuple[int, ...] = ()  # group sizes allowed besides per-channel; () per-channel only
    default_group_size: int | None = None  # None: per-channel
    asymmetric_ok: bool = False  # weights may carry zero points
    activation_modes: tuple[str, ...] = ()  # how activations are quantized (first is the default); ()
    # for weight-only formats

    @property
    def weight_only(self) -> bool:
        return self.activation_dtype == "float"

    def stores_zero(self, p: QuantParams) -> bool:
        """Whether a layer with these parameters keeps integer zero points."""
        return self.asymmetric_ok and not p.symmetric

    @abstractmethod
    def buffer_specs(self, out_features: int, in_features: int, p: QuantParams) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Names, shapes and dtypes of the packed buffers (what a checkpoint stores)."""

    @abstractmethod
    def pack(self, w: QuantizedWeight, p: QuantParams) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def unpack(self, buffers: dict[str, torch.Tensor], p: QuantParams) -> QuantizedWeight: ...

    @abstractmethod
    def dequantize(self, buffers: dict[str, torch.Tensor], p: QuantParams, dtype: torch.dtype) -> torch.Tensor:
        """The weight [N, K] the packed buffers stand for."""

    @abstractmethod
    def reference_linear(self, x: torch.Tensor, buffers: dict[str, torch.Tensor], p: QuantParams,
                         bias: torch.Tensor | None) -> torch.Tensor:
        """Reference numerics of y = x W^T + b in this format (kernels are tested against it)."""

    def check(self, out_features: int, in_features: int, p: QuantParams) -> str | None:
        """Why this format cannot hold a layer of this shape with these parameters, or None."""
        if p.group_size is not None and in_features % p.group_size:
            return f"group size {p.group_size} does not divide in_features {in_features}"
        return None

    def nbytes(self, out_features: int, in_features: int, p: QuantParams) -> int:
        total = 0
        for shape, dtype in self.buffer_specs(out_features, in_features, p).values():
            n = 1
            for s in shape:
                n *= s
            total += n * torch.empty((), dtype=dtype).element_size()
        return total

    def empty_buffers(self, out_features: int, in_features: int, p: QuantParams, device="cpu") -> dict[str, torch.Tensor]:
        return {k: torch.empty(s, dtype=d, device=device) for k, (s, d) in self.buffer_specs(out_features, in_features, p).items()}
