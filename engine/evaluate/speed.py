"""Prefill throughput and decode latency, measured the same way for the baseline and the variant
in one process on one device, so their ratio is a fair speedup.

    prefill  tokens/s of one forward pass over batch_size x prompt_len tokens
    decode   ms per token at batch 1: greedy steps with a KV cache after a short prompt

Each is run `warmup` times untimed (lazy initialisation, caches, kernel selection), then
`repeats` times; the median is reported. CUDA work is synchronised before each clock read.
"""

from __future__ import annotations

import inspect
import statistics
import time
from dataclasses import asdict, dataclass

import torch

from ..config.settings import SpeedSpec
from .forward import model_device

DECODE_PROMPT_TOKENS = 16


@dataclass(frozen=True)
class SpeedResult:
    prefill_tokens_per_s: float
    decode_ms_per_token: float
    device: str

    def to_dict(self) -> dict:
        return asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, warmup: int, repeats: int) -> float:
    """Median seconds of fn() over repeats, after warmup untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _cache_kwarg(model) -> str:
    """transformers 5.x renamed past_key_values to cache; use whichever this version takes."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _new_cache(model):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older transformers: no config argument
        return DynamicCache()


def speed_tokens(windows: torch.Tensor, length: int) -> torch.Tensor:
    """`length` real tokens from the eval windows (repeated if the windows hold fewer)."""
    flat = windows.flatten()
    reps = -(-length // flat.numel())
    return flat.repeat(reps)[:length]


@torch.no_grad()
def measure_speed(model, tokens: torch.Tensor, spec: SpeedSpec) -> SpeedResult:
    """tokens: at least spec.prompt_len real token ids (1-D)."""
    device = model_device(model)
    prompt = tokens[:spec.prompt_len].to(device).unsqueeze(0).repeat(spec.batch_size, 1)
    prefill_s = _timed(lambda: model(input_ids=prompt, use_cache=False), device, spec.warmup, spec.repeats)

    cache_kwarg = _cache_kwarg(model)
    start_ids = tokens[:DECODE_PROMPT_TOKENS].to(device).unsqueeze(0)

    def decode() -> None:
        cache = _new_cache(model)
        logits = model(input_ids=start_ids, use_cache=True, **{cache_kwarg: cache}).logits
        nxt = logits[:, -1:].argmax(-1)
        _sync(device)
        began = time.perf_counter()
        for _ in range(spec.new_tokens):
            logits = model(input_ids=nxt, use_cache=True, **{cache_kwarg: cache}).logits
            nxt = logits[:, -1:].argmax(-1)
        _sync(device)
        step_times.append((time.perf_counter() - began) / spec.new_tokens)

    step_times: list[float] = []
    for _ in range(spec.warmup):
        decode()
    step_times.clear()
    for _ in range(spec.repeats):
        decode()
    return SpeedResult(prefill_tokens_per_s=prompt.numel() / prefill_s,
                       decode_ms_per_token=1000 * statistics.median(step_times), device=str(device))
