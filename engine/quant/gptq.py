"""The GPTQ solver (Frantar et al., 2022): quantize a weight column by column, spreading
each column's rounding error over the columns not yet quantized through the inverse
Hessian of the layer's inputs, so the layer's output error stays small.

Lazy block updates: the error of a block of columns updates the rest of the weight in one
matrix product. Activation order: columns are visited by decreasing Hessian diagonal (the
inputs with the most energy first). The packed formats store group scales in natural
column order and have no per-column group index, so with activation order each group's
scale and zero are fixed when the first of its columns is visited, from the group's
current (already error-updated) weights, and then used for all of its columns; codes are
put back in natural order at the end. Without activation order this is exactly the
reference algorithm.
"""

from __future__ import annotations

import torch

from .clip import diagonal_blocks, search_clip
from .grid import WeightGrid


# Columns per inner lazy update inside a block (see gptq_quantize's loop).
SUB_BLOCK = 16


class SingularHessian(ValueError):
    """The dampened Hessian is not positive definite (too few or degenerate inputs)."""


def inverse_hessian_factor(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor U of (H + damp * mean(diag H) I)^-1, i.e. U^T U = H^-1.

    With R the index reversal and R H R = L L^T, U = R L^-1 R: one Cholesky and one
    triangular inverse, instead of the reference's Cholesky, full inverse and second
    Cholesky (the same factor, about three times less work)."""
    return _factor([h.clone()], damp)


def _factor(box: list[torch.Tensor], damp: float) -> torch.Tensor:
    """inverse_hessian_factor of the matrix in `box`, which it takes out and overwrites: with
    the only reference handed over, at most three K x K matrices are alive at a time (a
    down_proj of Llama-3-8B: K = 14336, 822 MB each), not the six of keeping every step."""
    h = box.pop()
    k, dtype, device = h.shape[0], h.dtype, h.device
    h.diagonal().add_(damp * h.diagonal().mean())
    reversed_h = h.flip(0, 1)
    del h
    chol, info = torch.linalg.cholesky_ex(reversed_h)
    del reversed_h
    if info.item() != 0:
        raise SingularHessian(f"Cholesky failed at column {k - info.item()}")
    upper = torch.linalg.solve_triangular(chol, torch.eye(k, dtype=dtype, device=device), upper=False)
    del chol
    upper = upper.flip(0, 1)
    if not torch.isfinite(upper).all():
        raise SingularHessian("the inverse Hessian is not finite")
    return upper


@torch.no_grad()
def float_target(w: torch.Tensor, h: torch.Tensor, cross: torch.Tensor, damp: float) -> torch.Tensor:
    """The weight W' that GPTQ should reproduce on the quantized model's inputs x~ so that the
    layer's output matches the float model's, W x (asymmetric calibration, Li et al. 2025,
    GPTAQ): E||W x - Q x~||^2 = tr((Q - W') H~ (Q - W')^T) + const with W' = W C H~^-1,
    C = E[x x~^T], H~ = E[x~ x~^T] (dampened as GPTQ dampens it)."""
    h = h.to(torch.float64).clone()
    h.diagonal().add_(damp * h.diagonal().mean())
    # W' H~ = W C  <=>  H~ W'^T = C^T W^T (H~ symmetric)
    return torch.linalg.solve(h, (w.to(torch.float64) @ cross.to(torch.float64)).T).T.to(torch.float32)


@torch.no_grad()
def gptq_quantize(w: torch.Tensor, h: torch.Tensor, grid: WeightGrid, damp: float = 0.01, block_size: int = 128,
                  act_order: bool = False, clip: list[float] | None = None, unrounded: torch.Tensor | None = None,
                  static_groups: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(w_q on the grid [N, K], scale [N, G], zero [N, G]) for weight w and input Hessian h.

    clip: candidate fractions of each group's range; when given, a group's scale keeps the one
    with the least output error of its (already error-updated) weights (engine/quant/clip.py).
    unrounded: an [N, K] tensor that receives each column as it was just before it was rounded
    (the error-updated weights whose rounding w_q is), for a refinement that revisits rounding
    decisions (engine/quant/signround.py).
    static_groups: every group's scale and zero come from the weights as given, before any column
    is updated (llm-compressor's choice), instead of from the group's error-updated weights when
    its first column is visited."""
    w = w.to(torch.float32)  # w and h are never written: their permuted copies below are
    h = h.to(torch.float32)
    n, k = w.shape
    h_blocks = diagonal_blocks(h, grid.group_len(k)) if clip else None
    dead = h.diagonal() == 0  # inputs that were always zero: any weight works, zero is simplest
    gl = grid.group_len(k)
    n_groups = k // gl
    scale = torch.zeros(n, n_groups, device=w.device)
    zero = torch.zeros(n, n_groups, dtype=torch.int32, device=w.device)
    zero_f = torch.zeros(n, n_groups, device=w.device)  # float copy: no conversion per column
    ready = [False] * n_groups
    if static_groups:
        ratio = search_clip(w, h_blocks, grid, clip) if clip else None
        scale, zero = grid.qparams(w, clip=ratio)
        zero_f = zero.to(torch.float32)
        ready = [True] * n_groups

    energy = torch.where(dead, torch.ones_like(h.diagonal()), h.diagonal())  # dead inputs count as 1
    perm = torch.argsort(energy, descending=True, stable=True) if act_order \
        else torch.arange(k, device=w.device)
    w, h = w[:, perm], h[perm][:, perm]
    dead = dead[perm]
    h[dead, dead] = 1
    w[:, dead] = 0
    position = torch.argsort(perm)  # natural column -> position in visiting order
    group_of = (perm // gl).tolist()
    box = [h]
    del h  # the factor overwrites the only copy
    hinv = _factor(box, damp)

    # The loop runs on transposed copies ([K, N] weights, [G, N] scales): a column is then a
    # contiguous row, so every per-column operation reads and writes contiguous memory.
    natural = perm.tolist()
    wt = w.T.contiguous()
    del w
    scale_t, zero_t = scale.T.contiguous(), zero_f.T.contiguous()
    zero_i = zero.T.contiguous()
    q_t = torch.zeros_like(wt)  # in natural column order: no reordered copy at the end
    u_t = torch.empty_like(wt) if unrounded is not None else None
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        w1 = wt[i1:i2]  # a view: updated in place
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        # Two levels of lazy updates: a column's error goes at once only to the columns of its
        # sub-block (a rank-1 update, memory-bound), and each sub-block's errors reach the rest
        # of the block in one matrix product.
        for j1 in range(0, i2 - i1, SUB_BLOCK):
            j2 = min(j1 + SUB_BLOCK, i2 - i1)
            for i in range(j1, j2):
                g = group_of[i1 + i]
                if not ready[g]:
                    cols = position[g * gl:(g + 1) * gl]
                    current = wt[cols]  # [gl, N]: already updated for every finished sub-block
                    later = (cols >= i1 + j2) & (cols < i2)  # in the block, past this sub-block: owed its errors
                    if later.any() and i > j1:
                        current[later] -= hinv1[j1:i, cols[later] - i1].T @ err1[j1:i]
                    current = current.T
                    ratio = search_clip(current, h_blocks[g:g + 1], grid, clip) if clip else None
                    s_g, z_g = grid.qparams(current, clip=ratio)
                    scale_t[g], zero_i[g] = s_g[:, 0], z_g[:, 0]
                    zero_t[g] = z_g[:, 0]
                    ready[g] = True
                col = w1[i]
                qc = grid.round_trip(col, scale_t[g], zero_t[g])
                q_t[natural[i1 + i]] = qc
                if u_t is not None:
                    u_t[natural[i1 + i]] = col
                e = (col - qc).div_(hinv1[i, i])
                w1[i:j2].addr_(hinv1[i, i:j2], e, alpha=-1)
                err1[i] = e
            if j2 < i2 - i1:
                w1[j2:].addmm_(hinv1[j1:j2, j2:].T, err1[j1:j2], alpha=-1)
        wt[i2:].addmm_(hinv[i1:i2, i2:].T, err1, alpha=-1)
    if unrounded is not None:
        unrounded.copy_(u_t.T)
    q, scale, zero = q_t.T.contiguous(), scale_t.T.contiguous(), zero_i.T.contiguous()
    return q, scale, zero
