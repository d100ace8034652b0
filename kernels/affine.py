"""Shared math of the integer weight formats: group-wise affine dequantization."""

from __future__ import annotations

import torch


def dequantize_codes(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | int, group_len: int,
                     dtype: torch.dtype) -> torch.Tensor:
    """value = (q - zero) * scale, with scale/zero given per group of `group_len` columns.

    Broadcast over a [N, groups, group_len] view rather than expanding scales to [N, K]:
    the torch backend runs this on every forward, so it must not allocate more than it needs.
    """
    n, k = q.shape
    qf = q.view(n, k // group_len, group_len).to(torch.float32)
    if not isinstance(zero, int):
        qf = qf - zero.to(torch.float32).unsqueeze(-1)
    elif zero:
        qf = qf - zero
    return (qf * scale.to(torch.float32).unsqueeze(-1)).view(n, k).to(dtype)
