"""End-to-end tuning of the group scales against the float model's next-token distribution, in
the style of EfficientQAT's E2E-QP (Chen et al., 2024).

GPTQ, AWQ and the block refinement (signround.py) each fit a layer's or a block's output; what a
user sees is the model's next-token distribution. Once every layer is quantized, this pass keeps
each tuned layer's integer codes and zero points exactly as they are and tunes only its group
scales, all layers at once:

    scale = scale0 * exp(t),   t [N, G] starting at 0 (exactly the model it was given)

by Adam on KL(p_float || p_quant) over the calibration windows, `windows_per_step` windows a
step, for `epochs` passes, with a learning rate that decays linearly to zero. p_float comes from
the float model's final hidden states, taken before any layer was quantized (`float_hidden`),
through the float output head; p_quant from the model as it now is.

Tuning a scale per group on a few windows can fit those windows and nothing else (on
TinyStories-656K with 16 windows of 256 tokens it raised the perplexity of held-out stories), so
one window in HOLDOUT_EVERY (at least one) is held out: the steps never see it, the KL on it is
measured with the scales exactly as they will be stored (rounded to their storage dtype) before
tuning and after each pass, and the scales of the pass with the lowest held-out KL are kept, the
given ones if no pass lowered it.

Only integer weight-only layers are tuned (their weight is (codes - zero) * scale, so the scale
is the one continuous parameter a stored layer has); the caller says which.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .grid import round_scale
from .precision import autocast

log = logging.getLogger(__name__)

TOKENS_PER_HEAD_CHUNK = 1024  # the output head and KL run this many tokens at a time (recomputed in backward)
HOLDOUT_EVERY = 8  # one calibration window in this many is held out to choose the pass kept


@dataclass
class FloatTargets:
    """The float model's final hidden states on the calibration windows, and its output head."""

    hidden: torch.Tensor  # [windows, seq, hidden] float32
    head_weight: torch.Tensor  # [vocab, hidden]
    head_bias: torch.Tensor | None


@dataclass
class Tuned:
    layers: int
    kl_before: float  # on the held-out windows, before tuning
    kl_after: float  # on the held-out windows, with the scales kept (== kl_before when none were)
    kept: bool  # whether tuned scales replaced the given ones
    epoch: int  # the pass whose scales were kept (0: none)
    held_out: int  # how many calibration windows were held out
    train_kl: list[float]  # mean KL over each pass's steps


def tunable(module: nn.Module) -> bool:
    """Whether a quantized module's scales can be tuned: an integer weight-only format."""
    fmt = getattr(module, "format", None)
    return fmt is not None and not fmt.float_codes and fmt.activation_dtype == "float" and module.experts is None


def _decoder(model: nn.Module) -> nn.Module:
    decoder = getattr(model, "base_model", model)
    if decoder is model:
        raise ValueError(f"{type(model).__name__} has no base model under its output head; "
                         f"end-to-end scale tuning needs a causal LM with one")
    return decoder


@torch.no_grad()
def float_hidden(model: nn.Module, windows: torch.Tensor, batch_size: int, precision: str) -> FloatTargets:
    """The float model's final hidden states on `windows` (call before quantizing anything)."""
    device = next(model.parameters()).device
    decoder, head = _decoder(model), model.get_output_embeddings()
    out = []
    with autocast(device, precision):
        for i in range(0, windows.shape[0], batch_size):
            h = decoder(input_ids=windows[i:i + batch_size].to(device), use_cache=False).last_hidden_state
            out.append(h.float())
    bias = None if head.bias is None else head.bias.detach().clone()
    return FloatTargets(torch.cat(out), head.weight.detach().clone(), bias)


