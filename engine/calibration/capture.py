"""Where the decoder blocks are, what the first one receives, and how to run one.

The first block's inputs (hidden states and whatever else the model passes: attention
mask, position ids, rotary embeddings) are captured by a forward pre-hook that stops the
forward there, so only the embeddings run; each block is then called directly with them.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from ..models.families import BLOCK_LISTS
from ..quant.precision import autocast

BlockCall = tuple[tuple[Any, ...], dict[str, Any]]  # positional args, kwargs of one batch


class _Captured(Exception):
    """Raised by the pre-hook to end the model's forward once the first block's inputs are in."""


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """(name, blocks) of the first entry of families.BLOCK_LISTS this model has, or None."""
    for name in BLOCK_LISTS:
        try:
            blocks = model.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(blocks, nn.ModuleList) and len(blocks):
            return name, blocks
    return None


def _detached(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, tuple):
        return tuple(_detached(v) for v in value)
    return value


@torch.no_grad()
def capture_inputs(model: nn.Module, block: nn.Module, windows: torch.Tensor, batch_size: int,
                   device: torch.device | None = None) -> list[BlockCall]:
    """The call the model makes on `block` for each calibration batch (token ids go to
    `device`, by default that of the model's first parameter)."""
    calls: list[BlockCall] = []

    def stop(_module, args, kwargs):
        calls.append((_detached(args), {k: _detached(v) for k, v in kwargs.items()}))
        raise _Captured

    handle = block.register_forward_pre_hook(stop, with_kwargs=True)
    device = device if device is not None else next(model.parameters()).device
    try:
        for start in range(0, windows.shape[0], batch_size):
            try:
                model(input_ids=windows[start:start + batch_size].to(device), use_cache=False)
            except _Captured:
                pass
    finally:
        handle.remove()
    return calls


def hidden_of(call: BlockCall) -> torch.Tensor:
    args, kwargs = call
    return args[0] if args else kwargs["hidden_states"]


def with_hidden(call: BlockCall, hidden: torch.Tensor | None) -> BlockCall:
    args, kwargs = call
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def calibration_precision(module: nn.Module, precision: str = "float32") -> contextlib.AbstractContextManager:
    """The context the calibration's forward passes of `module` run in (calib.precision,
    engine/quant/precision.py), on the device of its parameters."""
    return autocast(next(module.parameters(), torch.empty(0)).device, precision)


@torch.no_grad()
def run_block(block: nn.Module, call: BlockCall) -> torch.Tensor:
    """The block's output hidden states (decoder layers return a tensor or a tuple)."""
    args, kwargs = call
    out = block(*args, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out
