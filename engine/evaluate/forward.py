"""Forward passes the metrics share: batches of equal-length windows, and right-padded
batches of sequences of different lengths (teacher forcing)."""

from __future__ import annotations

from typing import Iterator

import torch

from ..progress import progress_bar


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def device_label(device: torch.device) -> str:
    """What a measurement ran on: `cpu`, or the GPU's name as torch reports it (NVIDIA H100 80GB HBM3)."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


@torch.no_grad()
def window_logits(model, windows: torch.Tensor, batch_size: int, desc: str = "forward",
                  progress: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(ids, logits) per batch of windows; logits[:, t] predicts ids[:, t + 1]."""
    device = model_device(model)
    for start in progress_bar(range(0, windows.shape[0], batch_size), desc=desc, unit="batch", enabled=progress):
        ids = windows[start:start + batch_size].to(device)
        yield ids, model(input_ids=ids, use_cache=False).logits


@torch.no_grad()
def sequence_logits(model, sequences: list[list[int]], batch_size: int, desc: str = "forward",
                    progress: bool = True) -> Iterator[tuple[int, torch.Tensor]]:
    """(index, logits of that sequence's own positions) for sequences of different lengths.

    Batches are right-padded: in a causal model a position never attends to later ones, so
    padding after a sequence cannot change its logits and no attention mask is needed.
    Sequences are batched longest first so each batch pads little.
    """
    device = model_device(model)
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    for start in progress_bar(range(0, len(order), batch_size), desc=desc, unit="batch", enabled=progress):
        members = order[start:start + batch_size]
        width = max(len(sequences[i]) for i in members)
        ids = torch.zeros(len(members), width, dtype=torch.long)
        for row, i in enumerate(members):
            ids[row, :len(sequences[i])] = torch.tensor(sequences[i], dtype=torch.long)
        logits = model(input_ids=ids.to(device), use_cache=False).logits
        for row, i in enumerate(members):
            yield i, logits[row, :len(sequences[i])]
