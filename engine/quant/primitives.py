"""Affine and FP8 quantization primitives.

Integer codes follow kernels/format.py: unsigned q in [0, 2**bits - 1], integer zero z,
value = (q - z) * scale. Symmetric: z = 2**(bits-1), so values are the whole signed range
[-2**(bits-1), 2**(bits-1) - 1] times the scale ([-8, 7] for 4 bits, as compressed-tensors and
the field store them), and the scale is the smallest that holds the group unclipped:
max(max(w) / (2**(bits-1) - 1), -min(w) / 2**(bits-1)) (symmetric_scale).
Asymmetric: the range [min(w, 0), max(w, 0)] maps onto [0, 2**bits - 1].
Scales are rounded to their storage dtype *before* codes are computed, so the stored
model is exactly the model whose error we measure.
"""

from __future__ import annotations

import torch

FP8_MAX = float(torch.finfo(torch.float8_e4m3fn).max)


def _grouped(w: torch.Tensor, group_size: int | None) -> torch.Tensor:
    n, k = w.shape
    g = k if group_size is None else group_size
    return w.reshape(n, k // g, g)


def _round_scale(scale: torch.Tensor, scale_dtype: torch.dtype) -> torch.Tensor:
    # The smallest normal of the storage dtype keeps an all-zero group finite (any scale
    # reproduces zeros) and never underflows to 0 on storage.
    tiny = torch.finfo(scale_dtype).tiny if scale_dtype.is_floating_point else 1e-12
    return scale.clamp_min(tiny).to(scale_dtype).to(torch.float32)


def symmetric_scale(lo: torch.Tensor, hi: torch.Tensor, bits: int) -> torch.Tensor:
    """The smallest scale whose signed grid [-2**(bits-1), 2**(bits-1) - 1] holds [lo, hi]
    (lo <= 0 <= hi): a group whose largest magnitude is negative uses code -2**(bits-1)."""
    half = 2 ** (bits - 1)
    return torch.maximum(hi / (half - 1), -lo / half)


def affine_qparams(w: torch.Tensor, bits: int, group_size: int | None, symmetric: bool,
                   scale_dtype: torch.dtype = torch.float16) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale [N, G] (float32, exactly representable in scale_dtype) and zero [N, G] (int32)."""
    wg = _grouped(w.to(torch.float32), group_size)
    if symmetric:
        scale = symmetric_scale(wg.amin(dim=-1).clamp(max=0), wg.amax(dim=-1).clamp(min=0), bits)
        scale = _round_scale(scale, scale_dtype)
        zero = torch.full_like(scale, 2 ** (bits - 1), dtype=torch.int32)
    else:
        lo = wg.amin(dim=-1).clamp(max=0)
        hi = wg.amax(dim=-1).clamp(min=0)
        scale = _round_scale((hi - lo) / (2**bits - 1), scale_dtype)
        zero = torch.round(-lo / scale).clamp(0, 2**bits - 1).to(torch.int32)
    return scale, zero


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
                   group_size: int | None) -> torch.Tensor:
    """Codes uint8 [N, K] for given group scales and zeros."""
    wg = _grouped(w.to(torch.float32), group_size)
    q = torch.round(wg / scale.unsqueeze(-1)) + zero.unsqueeze(-1)
    return q.clamp(0, 2**bits - 1).to(torch.uint8).reshape(w.shape)


def dequantize_codes(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int | None) -> torch.Tensor:
    qg = _grouped(q.to(torch.float32), group_size)
    return ((qg - zero.unsqueeze(-1).to(torch.float32)) * scale.unsqueeze(-1)).reshape(q.shape)


def fake_quantize(w: torch.Tensor, bits: int, group_size: int | None, symmetric: bool,
                  scale_dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """Round-trip w through the integer grid (what the quantized layer will compute with)."""
    scale, zero = affine_qparams(w, bits, group_size, symmetric, scale_dtype)
    return dequantize_codes(quantize_codes(w, scale, zero, bits, group_size), scale, zero, group_size).to(w.dtype)


def fp8_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel E4M3: codes float8_e4m3fn [N, K] and scale float32 [N, 1]."""
    scale = (w.to(torch.float32).abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp_min(1e-12)
    q = (w.to(torch.float32) / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale
