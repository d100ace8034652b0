"""Sign-gradient refinement of a block's rounding, in the style of AutoRound (Cheng et al., 2023).

GPTQ and AWQ choose each layer's rounding to keep that layer's own output close; what matters
is the block's output. This refinement takes the block's integer layers as GPTQ left them and
revisits, for all of them at once, two things per layer:

    codes = clamp(round(u / (scale * alpha) + v) + zero, 0, 2**bits - 1)
    value = (codes - zero) * scale * alpha

`u` holds the values that were rounded (GPTQ's error-updated columns, engine/quant/gptq.py), `v`
[N, K] in [-0.5, 0.5] moves a weight across its rounding boundary and `alpha` [N, G] in
[alpha_min, alpha_max] rescales a group. Both start at the identity (v = 0, alpha = 1: exactly
the rounding it was given) and follow the sign of the gradient of the block's output error,
mean((block(x; value) - block(x; float weights))^2), through a straight-through rounding, with a
learning rate that decays linearly to zero. The inputs x are the quantized model's own (the
calibration driver's block inputs), the targets the float block's outputs on them, so the
block also corrects what the blocks before it got wrong.

The refined rounding is kept only if its error over all calibration windows, measured with the
weights exactly as they will be stored (fp16-rounded scales), is below the starting rounding's;
otherwise the starting rounding stays (the caller notes it). Layers of the block that this
refinement does not own run as they are (in float) while it runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from .grid import WeightGrid, grouped, round_scale
from .precision import autocast

log = logging.getLogger(__name__)


@dataclass
class Rounding:
    """One layer's rounding as the refinement sees it."""

    param: str  # the weight's name relative to the block, e.g. "mlp.down_proj.weight"
    u: torch.Tensor  # [N, K] the values that were rounded
    scale: torch.Tensor  # [N, G] float32
    zero: torch.Tensor  # [N, G] int32
    grid: WeightGrid


@dataclass
class Refined:
    values: dict[str, torch.Tensor]  # param -> [N, K] weights on the grid (as they will be stored)
    scales: dict[str, torch.Tensor]  # param -> [N, G]
    loss_before: float
    loss_after: float
    kept: bool  # whether the refined rounding replaced the starting one


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def _value(r: Rounding, v: torch.Tensor | None, alpha: torch.Tensor | None, exact: bool) -> torch.Tensor:
    """The layer's weight for offsets v and group factors alpha (None: the identity). `exact`
    rounds the scale to its storage dtype, as the stored model has it (not differentiable)."""
    n, k = r.u.shape
    scale = r.scale if alpha is None else r.scale * alpha
    if exact:
        scale = round_scale(scale, r.grid.scale_dtype)
    s = scale.unsqueeze(-1)
    z = r.zero.unsqueeze(-1).to(torch.float32)
    x = grouped(r.u, r.grid.group_size) / s
    if v is not None:
        x = x + grouped(v, r.grid.group_size)
    codes = (torch.round(x) if exact else _RoundSTE.apply(x)) + z
    codes = codes.clamp(0, 2 ** r.grid.bits - 1)
    return ((codes - z) * s).reshape(n, k)


def _batch_of(call) -> int:
    args, kwargs = call
    hidden = args[0] if args else kwargs["hidden_states"]
    return hidden.shape[0]


def _take(value, rows: slice, batch: int, device: torch.device):
    """value with every tensor whose first dimension is the batch cut to `rows`, on `device`."""
    if isinstance(value, torch.Tensor):
        value = value[rows] if value.dim() and value.shape[0] == batch else value
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_take(v, rows, batch, device) for v in value)
    return value


def windows_of(call, rows: slice, device: torch.device):
    """The block call for windows `rows` of a batch's call, on `device`."""
    args, kwargs = call
    batch = _batch_of(call)
    return (tuple(_take(a, rows, batch, device) for a in args),
            {k: _take(v, rows, batch, device) for k, v in kwargs.items()})


