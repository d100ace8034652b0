"""Everything `qrecipe run` measures, before and after quantization:

    measure_baseline          the quality reference (cached per model, eval settings and
                              device), speed and peak memory of the unquantized model
    measure_variant_quality   perplexity, divergence and task behaviour against that reference
    measure_variant_speed     timed like the baseline, in the same process
    measure_variant_peak      peak memory, measured like the baseline's

and the flat metrics they produce (names in README "Tracking and registry").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .. import metric_names as M
from ..config.settings import Settings
from ..data import load_documents, token_windows
from .baseline_cache import (BaselineOutputs, baseline_key, baseline_key_parts, cache_folder, load_baseline,
                             save_baseline)
from .divergence import compare_pass, reference_pass
from .memory import child_peak_bytes, cuda_peak_bytes, peak_method, weight_bytes
from .speed import SpeedResult, measure_speed, speed_tokens
from .task_metrics import baseline_tasks, variant_tasks
from .tasks import TaskItem, build_task_items

Say = Callable[[str], None]


@dataclass
class EvalInputs:
    """Token inputs shared by both models, built once from the tokenizer."""

    windows: dict[str, torch.Tensor]  # text name -> [windows, seq_len]; the primary text first
    items: list[TaskItem]
    speed_tokens: torch.Tensor


@dataclass
class BaselineSide:
    outputs: BaselineOutputs
    cached: bool
    key: str
    folder: Path
    key_parts: dict[str, Any]
    weight_bytes: int
    speed: SpeedResult | None
    peak_bytes: int | None


def prepare_inputs(settings: Settings, tokenizer) -> EvalInputs:
    ev = settings.eval
    windows, primary_docs = {}, None
    for name, data in ev.all_texts().items():
        docs = load_documents(data, ev.text_field(name))
        primary_docs = primary_docs if primary_docs is not None else docs
        windows[name] = token_windows(tokenizer, docs, ev.seq_len, ev.windows, "eval")
    items = build_task_items(ev.tasks, tokenizer, primary_docs or [])
    first = next(iter(windows.values()))
    return EvalInputs(windows, items, speed_tokens(first, max(ev.speed.prompt_len, 32)))


_METHODS = {"child": "each model in a fresh child process (peak RSS running one eval batch)",
            "cuda": "torch's peak allocated CUDA memory while each model runs one eval batch", "off": "not measured"}


def describe_sizes(settings: Settings, inputs: EvalInputs, device: torch.device) -> str:
    """The measurement sizes, one line each, with the settings that change them."""
    ev, t, s = settings.eval, settings.eval.tasks, settings.eval.speed
    families = {}
    for it in inputs.items:
        families[it.family] = families.get(it.family, 0) + 1
    fam = ", ".join(f"{f} {n}" for f, n in families.items()) or "none"
    lines = [f"  quality: {ev.windows} windows x {ev.seq_len} tokens of {', '.join(inputs.windows)} "
             f"(eval.windows, eval.seq_len, batch {ev.batch_size}); KL over the baseline's top-{ev.kl_topk} "
             f"(eval.kl_topk)",
             f"  tasks:   {fam} prompts (eval.tasks.prompts={t.prompts}), {t.new_tokens} greedy tokens "
             f"(eval.tasks.new_tokens), references scored on {t.reference_tokens} tokens"]
    if s.enabled:
        lines.append(f"  speed:   prefill {s.batch_size} x {s.prompt_len} tokens, decode {s.new_tokens} tokens at "
                     f"batch 1; {s.warmup} warm-up + median of {s.repeats} (eval.speed.*)")
    lines.append(f"  memory:  {_METHODS[peak_method(ev.memory.method, device)]} (eval.memory.method)")
    return "\n".join(lines)


def _peak(settings: Settings, device: torch.device, model, request: dict) -> int | None:
    method = peak_method(settings.eval.memory.method, device)
    ev = settings.eval
    if method == "off":
        return None
    if method == "cuda":
        return cuda_peak_bytes(model, ev.batch_size, ev.seq_len)
    return child_peak_bytes({**request, "batch_size": ev.batch_size, "seq_len": ev.seq_len})


def measure_baseline(model, tokenizer, settings: Settings, inputs: EvalInputs, device: torch.device,
                     dtype: torch.dtype, say: Say, progress: bool = True) -> BaselineSide:
    ev = settings.eval
    parts = baseline_key_parts(settings, device, dtype)
    key = baseline_key(parts)
    folder = cache_folder(settings, key)
    sources = [it.source for it in inputs.items]
    outputs = load_baseline(folder)
    cached = outputs is not None and outputs.task_sources == sources and set(outputs.texts) == set(inputs.windows)
    if cached:
        say(f"baseline outputs: cached ({folder})")
    else:
        say("baseline outputs: computing (cached for later runs of this model and eval settings)")
        texts = {name: reference_pass(model, w, ev.batch_size, ev.kl_topk, f"baseline {name}", progress)
                 for name, w in inputs.windows.items()}
        tasks = baseline_tasks(model, tokenizer, inputs.items, ev.tasks, progress) if inputs.items else None
        outputs = BaselineOutputs(texts, tasks, sources)
        save_baseline(folder, outputs, {"key": key, "parts": parts,
                                        "ppl": {n: r.ppl for n, r in texts.items()}})
    speed = None
    if ev.speed.enabled:
        say("timing the baseline ...")
        speed = measure_speed(model, inputs.speed_tokens, ev.speed)
    if settings.eval.memory.method != "off":
        say("peak memory of the baseline ...")
    peak = _peak(settings, device, model, {"model": dataclasses.asdict(settings.model),
                                           "cache": str(settings.paths.cache), "dtype": str(dtype).split(".")[-1]})
    return BaselineSide(outputs, cached, key, folder, parts, weight_bytes(model), speed, peak)


def measure_variant_quality(model, tokenizer, settings: Settings, inputs: EvalInputs, base: BaselineSide,
                            progress: bool = True) -> dict[str, Any]:
    """Perplexity, divergence and task metrics of the variant against the baseline."""
    ev = settings.eval
    metrics: dict[str, Any] = {}
    primary = ev.data.name
    for name, windows in inputs.windows.items():
        ref = base.outputs.texts[name]
        q = compare_pass(model, windows, ref, ev.batch_size, f"variant {name}", progress)
        values = {M.PPL: q.ppl, M.PPL_BASELINE: ref.ppl, M.PPL_DELTA_PCT: 100 * (q.ppl / ref.ppl - 1),
                  M.NLL: q.nll, M.NLL_BASELINE: ref.nll, M.KL_MEAN: q.kl_mean, M.KL_P99: q.kl_p99,
                  M.TOP1_AGREEMENT: q.top1_agreement}
        if name == primary:
            metrics.update(values)
            metrics.update({M.EVAL_TOKENS: q.tokens, M.EVAL_DATA: name})
        else:
            metrics.update({M.text_metric(name, k): v for k, v in values.items()})
    if inputs.items and base.outputs.tasks is not None:
        metrics.update(variant_tasks(model, tokenizer, inputs.items, base.outputs.tasks, ev.tasks, progress))
    return metrics


def speed_and_memory_metrics(base: BaselineSide, speed: SpeedResult | None, peak: int | None,
                             variant_weight_bytes: int, method: str) -> dict[str, Any]:
    m: dict[str, Any] = {M.WEIGHT_BYTES: variant_weight_bytes, M.WEIGHT_BYTES_BASELINE: base.weight_bytes,
                         M.WEIGHT_REDUCTION: base.weight_bytes / variant_weight_bytes}
    if speed is not None and base.speed is not None:
        m.update({M.PREFILL_TOKENS_PER_S: speed.prefill_tokens_per_s,
                  M.PREFILL_TOKENS_PER_S_BASELINE: base.speed.prefill_tokens_per_s,
                  M.PREFILL_SPEEDUP: speed.prefill_tokens_per_s / base.speed.prefill_tokens_per_s,
                  M.DECODE_MS_PER_TOKEN: speed.decode_ms_per_token,
                  M.DECODE_MS_PER_TOKEN_BASELINE: base.speed.decode_ms_per_token,
                  M.DECODE_SPEEDUP: base.speed.decode_ms_per_token / speed.decode_ms_per_token,
                  M.SPEED_DEVICE: speed.device})
    if peak is not None and base.peak_bytes is not None:
        m.update({M.PEAK_MEMORY_BYTES: peak, M.PEAK_MEMORY_BYTES_BASELINE: base.peak_bytes,
                  M.PEAK_MEMORY_REDUCTION: base.peak_bytes / peak, M.PEAK_MEMORY_METHOD: method})
    return m


def measure_variant_speed(model, settings: Settings, inputs: EvalInputs) -> SpeedResult | None:
    return measure_speed(model, inputs.speed_tokens, settings.eval.speed) if settings.eval.speed.enabled else None


def measure_variant_peak(settings: Settings, device: torch.device, model, checkpoint: Path) -> int | None:
    return _peak(settings, device, model, {"checkpoint": str(checkpoint)})
