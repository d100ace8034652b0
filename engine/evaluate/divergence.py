"""Token-level divergence of a variant from its baseline on the same windows.

The baseline's full next-token distributions are too large to keep (SmolLM2: 49,152 floats
per position), so the baseline pass keeps, per position, its top-k log-probabilities and
their token ids. KL(baseline || variant) is then computed on k + 1 outcomes: the baseline's
top-k tokens, and one bucket for the rest of the vocabulary. Merging outcomes never raises a
KL (data-processing inequality), so this is a lower bound of the full KL, equal to it when k
covers the vocabulary, and exactly 0 for identical models. Top-1 agreement compares the
variant's argmax with the baseline's (its top-1 token).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .forward import window_logits
from .perplexity import window_nll

# Tail-bucket masses below this are rounding noise: log-softmax in float32 is accurate to about
# 1e-7 per token, so 1 - sum(top-k) carries up to ~k * 1e-7. A baseline tail below it counts as
# empty; a variant tail is floored at it instead of producing a huge or infinite KL.
_TAIL_FLOOR = 1e-5


@dataclass
class TextReference:
    """What the baseline leaves for one text: enough to score any variant against it."""

    topk_logp: torch.Tensor  # [windows, positions, k] float32, the baseline's largest log-probs
    topk_ids: torch.Tensor  # [windows, positions, k] int32, their token ids (column 0 = argmax)
    nll: float  # mean NLL per predicted token
    tokens: int

    @property
    def ppl(self) -> float:
        return math.exp(self.nll)

    def to_state(self) -> dict:
        return {"topk_logp": self.topk_logp, "topk_ids": self.topk_ids, "nll": self.nll, "tokens": self.tokens}

    @classmethod
    def from_state(cls, state: dict) -> "TextReference":
        return cls(state["topk_logp"], state["topk_ids"], float(state["nll"]), int(state["tokens"]))


@dataclass(frozen=True)
class TextQuality:
    ppl: float
    nll: float
    tokens: int
    kl_mean: float
    kl_p99: float
    top1_agreement: float


def topk_logprobs(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs, ids) of the k most likely tokens at each position, largest first."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    values, ids = logp.topk(min(k, logp.shape[-1]), dim=-1)
    return values, ids.to(torch.int32)


def _rest(topk_logp: torch.Tensor) -> torch.Tensor:
    """1 - sum(exp(topk_logp)) along the last axis, accurate when the sum is close to 1."""
    return -torch.expm1(torch.logsumexp(topk_logp, dim=-1).clamp(max=0.0))


def bucket_kl(base_topk_logp: torch.Tensor, var_logp_at_ids: torch.Tensor) -> torch.Tensor:
    """KL(baseline || variant) per position over the baseline's top-k tokens plus a tail bucket.

    base_topk_logp: the baseline's top-k log-probs; var_logp_at_ids: the variant's log-probs
    of the same token ids. Both [..., k]; computed in float64.
    """
    p_log = base_topk_logp.double()
    q_log = var_logp_at_ids.double()
    head = (p_log.exp() * (p_log - q_log)).sum(-1)
    p_rest, q_rest = _rest(p_log), _rest(q_log).clamp(min=_TAIL_FLOOR)
    tail = torch.where(p_rest >= _TAIL_FLOOR, p_rest * (p_rest.clamp(min=_TAIL_FLOOR).log() - q_rest.log()),
                       torch.zeros_like(p_rest))
    return (head + tail).clamp(min=0.0)  # rounding can leave -1e-17 where the two agree


@torch.no_grad()
def reference_pass(model, windows: torch.Tensor, batch_size: int, k: int, desc: str = "baseline",
                   progress: bool = True) -> TextReference:
    """One baseline pass over the windows: perplexity and the top-k reference."""
    return reference_from_logits(window_logits(model, windows, batch_size, desc, progress), k)


@torch.no_grad()
def reference_from_logits(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], k: int) -> TextReference:
    """The reference from (ids, logits) per batch of windows, however the logits were computed
    (a model loaded whole, or one streamed block by block: engine/streaming/baseline.py)."""
    logps, ids_out, total_nll, tokens = [], [], 0.0, 0
    for ids, logits in batches:
        total_nll += window_nll(ids, logits).item()
        tokens += ids[:, 1:].numel()
        values, top_ids = topk_logprobs(logits[:, :-1], k)
        logps.append(values.cpu())
        ids_out.append(top_ids.cpu())
    return TextReference(torch.cat(logps), torch.cat(ids_out), total_nll / tokens, tokens)


@torch.no_grad()
def compare_pass(model, windows: torch.Tensor, ref: TextReference, batch_size: int, desc: str = "variant",
                 progress: bool = True) -> TextQuality:
    """One variant pass over the same windows: perplexity, KL against the reference, agreement."""
    kls, agree, total_nll, tokens, row = [], 0, 0.0, 0, 0
    for ids, logits in window_logits(model, windows, batch_size, desc, progress):
        n = ids.shape[0]
        total_nll += window_nll(ids, logits).item()
        tokens += ids[:, 1:].numel()
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        base_ids = ref.topk_ids[row:row + n].to(logp.device).long()
        base_logp = ref.topk_logp[row:row + n].to(logp.device)
        kls.append(bucket_kl(base_logp, logp.gather(-1, base_ids)).flatten().cpu())
        agree += (logp.argmax(-1) == base_ids[..., 0]).sum().item()
        row += n
    kl = torch.cat(kls)
    return TextQuality(ppl=math.exp(total_nll / tokens), nll=total_nll / tokens, tokens=tokens,
                       kl_mean=kl.mean().item(), kl_p99=torch.quantile(kl, 0.99).item(),
                       top1_agreement=agree / kl.numel())