def _output(block: nn.Module, overrides: dict[str, torch.Tensor], call) -> torch.Tensor:
    args, kwargs = call
    out = functional_call(block, overrides, args, kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def _error(block: nn.Module, overrides: dict[str, torch.Tensor], calls: list, targets: list[torch.Tensor],
           device: torch.device) -> float:
    total, count = 0.0, 0
    for call, y in zip(calls, targets):
        out = _output(block, overrides, windows_of(call, slice(None), device))
        total += float((out.float() - y.to(device).float()).pow(2).sum())
        count += y.numel()
    return total / max(count, 1)


def refine_rounding(block: nn.Module, calls: list, roundings: list[Rounding], steps: int, lr: float | None = None,
                    windows_per_step: int = 4, alpha_range: tuple[float, float] = (0.5, 1.5),
                    seed: int = 0, targets: list[torch.Tensor] | None = None,
                    scale_lr: float | None = None, precision: str = "float32") -> Refined:
    """Refine the rounding of `roundings` (layers of `block`) on the calibration `calls` (the
    block's inputs, batches of windows) for `steps` sign-gradient steps of `windows_per_step`
    windows each; lr defaults to 1 / steps (AutoRound's). The outputs to reproduce are the float
    block's on `calls`, or `targets` (one per call: e.g. the float model's own outputs of the
    block, so that the block also makes up for the error of the blocks before it). scale_lr: the
    step of the group scale factors (default: lr). precision: calib.precision of the steps' forward
    and backward passes (engine/quant/precision.py); the error that decides whether the refinement
    is kept is always measured in the block's own dtype."""
    device = next(block.parameters()).device
    lr = 1.0 / max(steps, 1) if lr is None else lr
    scale_lr = lr if scale_lr is None else scale_lr
    if targets is None:
        with torch.no_grad():
            targets = [_output(block, {}, windows_of(c, slice(None), device)).detach() for c in calls]
    start = {r.param: _value(r, None, None, exact=True) for r in roundings}
    before = _error(block, start, calls, targets, device)

    pieces = []
    for j, call in enumerate(calls):
        b = _batch_of(call)
        pieces += [(j, slice(i, min(i + windows_per_step, b))) for i in range(0, b, windows_per_step)]
    order = torch.randperm(len(pieces), generator=torch.Generator().manual_seed(seed)).tolist()

    vs = [torch.zeros_like(r.u, requires_grad=True) for r in roundings]
    alphas = [torch.ones_like(r.scale, requires_grad=True) for r in roundings]
    frozen = [(p, p.requires_grad) for p in block.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            for step in range(steps):
                j, rows = pieces[order[step % len(pieces)]]
                call = windows_of(calls[j], rows, device)
                y = targets[j][rows]
                overrides = {r.param: _value(r, v, a, exact=False) for r, v, a in zip(roundings, vs, alphas)}
                with autocast(device, precision):
                    out = _output(block, overrides, call)
                loss = (out.float() - y.float()).pow(2).mean()
                loss.backward()
                decay = 1 - step / steps
                with torch.no_grad():
                    for v, a in zip(vs, alphas):
                        v.sub_(v.grad.sign(), alpha=lr * decay).clamp_(-0.5, 0.5)
                        a.sub_(a.grad.sign(), alpha=scale_lr * decay).clamp_(*alpha_range)
                        v.grad, a.grad = None, None
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)

    with torch.no_grad():
        refined = {r.param: _value(r, v, a, exact=True) for r, v, a in zip(roundings, vs, alphas)}
        after = _error(block, refined, calls, targets, device)
        kept = after < before
        scales = {r.param: round_scale(r.scale * a if kept else r.scale, r.grid.scale_dtype)
                  for r, a in zip(roundings, alphas)}
    log.info("signround: block output error %.4g -> %.4g (%s)", before, after, "kept" if kept else "not kept")
    return Refined(values=refined if kept else start, scales=scales, loss_before=before, loss_after=after, kept=kept)
