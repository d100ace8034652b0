"""Integer weight-only formats (W4A16, W8A16): codes, fp16 group scales, optional zero points.

Activations stay in floating point; a kernel dequantizes weights in registers. The two
formats differ only in how codes are laid out in bytes (`_pack_codes` / `_unpack_codes`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .affine import dequantize_codes
from .format import QuantizedWeight, QuantParams, WeightFormat

SCALE_DTYPE = torch.float16
GROUP_SIZES = (32, 64, 128)


class IntWeightOnlyFormat(WeightFormat):
    activation_dtype = "float"
    scale_dtype = SCALE_DTYPE
    group_sizes = GROUP_SIZES
    asymmetric_ok = True
    code_dtype: torch.dtype  # storage dtype of packed codes and zero points

    def _codes_shape(self, out_features: int, in_features: int) -> tuple[int, int]:
        raise NotImplementedError

    def _pack_codes(self, q: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _unpack_codes(self, packed: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _store_zero(self, z: torch.Tensor) -> torch.Tensor:
        return z.to(torch.uint8)

    def _load_zero(self, z: torch.Tensor) -> torch.Tensor:
        return z.to(torch.int32)

    @property
    def symmetric_zero(self) -> int:
        return 2 ** (self.weight_bits - 1)

    def buffer_specs(self, out_features, in_features, p):
        g = p.groups(in_features)
        specs = {
            "qweight": (self._codes_shape(out_features, in_features), self.code_dtype),
            "scales": ((out_features, g), SCALE_DTYPE),
        }
        if not p.symmetric:
            specs["zeros"] = ((out_features, g), self.zero_dtype)
        return specs

    zero_dtype = torch.uint8

    def pack(self, w: QuantizedWeight, p: QuantParams) -> dict[str, torch.Tensor]:
        qmax = 2**self.weight_bits - 1
        if w.q.min() < 0 or w.q.max() > qmax:
            raise ValueError(f"{self.name}: codes must lie in [0, {qmax}]")
        out = {"qweight": self._pack_codes(w.q.to(torch.uint8)), "scales": w.scale.to(SCALE_DTYPE).contiguous()}
        if not p.symmetric:
            if w.zero is None:
                raise ValueError(f"{self.name}: asymmetric quantization needs zero points")
            out["zeros"] = self._store_zero(w.zero).contiguous()
        return out

    def unpack(self, buffers, p) -> QuantizedWeight:
        q = self._unpack_codes(buffers["qweight"])
        zero = self._load_zero(buffers["zeros"]) if not p.symmetric else None
        return QuantizedWeight(q=q, scale=buffers["scales"], zero=zero)

    def dequantize(self, buffers, p, dtype):
        w = self.unpack(buffers, p)
        k = w.q.shape[1]
        zero = w.zero if w.zero is not None else self.symmetric_zero
        return dequantize_codes(w.q, w.scale, zero, p.group_len(k), dtype)

    def reference_linear(self, x, buffers, p, bias):
        # fp32 accumulation over the exact dequantized weight: the numerics kernels must match.
        w = self.dequantize(buffers, p, torch.float32)
        y = F.linear(x.to(torch.float32), w, None if bias is None else bias.to(torch.float32))
        return y.to(x.dtype)
