"""The weight grid of a layer's scheme, as the calibrating algorithms need it.

RTN quantizes a whole weight at once; AWQ and GPTQ need finer verbs on the same grid:
scales from a (possibly clipped) weight or range, a fake-quantized round trip to measure error,
and column-by-column rounding with scales fixed in advance. `WeightGrid` offers them for every
format, with exactly RTN's numerics (fp16-rounded scales for weight-only formats, fp32 for
W8A8, per-channel E4M3 for FP8), so what an algorithm measures is what the format stores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...kernels import QuantizedWeight, QuantParams
from ..schemes import Scheme
from .primitives import FP8_MAX, _grouped, _round_scale, symmetric_scale


@dataclass(frozen=True)
class WeightGrid:
    format: str  # kernels/<format>
    bits: int
    group_size: int | None  # None: per-channel
    symmetric: bool
    scale_dtype: torch.dtype

    @classmethod
    def of(cls, scheme: Scheme, p: QuantParams) -> "WeightGrid":
        if scheme.format in ("w4a16", "w8a16"):
            return cls(scheme.format, scheme.weight_bits, p.group_size, p.symmetric, torch.float16)
        if scheme.format == "w8a8":
            return cls("w8a8", 8, None, True, torch.float32)
        if scheme.format == "fp8":
            return cls("fp8", 8, None, True, torch.float32)
        raise ValueError(f"scheme {scheme.name} has no weight format to quantize into")

    @property
    def is_fp8(self) -> bool:
        return self.format == "fp8"

    def group_len(self, in_features: int) -> int:
        return in_features if self.group_size is None else self.group_size

    def qparams(self, w: torch.Tensor, clip: torch.Tensor | float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero [N, G] of weight w [N, K]; `clip` [N, G] (or a float) shrinks each
        group's range to that fraction of its extent (AWQ's clipping search)."""
        wg = _grouped(w.to(torch.float32), self.group_size)
        hi, lo = wg.amax(dim=-1), wg.amin(dim=-1)  # two reductions, no |w| temporary
        if self.is_fp8:
            absmax = torch.maximum(hi, lo.neg_())
            if clip is not None:
                absmax = absmax * clip
            scale = (absmax / FP8_MAX).clamp_min(1e-12)
            return scale, torch.zeros_like(scale, dtype=torch.int32)
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
        if clip is not None:
            lo, hi = lo * clip, hi * clip
        return self.range_qparams(lo, hi)

    def range_qparams(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero of integer grids for group ranges lo <= 0 <= hi (any shape)."""
        if self.symmetric:
            scale = _round_scale(symmetric_scale(lo, hi, self.bits), self.scale_dtype)
            return scale, torch.full_like(scale, 2 ** (self.bits - 1), dtype=torch.int32)
        scale = _round_scale((hi - lo) / (2**self.bits - 1), self.scale_dtype)
        zero = torch.round(-lo / scale).clamp(0, 2**self.bits - 1).to(torch.int32)
        return scale, zero

    def _round(self, w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        """Codes of w for scales/zeros that broadcast against it (float32 codes; fp8 as
        values). One new tensor, rounded in place: these run inside search loops."""
        if self.is_fp8:
            return torch.div(w, scale).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).to(torch.float32)
        return torch.div(w, scale).round_().add_(zero).clamp_(0, 2**self.bits - 1)

    def _value(self, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        """Dequantized values of codes q, computed in q's storage."""
        return q.mul_(scale) if self.is_fp8 else q.sub_(zero).mul_(scale)

    def fake(self, w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        """Round trip of w [N, K] through the grid with per-group scale/zero [N, G] (float32)."""
        wg = _grouped(w.to(torch.float32), self.group_size)
        s, z = scale.unsqueeze(-1), zero.unsqueeze(-1).to(torch.float32)
        return self._value(self._round(wg, s, z), s, z).reshape(w.shape)

    def round_trip(self, x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        """Round trip of x through the grid with scales/zeros that broadcast against it: one
        column [N] with its group's [N] (GPTQ), or candidate grids at once (clip.py)."""
        return self._value(self._round(x, scale, zero), scale, zero)

    def quantized(self, w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                  input_scale: torch.Tensor | None = None) -> QuantizedWeight:
        """The QuantizedWeight the format packs, for w rounded with these scales/zeros."""
        wg = _grouped(w.to(torch.float32), self.group_size)
        q = self._round(wg, scale.unsqueeze(-1), zero.unsqueeze(-1).to(torch.float32)).reshape(w.shape)
        if self.is_fp8:
            return QuantizedWeight(q=q.to(torch.float8_e4m3fn), scale=scale, input_scale=input_scale)
        keep_zero = self.format in ("w4a16", "w8a16") and not self.symmetric
        return QuantizedWeight(q=q.to(torch.uint8), scale=scale, zero=zero if keep_zero else None,
                               input_scale=input_scale)
