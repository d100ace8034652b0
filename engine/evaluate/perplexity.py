"""Perplexity over token windows (protocol in conf/eval/default.yaml).

Each window is scored on its own (no context carried over); every token after the first
of a window is predicted, so n windows of L tokens score n * (L - 1) tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .forward import window_logits


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    nll: float  # mean negative log-likelihood per predicted token (nats)
    tokens: int


def window_nll(ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Summed NLL of a batch of windows (every token after the first is predicted)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="sum")


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, batch_size: int = 4, desc: str = "perplexity",
               progress: bool = True) -> PerplexityResult:
    total_nll, total_tokens = 0.0, 0
    for ids, logits in window_logits(model, windows, batch_size, desc, progress):
        total_nll += window_nll(ids, logits).item()
        total_tokens += ids[:, 1:].numel()
    mean = total_nll / total_tokens
    return PerplexityResult(ppl=math.exp(mean), nll=mean, tokens=total_tokens)
