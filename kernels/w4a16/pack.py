"""W4A16 packing: two 4-bit codes per byte along K.

qweight: uint8 [N, K/2]; byte j of row n holds column 2j in its low nibble and column 2j+1
in its high nibble. scales: fp16 [N, groups]; zeros (asymmetric only): uint8 [N, groups]
holding the integer zero point in [0, 15]. This is the checkpoint layout; a backend may
re-lay it out for its kernel when the module is prepared for inference.
"""

from __future__ import annotations

import torch

from ..weight_only import IntWeightOnlyFormat


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """uint8 codes [N, K] in [0, 15] (K even) -> uint8 [N, K/2]."""
    if q.shape[-1] % 2:
        raise ValueError("int4 packing needs an even number of columns")
    q = q.to(torch.uint8)
    return (q[..., 0::2] | (q[..., 1::2] << 4)).contiguous()


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K/2] -> uint8 codes [N, K]."""
    lo = packed & 0x0F
    hi = packed >> 4
    return torch.stack((lo, hi), dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


class W4A16Format(IntWeightOnlyFormat):
    name = "w4a16"
    weight_bits = 4
    default_group_size = 128
    code_dtype = torch.uint8

    def _codes_shape(self, out_features, in_features):
        return (out_features, in_features // 2)

    def _pack_codes(self, q):
        return pack_int4(q)

    def _unpack_codes(self, packed):
        return unpack_int4(packed)

    def check(self, out_features, in_features, p):
        if in_features % 2:
            return f"in_features {in_features} is odd; int4 packing needs an even number of columns"
        return super().check(out_features, in_features, p)


FORMAT = W4A16Format()
