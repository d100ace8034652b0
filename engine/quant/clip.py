"""Clipping search: how much of each group's weight range to keep.

Rounding to a coarser grid that spans the whole range of a group costs every weight of the
group some precision to represent its extremes; shrinking the range clips the extremes but
rounds the rest finer. Per group and output row, the ratio kept is the one (of a few
candidates) with the smallest output error on the calibration inputs, tr(dW_g H_gg dW_g^T)
with H_gg the group's diagonal block of the inputs' second moment, as in the AWQ reference.
AWQ searches it on the whole (scaled) weight; GPTQ when it fixes a group's scale.
"""

from __future__ import annotations

import torch

from .grid import WeightGrid


def clip_ratios(steps: int, max_shrink: float) -> list[float]:
    """1, 1 - 1/steps, ... down to 1 - max_shrink."""
    return [1 - i / steps for i in range(int(max_shrink * steps) + 1)]


def diagonal_blocks(h: torch.Tensor, group_len: int) -> torch.Tensor:
    """[G, group_len, group_len]: the diagonal blocks of h [K, K], one per group of columns."""
    g = h.shape[0] // group_len
    return torch.stack([h[i * group_len:(i + 1) * group_len, i * group_len:(i + 1) * group_len] for i in range(g)])


def search_clip(w: torch.Tensor, h_blocks: torch.Tensor, grid: WeightGrid, ratios: list[float]) -> torch.Tensor:
    """Per-group fraction [N, G] of the weight range of w [N, K] to keep; h_blocks [G, gl, gl]."""
    n, k = w.shape
    gl = grid.group_len(k)
    g = k // gl
    if grid.is_fp8:
        errors = [_error(w - grid.fake(w, *grid.qparams(w, clip=r)), h_blocks, n, g, gl) for r in ratios]
        return torch.tensor(ratios, device=w.device)[torch.stack(errors).argmin(0)]
    wg = w.to(torch.float32).reshape(n, g, gl)
    lo, hi = wg.amin(-1).clamp(max=0), wg.amax(-1).clamp(min=0)
    # all candidates at once, in chunks of at most ~16M values
    chunk = max(1, (1 << 24) // w.numel())
    errors = []
    for start in range(0, len(ratios), chunk):
        r = torch.tensor(ratios[start:start + chunk], device=w.device).view(-1, 1, 1)
        scale, zero = grid.range_qparams(lo * r, hi * r)  # [R, N, G]
        s, z = scale.unsqueeze(-1), zero.unsqueeze(-1).to(torch.float32)
        d = grid.round_trip(wg, s, z).sub_(wg)  # [R, N, G, gl]
        errors.append(torch.einsum("rngi,gij,rngj->rng", d, h_blocks, d))
    best = torch.cat(errors).argmin(0)  # the first (widest) of equal errors
    return torch.tensor(ratios, device=w.device)[best]


def _error(d: torch.Tensor, h_blocks: torch.Tensor, n: int, g: int, gl: int) -> torch.Tensor:
    d = d.reshape(n, g, gl)
    return torch.einsum("ngi,gij,ngj->ng", d, h_blocks, d)
