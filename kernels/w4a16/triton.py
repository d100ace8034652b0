"""W4A16 on Triton: the shared weight-only kernel (kernels/weight_only_triton.py) unpacking two
int4 codes per byte of the checkpoint layout."""

from __future__ import annotations

import torch

from ..weight_only_triton import weight_only_linear


def linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
           bias: torch.Tensor | None, group_size: int | None) -> torch.Tensor:
    return weight_only_linear(x, qweight, scales, zeros, bias, group_size, bits=4)