class _Tunable(nn.Module):
    """A quantized linear as a differentiable function of its log-scale offsets."""

    def __init__(self, q: nn.Module):
        super().__init__()
        w = q.format.unpack(q.packed(), q.params)
        n, k = w.q.shape
        self.group = q.params.group_len(k)
        zero = w.zero if w.zero is not None else q.format.symmetric_zero
        codes = w.q.to(torch.float32).view(n, k // self.group, self.group)
        self.register_buffer("centred", codes - (zero.to(torch.float32).unsqueeze(-1) if torch.is_tensor(zero) else zero))
        self.register_buffer("scale0", w.scale.to(torch.float32))
        self.offset = nn.Parameter(torch.zeros_like(self.scale0))
        self.bias = q.bias
        self.scale_dtype = q.format.scale_dtype
        self.exact = False  # True: run with the scales as they will be stored

    def scale(self, exact: bool = False) -> torch.Tensor:
        s = self.scale0 * torch.exp(self.offset)
        return round_scale(s, self.scale_dtype) if exact else s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = (self.centred * self.scale(self.exact).unsqueeze(-1)).flatten(1)
        return F.linear(x, weight.to(x.dtype) if not torch.is_autocast_enabled(x.device.type) else weight, self.bias)


def _kl_chunk(hidden_q: torch.Tensor, hidden_f: torch.Tensor, head: nn.Module, targets: FloatTargets) -> torch.Tensor:
    log_q = F.log_softmax(head(hidden_q).float(), dim=-1)
    log_p = F.log_softmax(F.linear(hidden_f, targets.head_weight, targets.head_bias).float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum()


def _kl_sum(model: nn.Module, ids: torch.Tensor, hidden_f: torch.Tensor, targets: FloatTargets,
            precision: str, grad: bool) -> torch.Tensor:
    """Summed KL(p_float || p_quant) over the tokens of `ids`."""
    device = ids.device
    with autocast(device, precision):
        hidden_q = _decoder(model)(input_ids=ids, use_cache=False).last_hidden_state
    head = model.get_output_embeddings()
    hq, hf = hidden_q.flatten(0, 1), hidden_f.flatten(0, 1).to(device)
    total = hq.new_zeros((), dtype=torch.float32)
    for i in range(0, hq.shape[0], TOKENS_PER_HEAD_CHUNK):
        piece = (hq[i:i + TOKENS_PER_HEAD_CHUNK], hf[i:i + TOKENS_PER_HEAD_CHUNK], head, targets)
        total = total + (checkpoint(_kl_chunk, *piece, use_reentrant=False) if grad else _kl_chunk(*piece))
    return total


@torch.no_grad()
def _kl(model, windows, hidden, targets, batch_size, precision, tunables) -> float:
    """Mean KL per token on `windows`, with every tunable's scales as they will be stored."""
    device = targets.head_weight.device
    for t in tunables:
        t.exact = True
    try:
        total = 0.0
        for i in range(0, windows.shape[0], batch_size):
            total += float(_kl_sum(model, windows[i:i + batch_size].to(device), hidden[i:i + batch_size], targets,
                                   precision, grad=False))
    finally:
        for t in tunables:
            t.exact = False
    return total / windows.numel()


def held_out_rows(windows: int) -> torch.Tensor:
    """The calibration windows held out from the steps: every HOLDOUT_EVERY-th, at least one
    (none when there is only one window: it is both trained on and measured)."""
    if windows < 2:
        return torch.arange(windows)
    return torch.arange(HOLDOUT_EVERY - 1, max(windows, HOLDOUT_EVERY), HOLDOUT_EVERY).clamp_max(windows - 1).unique()


def tuning_steps(windows: int, epochs: int, windows_per_step: int) -> int:
    """How many steps tune_scales takes: the held-out windows are not stepped on."""
    train = max(windows - len(held_out_rows(windows)), 1)
    return epochs * -(-train // max(windows_per_step, 1))


def tune_scales(model: nn.Module, names: list[str], windows: torch.Tensor, targets: FloatTargets, epochs: int,
                lr: float, windows_per_step: int = 2, precision: str = "float32", seed: int = 0,
                progress=None) -> Tuned:
    """Tune the group scales of the quantized modules `names` of `model` (each `tunable`) end to
    end; write the kept scales back into their `scales` buffers. `progress`: an object with
    .update(n), advanced once per step."""
    from ..modules import get_module, set_module  # the swap in and out is the modules' own business

    held = held_out_rows(windows.shape[0])
    train = torch.tensor([i for i in range(windows.shape[0]) if i not in set(held.tolist())] or held.tolist())
    originals = {name: get_module(model, name) for name in names}
    tunables = {name: _Tunable(q) for name, q in originals.items()}
    modules = list(tunables.values())
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    batch = max(windows_per_step, 1)
    held_ids, held_hidden = windows[held], targets.hidden[held]
    train_kl: list[float] = []
    try:
        for name, t in tunables.items():
            set_module(model, name, t)
        before = best = _kl(model, held_ids, held_hidden, targets, batch, precision, modules)
        best_epoch, best_offsets = 0, None
        offsets = [t.offset for t in modules]
        opt = torch.optim.Adam(offsets, lr=lr)
        steps_per_epoch = tuning_steps(windows.shape[0], 1, batch)
        total_steps = epochs * steps_per_epoch
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / total_steps)
        generator = torch.Generator().manual_seed(seed)
        device = targets.head_weight.device
        for epoch in range(1, epochs + 1):
            order = train[torch.randperm(len(train), generator=generator)]
            running = 0.0
            with torch.enable_grad():
                for i in range(0, len(order), batch):
                    rows = order[i:i + batch]
                    ids = windows[rows].to(device)
                    loss = _kl_sum(model, ids, targets.hidden[rows], targets, precision, grad=True) / ids.numel()
                    loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    schedule.step()
                    running += float(loss.detach())
                    if progress is not None:
                        progress.update(1)
            train_kl.append(running / steps_per_epoch)
            now = _kl(model, held_ids, held_hidden, targets, batch, precision, modules)
            log.info("tune scales: pass %d/%d, KL on its steps %.4g, on the %d held-out windows %.4g",
                     epoch, epochs, train_kl[-1], len(held), now)
            if now < best:
                best, best_epoch = now, epoch
                best_offsets = [o.detach().clone() for o in offsets]
    finally:
        for name, q in originals.items():
            set_module(model, name, q)
        for p, flag in frozen:
            p.requires_grad_(flag)
    kept = best_offsets is not None
    if kept:
        with torch.no_grad():
            for (name, q), t, o in zip(originals.items(), modules, best_offsets):
                t.offset.copy_(o)
                q.scales.copy_(t.scale(exact=True).to(q.scales.dtype))
                q.prepare()  # a backend's own layout of the old scales is stale
    log.info("tune scales: KL on the %d held-out calibration windows %.4g -> %.4g (%s)", len(held), before, best,
             f"kept the scales of pass {best_epoch}" if kept else "not kept")
    return Tuned(layers=len(names), kl_before=before, kl_after=best, kept=kept, epoch=best_epoch,
                 held_out=len(held), train_kl=train_kl)
