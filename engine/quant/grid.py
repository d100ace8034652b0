"""The weight grid of a layer's scheme, as the calibrating algorithms need it.

RTN quantizes a whole weight at once; AWQ and GPTQ need finer verbs on the same grid:
scales from a (possibly clipped) weight or range, a fake-quantized round trip to measure
error, and column-by-column rounding with scales fixed in advance. `WeightGrid` offers them for
every format, with exactly RTN's numerics (fp16-rounded scales for weight-only formats, fp32 for
W8A8, per-channel E4M3 for FP8), so what an algorithm measures is what the format stores.

Integer codes follow kernels/format.py: value = (q - z) * scale with unsigned q. Symmetric grids
fix z = 2**(bits-1), so their values are the whole signed range [-2**(bits-1), 2**(bits-1) - 1]
times the scale ([-8, 7] for 4 bits, as compressed-tensors and the field store them), and the
scale is the smallest that holds the group unclipped (symmetric_scale). Asymmetric grids map
[min(w, 0), max(w, 0)] onto [0, 2**bits - 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...kernels import QuantizedWeight, QuantParams
from ..schemes import Scheme

FP8_MAX = float(torch.finfo(torch.float8_e4m3fn).max)


def grouped(w: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """w [N, K] viewed as [N, groups, group length]."""
    n, k = w.shape
    g = k if group_size is None else group_size
    return w.reshape(n, k // g, g)


def round_scale(scale: torch.Tensor, scale_dtype: torch.dtype) -> torch.Tensor:
    """Scales rounded to their storage dtype (before codes are computed, so the stored model is
    exactly the model whose error is measured), as float32. The smallest normal of the storage
    dtype keeps an all-zero group finite (any scale reproduces zeros) and never underflows."""
    tiny = torch.finfo(scale_dtype).tiny if scale_dtype.is_floating_point else 1e-12
    return scale.clamp_min(tiny).to(scale_dtype).to(torch.float32)


def symmetric_scale(lo: torch.Tensor, hi: torch.Tensor, bits: int) -> torch.Tensor:
    """The smallest scale whose signed grid [-2**(bits-1), 2**(bits-1) - 1] holds [lo, hi]
    (lo <= 0 <= hi): max(hi / 7, -lo / 8) for 4 bits, so a group led by a negative weight uses
    code -8 and one led by a positive weight +7."""
    half = 2 ** (bits - 1)
    return torch.maximum(hi / (half - 1), -lo / half)


@dataclass(frozen=True)
class WeightGrid:
    bits: int
    group_size: int | None  # None: per-channel
    symmetric: bool
    scale_dtype: torch.dtype
    is_fp8: bool  # codes are E4M3 values, not integers on a grid
    keeps_zero: bool  # the format stores integer zero points for this layer

    @classmethod
    def of(cls, scheme: Scheme, p: QuantParams) -> "WeightGrid":
        """The grid of the scheme's format with the layer's parameters (traits read off the format)."""
        fmt = scheme.weight_format
        return cls(bits=fmt.weight_bits, group_size=p.group_size if fmt.group_sizes else None,
                   symmetric=p.symmetric or not fmt.asymmetric_ok, scale_dtype=fmt.scale_dtype,
                   is_fp8=fmt.float_codes, keeps_zero=fmt.stores_zero(p))

    def group_len(self, in_features: int) -> int:
        return in_features if self.group_size is None else self.group_size

    def qparams(self, w: torch.Tensor, clip: torch.Tensor | float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero [N, G] of weight w [N, K]; `clip` [N, G] (or a float) shrinks each
        group's range to that fraction of its extent (AWQ's clipping search)."""
        wg = grouped(w.to(torch.float32), self.group_size)
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
        """Scale and zero of an integer grid for group ranges lo <= 0 <= hi (any shape)."""
        if self.symmetric:
            scale = round_scale(symmetric_scale(lo, hi, self.bits), self.scale_dtype)
            return scale, torch.full_like(scale, 2 ** (self.bits - 1), dtype=torch.int32)
        scale = round_scale((hi - lo) / (2**self.bits - 1), self.scale_dtype)
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
        wg = grouped(w.to(torch.float32), self.group_size)
        s, z = scale.unsqueeze(-1), zero.unsqueeze(-1).to(torch.float32)
        return self._value(self._round(wg, s, z), s, z).reshape(w.shape)

    def round_trip(self, x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        """Round trip of x through the grid with scales/zeros that broadcast against it: one
        column [N] with its group's [N] (GPTQ), or candidate grids at once (clip.py)."""
        return self._value(self._round(x, scale, zero), scale, zero)

    def values(self, qw: QuantizedWeight) -> torch.Tensor:
        """The values [N, K] (float32) of a QuantizedWeight on this grid (`quantized` inverted)."""
        q = grouped(qw.q.to(torch.float32), self.group_size)
        zero = qw.zero if qw.zero is not None else torch.full_like(qw.scale, 0 if self.is_fp8 else 2 ** (self.bits - 1))
        return self._value(q, qw.scale.to(torch.float32).unsqueeze(-1),
                           zero.unsqueeze(-1).to(torch.float32)).reshape(qw.q.shape)

    def quantized(self, w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                  input_scale: torch.Tensor | None = None) -> QuantizedWeight:
        """The QuantizedWeight the format packs, for w rounded with these scales/zeros."""
        wg = grouped(w.to(torch.float32), self.group_size)
        q = self._round(wg, scale.unsqueeze(-1), zero.unsqueeze(-1).to(torch.float32)).reshape(w.shape)
        if self.is_fp8:
            return QuantizedWeight(q=q.to(torch.float8_e4m3fn), scale=scale, input_scale=input_scale)
        return QuantizedWeight(q=q.to(torch.uint8), scale=scale, zero=zero if self.keeps_zero else None,
                               input_scale=input_scale)
