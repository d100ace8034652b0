"""Greedy generation for batches of prompts of different lengths.

Batches are left-padded with an attention mask (transformers' generate derives position ids
from it), grouped by length so little is padded. Each continuation ends at the first stop
token (included) or after new_tokens tokens.
"""

from __future__ import annotations

import torch

from ..progress import progress_bar
from .forward import model_device


def stop_token_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(tokenizer, "eos_token_id", None), getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(i) for i in source)
    return ids


def cut_at_stop(tokens: list[int], stop_ids: set[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in stop_ids:
            return tokens[:i + 1]
    return tokens


@torch.no_grad()
def greedy_continuations(model, prompts: list[list[int]], new_tokens: int, stop_ids: set[int], batch_size: int,
                         desc: str = "generate", progress: bool = True) -> list[list[int]]:
    from transformers import GenerationConfig

    if not prompts:
        return []
    device = model_device(model)
    pad = min(stop_ids) if stop_ids else 0
    config = GenerationConfig(do_sample=False, max_new_tokens=new_tokens, min_new_tokens=0, num_beams=1,
                              pad_token_id=pad, eos_token_id=sorted(stop_ids) or None)
    out: list[list[int]] = [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for start in progress_bar(range(0, len(order), batch_size), desc=desc, unit="batch", enabled=progress):
        members = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in members)
        ids = torch.full((len(members), width), pad, dtype=torch.long)
        mask = torch.zeros((len(members), width), dtype=torch.long)
        for row, i in enumerate(members):
            ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i], dtype=torch.long)
            mask[row, width - len(prompts[i]):] = 1
        generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
        for row, i in enumerate(members):
            out[i] = cut_at_stop(generated[row, width:].tolist(), stop_ids)
    return out
