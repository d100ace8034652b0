"""W8A16 packing: one signed byte per weight.

qweight: int8 [N, K] holding q - 128 (so symmetric weights are plain signed int8 with an
implicit zero of 0, the layout torch's `_weight_int8pack_mm` takes). scales: fp16
[N, groups]; zeros (asymmetric only): int8 [N, groups] holding z - 128.
"""

from __future__ import annotations

import torch

from ..weight_only import IntWeightOnlyFormat


class W8A16Format(IntWeightOnlyFormat):
    name = "w8a16"
    weight_bits = 8
    code_dtype = torch.int8
    zero_dtype = torch.int8

    def _codes_shape(self, out_features, in_features):
        return (out_features, in_features)

    def _pack_codes(self, q):
        return (q.to(torch.int16) - 128).to(torch.int8).contiguous()

    def _unpack_codes(self, packed):
        return (packed.to(torch.int16) + 128).to(torch.uint8)

    def _store_zero(self, z):
        return (z.to(torch.int16) - 128).to(torch.int8)

    def _load_zero(self, z):
        return z.to(torch.int32) + 128


FORMAT = W8A16Format()
