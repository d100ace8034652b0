"""Shared math of the integer weight formats: group-wise affine dequantization."""

from __future__ import annotations

import torch


def expand_groups(t: torch.Tensor, group_len: int) -> torch.Tensor:
    """[N, G] -> [N, G * group_len], each group value repeated over its columns."""
    return t.repeat_interleave(group_len, dim=1)


def dequantize_codes(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | int, group_len: int,
                     dtype: torch.dtype) -> torch.Tensor:
    """value = (q - zero) * scale, with scale/zero given per group of `group_len` columns."""
    qf = q.to(torch.float32)
    z = zero if isinstance(zero, int) else expand_groups(zero.to(torch.float32), group_len)
    s = expand_groups(scale.to(torch.float32), group_len)
    return ((qf - z) * s).to(dtype)
