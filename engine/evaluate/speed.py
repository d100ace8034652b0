"""Prefill throughput and decode latency of the baseline and the variant, timed in one process
on one device, with their spread.

    prefill  seconds of one forward pass over batch_size x prompt_len tokens (no cache)
    decode   seconds per greedy step at decode_batch_size sequences, after context_len tokens
             were put in the KV cache (untimed), over new_tokens steps

Each model runs `warmup` times untimed (lazy initialisation, caches, kernel selection), then
`repeats` timed times. With both models alive (`measure_pair`) the repeats are interleaved,
baseline then variant, B V B V ..., so drift in the machine's speed (another process, thermal
throttling) hits both alike and cancels in each repeat's ratio (spread.py). `measure_one` times
one model alone: a run that cannot keep the baseline alive times it before quantization and the
variant after (sequential), and its record says so. CUDA work is synchronised before each
clock read. The clock is a parameter so tests can drive time themselves.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from .. import metric_names as M
from ..config.settings import SpeedSpec
from ..errors import ConfigError
from .forward import device_label, model_device
from .spread import Spread, noise_reasons, paired_speedup, spread

Clock = Callable[[], float]
INTERLEAVED, SEQUENTIAL = "interleaved", "sequential"
VARIANT_ONLY = "variant only"  # the baseline was not timed (a streamed run's: it does not fit)


@dataclass(frozen=True)
class SpeedSamples:
    """One model's timed repeats (seconds), in the order they ran."""

    prefill_s: tuple[float, ...]
    decode_step_s: tuple[float, ...]
    prefill_tokens: int
    device: str  # e.g. cpu, cuda:0
    device_name: str  # cpu, or the GPU's name (NVIDIA H100 80GB HBM3): what measured it

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prefill_tokens / spread(self.prefill_s).median

    @property
    def decode_ms_per_token(self) -> float:
        return 1000 * spread(self.decode_step_s).median


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def tokens_needed(spec: SpeedSpec) -> int:
    return max(spec.prompt_len, spec.context_len, 32)


class _Workload:
    """The two timed workloads of one model; each call returns the seconds it measured."""

    def __init__(self, model, tokens: torch.Tensor, spec: SpeedSpec, clock: Clock):
        self.model, self.spec, self.clock = model, spec, clock
        self.device = model_device(model)
        self.prompt = tokens[:spec.prompt_len].to(self.device).unsqueeze(0).repeat(spec.batch_size, 1)
        self.context = tokens[:spec.context_len].to(self.device).unsqueeze(0).repeat(spec.decode_batch_size, 1)
        self.cache_kwarg = _cache_kwarg(model)

    def prefill(self) -> float:
        _sync(self.device)
        start = self.clock()
        self.model(input_ids=self.prompt, use_cache=False)
        _sync(self.device)
        return self.clock() - start

    def decode(self) -> float:
        cache = _new_cache(self.model)
        kw = {self.cache_kwarg: cache, "use_cache": True}
        logits = self.model(input_ids=self.context, **kw).logits
        nxt = logits[:, -1:].argmax(-1)
        _sync(self.device)
        start = self.clock()
        for _ in range(self.spec.new_tokens):
            logits = self.model(input_ids=nxt, **kw).logits
            nxt = logits[:, -1:].argmax(-1)
        _sync(self.device)
        return (self.clock() - start) / self.spec.new_tokens


def _interleave(calls: Sequence[Callable[[], float]], warmup: int, repeats: int) -> list[list[float]]:
    """Each call `warmup` times untimed, then `repeats` rounds of every call in order."""
    for _ in range(warmup):
        for call in calls:
            call()
    samples: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for i, call in enumerate(calls):
            samples[i].append(call())
    return samples


@torch.no_grad()
def _measure(models: Sequence[Any], tokens: torch.Tensor, spec: SpeedSpec, clock: Clock) -> list[SpeedSamples]:
    if tokens.numel() < tokens_needed(spec):
        raise ValueError(f"speed needs {tokens_needed(spec)} tokens, got {tokens.numel()}")
    loads = [_Workload(m, tokens, spec, clock) for m in models]
    prefill = _interleave([w.prefill for w in loads], spec.warmup, spec.repeats)
    decode = _interleave([w.decode for w in loads], spec.warmup, spec.repeats)
    return [SpeedSamples(tuple(p), tuple(d), w.prompt.numel(), str(w.device), device_label(w.device))
            for w, p, d in zip(loads, prefill, decode)]


