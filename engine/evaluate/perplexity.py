"""Perplexity over token windows (protocol in conf/eval/default.yaml).

Each window is scored on its own (no context carried over); every token after the first
of a window is predicted, so n windows of L tokens score n * (L - 1) tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    nll: float  # mean negative log-likelihood per predicted token (nats)
    tokens: int


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, batch_size: int = 4, desc: str = "perplexity",
               progress: bool = True) -> PerplexityResult:
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    batches = range(0, windows.shape[0], batch_size)
    for start in tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False):
        ids = windows[start:start + batch_size].to(device)
        logits = model(input_ids=ids, use_cache=False).logits
        nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="sum")
        total_nll += nll.item()
        total_tokens += ids[:, 1:].numel()
    mean = total_nll / total_tokens
    return PerplexityResult(ppl=math.exp(mean), nll=mean, tokens=total_tokens)