def measure_pair(baseline, variant, tokens: torch.Tensor, spec: SpeedSpec,
                 clock: Clock = time.perf_counter) -> tuple[SpeedSamples, SpeedSamples]:
    """Both models timed with their repeats interleaved (B V B V ...)."""
    base, var = _measure([baseline, variant], tokens, spec, clock)
    return base, var


def measure_one(model, tokens: torch.Tensor, spec: SpeedSpec, clock: Clock = time.perf_counter) -> SpeedSamples:
    return _measure([model], tokens, spec, clock)[0]


# per measurement: (speedup, low, high, noisy, noise, variant rel IQR, baseline rel IQR)
_SIDES = {"prefill": (M.PREFILL_SPEEDUP, M.PREFILL_SPEEDUP_LOW, M.PREFILL_SPEEDUP_HIGH, M.PREFILL_NOISY,
                      M.PREFILL_NOISE, M.PREFILL_REL_IQR, M.PREFILL_REL_IQR_BASELINE),
          "decode": (M.DECODE_SPEEDUP, M.DECODE_SPEEDUP_LOW, M.DECODE_SPEEDUP_HIGH, M.DECODE_NOISY, M.DECODE_NOISE,
                     M.DECODE_REL_IQR, M.DECODE_REL_IQR_BASELINE)}


def _side(name: str, base: Spread, var: Spread, speedup: Spread, max_rel_iqr: float) -> dict[str, Any]:
    value, low, high, noisy, noise, rel_iqr, rel_iqr_baseline = _SIDES[name]
    reasons = noise_reasons(speedup, base, var, max_rel_iqr)
    out: dict[str, Any] = {value: speedup.median, low: speedup.q1, high: speedup.q3, noisy: bool(reasons),
                           rel_iqr: var.rel_iqr, rel_iqr_baseline: base.rel_iqr}
    if reasons:
        out[noise] = "; ".join(reasons)
    return out


def streamed_timing_note(spec: SpeedSpec, why: str) -> str:
    """Why a streamed run (its float model does not fit: `why`, the plan's execution reason)
    times its variant alone; eval.speed.timing=interleaved or sequential, which need the
    baseline timed, is refused (planning.py check_inputs asks before anything is recorded or loaded)."""
    if spec.enabled and spec.timing in (INTERLEAVED, SEQUENTIAL):
        raise ConfigError(f"eval.speed.timing={spec.timing}: this run streams its float model from disk ({why}), "
                          f"so its baseline cannot be timed; set eval.speed.timing=auto (a streamed run then times "
                          f"the variant alone and says so), eval.speed.enabled=false or run.streaming=never")
    return (f"the float baseline was streamed from disk ({why}) and not timed: the variant was timed alone, "
            f"without speedup")


def variant_speed_metrics(var: SpeedSamples, spec: SpeedSpec, timing_note: str) -> dict[str, Any]:
    """The variant's own speed figures, when its baseline was not timed (`timing_note`: why):
    no speedup, no ratio."""
    return {M.PREFILL_TOKENS_PER_S: var.prefill_tokens_per_s,
            M.DECODE_MS_PER_TOKEN: 1000 * spread(var.decode_step_s).median, M.SPEED_DEVICE: var.device,
            M.SPEED_DEVICE_NAME: var.device_name, M.SPEED_REPEATS: spec.repeats, M.SPEED_TIMING: VARIANT_ONLY,
            M.SPEED_TIMING_NOTE: timing_note}


def speed_metrics(base: SpeedSamples, var: SpeedSamples, spec: SpeedSpec, timing: str,
                  timing_note: str | None = None) -> dict[str, Any]:
    """The flat speed metrics of a run (engine/metric_names.py)."""
    bp, vp = spread(base.prefill_s), spread(var.prefill_s)
    bd, vd = spread(base.decode_step_s), spread(var.decode_step_s)
    m: dict[str, Any] = {
        M.PREFILL_TOKENS_PER_S: var.prefill_tokens_per_s, M.PREFILL_TOKENS_PER_S_BASELINE: base.prefill_tokens_per_s,
        M.DECODE_MS_PER_TOKEN: 1000 * vd.median, M.DECODE_MS_PER_TOKEN_BASELINE: 1000 * bd.median,
        M.SPEED_DEVICE: var.device, M.SPEED_DEVICE_NAME: var.device_name, M.SPEED_REPEATS: spec.repeats,
        M.SPEED_TIMING: timing,
    }
    m.update(_side("prefill", bp, vp, paired_speedup(base.prefill_s, var.prefill_s), spec.max_rel_iqr))
    m.update(_side("decode", bd, vd, paired_speedup(base.decode_step_s, var.decode_step_s), spec.max_rel_iqr))
    if timing_note:
        m[M.SPEED_TIMING_NOTE] = timing_note
    return m
