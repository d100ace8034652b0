"""Everything `qrecipe run` measures, before and after quantization:

    measure_baseline          the quality reference (cached per model, eval settings and
                              device) and peak memory of the unquantized model
    SpeedTimer                keeps a float copy of the baseline before quantization (or times
                              the baseline there, when a copy does not fit), then times the
                              baseline and the variant (speed.py)
    measure_variant_quality   perplexity, divergence, task behaviour and lm-eval accuracy and
                              flips against that reference
    measure_variant_speed     the speed metrics, with their spread and noise flags
    measure_variant_peak      peak memory, measured like the baseline's

and the flat metrics they produce (names in README "Tracking and registry").
"""

from __future__ import annotations

import copy
import dataclasses
import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .. import metric_names as M
from ..config.settings import Settings, SpeedSpec
from ..data import load_documents, token_windows
from ..errors import ConfigError
from ..plan.roofline import roofline_metrics
from ..tables import human_bytes
from .baseline_cache import (BaselineOutputs, UnreadableCache, baseline_key, baseline_key_parts, cache_folder,
                             load_baseline, save_baseline)
from .divergence import compare_pass, reference_pass
from .lm_eval_score import score as lm_eval_score
from .lm_eval_score import variant_metrics as lm_eval_metrics
from .memory import available_bytes, child_peak_bytes, cuda_peak_bytes, peak_method, weight_bytes
from .speed import INTERLEAVED, SEQUENTIAL, VARIANT_ONLY, SpeedSamples, measure_one, measure_pair, speed_metrics, \
    speed_tokens, streamed_timing_note, tokens_needed, variant_speed_metrics
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
    peak_bytes: int | None
    notes: list[str] = dataclasses.field(default_factory=list)  # what did not go the usual way


def prepare_inputs(settings: Settings, tokenizer) -> EvalInputs:
    ev = settings.eval
    windows, primary_docs = {}, None
    for name, data in ev.all_texts().items():
        docs = load_documents(data, ev.text_field(name))
        primary_docs = primary_docs if primary_docs is not None else docs
        windows[name] = token_windows(tokenizer, docs, ev.seq_len, ev.windows, "eval")
    items = build_task_items(ev.tasks, tokenizer, primary_docs or [])
    first = next(iter(windows.values()))
    return EvalInputs(windows, items, speed_tokens(first, tokens_needed(ev.speed)))


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
    lm = ev.lm_eval
    if lm.enabled:
        items = f"the first {lm.limit} items" if lm.limit else "every item"
        lines.append(f"  lm-eval: {', '.join(lm.tasks)} ({lm.source} tasks, eval.lm_eval.tasks), {items} of each "
                     f"(eval.lm_eval.limit), zero-shot, batch {lm.batch_size}")
    if s.enabled:
        lines.append(f"  speed:   prefill {s.batch_size} x {s.prompt_len} tokens, decode {s.new_tokens} steps of "
                     f"{s.decode_batch_size} after {s.context_len} tokens of context; {s.warmup} warm-up + {s.repeats} "
                     f"repeats, baseline and variant interleaved unless eval.speed.timing says otherwise; median and "
                     f"interquartile range, noisy above {100 * s.max_rel_iqr:g}% spread (eval.speed.*)")
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


@dataclass
class CacheLookup:
    outputs: BaselineOutputs | None  # None: nothing usable is cached for these settings
    key: str
    folder: Path
    parts: dict[str, Any]
    notes: list[str]  # an unreadable or stale cache entry (it is then recomputed and replaced)


def cached_baseline(settings: Settings, device: torch.device, dtype: torch.dtype, sources: list[str],
                    text_names: set[str], say: Say) -> CacheLookup:
    """The baseline cache entry for these settings, and its outputs if they cover these texts and prompts."""
    parts = baseline_key_parts(settings, device, dtype)
    key = baseline_key(parts)
    folder = cache_folder(settings, key)
    notes: list[str] = []
    try:
        outputs = load_baseline(folder)
    except UnreadableCache as e:
        outputs = None
        notes.append(f"the cached baseline outputs in {folder} could not be used ({e}); recomputed and replaced")
    stale = outputs is not None and (outputs.task_sources != sources or set(outputs.texts) != text_names
                                     or (outputs.lm_eval is not None) != settings.eval.lm_eval.enabled)
    if stale:
        notes.append(f"the cached baseline outputs in {folder} hold other texts, task prompts or lm-eval tasks "
                     f"than this run's; recomputed and replaced")
    for note in notes:
        say(f"note: {note}")
    return CacheLookup(None if stale else outputs, key, folder, parts, notes)


def store_baseline(lookup: CacheLookup, outputs: BaselineOutputs) -> None:
    save_baseline(lookup.folder, outputs, {"key": lookup.key, "parts": lookup.parts,
                                           "ppl": {n: r.ppl for n, r in outputs.texts.items()}},
                  replace=bool(lookup.notes))


def measure_baseline(model, tokenizer, settings: Settings, inputs: EvalInputs, device: torch.device,
                     dtype: torch.dtype, say: Say, progress: bool = True) -> BaselineSide:
    ev = settings.eval
    sources = [it.source for it in inputs.items]
    lookup = cached_baseline(settings, device, dtype, sources, set(inputs.windows), say)
    key, folder, parts, notes, outputs = lookup.key, lookup.folder, lookup.parts, lookup.notes, lookup.outputs
    cached = outputs is not None
    if cached:
        say(f"baseline outputs: cached ({folder})")
    else:
        say("baseline outputs: computing (cached for later runs of this model and eval settings)")
        texts = {name: reference_pass(model, w, ev.batch_size, ev.kl_topk, f"baseline {name}", progress)
                 for name, w in inputs.windows.items()}
        tasks = baseline_tasks(model, tokenizer, inputs.items, ev.tasks, progress) if inputs.items else None
        lm_eval = None
        if ev.lm_eval.enabled:
            say(f"baseline lm-eval: {', '.join(ev.lm_eval.tasks)} ...")
            lm_eval = lm_eval_score(model, tokenizer, ev.lm_eval)
        outputs = BaselineOutputs(texts, tasks, sources, lm_eval)
        store_baseline(lookup, outputs)
    if settings.eval.memory.method != "off":
        say("peak memory of the baseline ...")
    peak = _peak(settings, device, model, {"model": dataclasses.asdict(settings.model),
                                           "cache": str(settings.paths.cache), "dtype": str(dtype).split(".")[-1]})
    return BaselineSide(outputs, cached, key, folder, parts, weight_bytes(model), peak, notes)


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
    if ev.lm_eval.enabled and base.outputs.lm_eval is not None:
        metrics.update(lm_eval_metrics(base.outputs.lm_eval, lm_eval_score(model, tokenizer, ev.lm_eval)))
    return metrics


def memory_metrics(base: BaselineSide, peak: int | None, variant_weight_bytes: int, method: str) -> dict[str, Any]:
    m: dict[str, Any] = {M.WEIGHT_BYTES: variant_weight_bytes, M.WEIGHT_BYTES_BASELINE: base.weight_bytes,
                         M.WEIGHT_REDUCTION: base.weight_bytes / variant_weight_bytes}
    if peak is not None:  # a baseline not measured (a streamed run's) leaves the variant's own, without ratio
        m.update({M.PEAK_MEMORY_BYTES: peak, M.PEAK_MEMORY_METHOD: method})
    if peak is not None and base.peak_bytes is not None:
        m.update({M.PEAK_MEMORY_BYTES_BASELINE: base.peak_bytes, M.PEAK_MEMORY_REDUCTION: base.peak_bytes / peak})
    return m


# A float copy of the baseline is kept for interleaved timing when it takes at most this share
# of the memory free on the device (the rest is for the quantized copy and activations).
KEEP_SHARE = 0.5


def timing_mode(spec: SpeedSpec, model_bytes: int, free_bytes: int, where: str) -> tuple[str, str | None]:
    """(interleaved | sequential, why sequential): interleaving needs the baseline alive while
    the variant runs, i.e. a float copy of the model kept through quantization."""
    if spec.timing == SEQUENTIAL:
        return SEQUENTIAL, "eval.speed.timing=sequential: the baseline was timed before quantization and the " \
                           "variant after, so drift in the machine's speed between the two is not cancelled"
    if model_bytes <= KEEP_SHARE * free_bytes:
        return INTERLEAVED, None
    why = (f"a float copy of the baseline for interleaved timing needs {human_bytes(model_bytes)}, more than "
           f"{KEEP_SHARE:.0%} of the {human_bytes(free_bytes)} free on {where}")
    if spec.timing == INTERLEAVED:
        raise ConfigError(f"eval.speed.timing=interleaved: {why}; use eval.speed.timing=auto (which then times "
                          f"sequentially and says so) or sequential")
    return SEQUENTIAL, f"{why}, so the baseline was timed before quantization and the variant after (drift in " \
                       f"the machine's speed between the two is not cancelled)"


class SpeedTimer:
    """Created before quantization: keeps a float copy of the baseline (interleaved timing) or
    times the baseline at once (sequential). `time_variant` then times the variant and frees
    the copy; `release` frees it on any other way out. A streamed run (`streamed`: the plan's
    reason; no float model in memory) times only the variant, whose figures come without ratios."""

    def __init__(self, settings: Settings, inputs: EvalInputs, model, device: torch.device, say: Say,
                 streamed: str | None = None):
        self.spec, self.tokens = settings.eval.speed, inputs.speed_tokens
        self.reference, self.base = None, None
        self.mode, self.note = None, None
        if not self.spec.enabled:
            return
        if streamed is not None:
            self.mode, self.note = VARIANT_ONLY, streamed_timing_note(self.spec, streamed)
            return
        self.mode, self.note = timing_mode(self.spec, weight_bytes(model), available_bytes(device), str(device))
        if self.mode == INTERLEAVED:
            say("keeping a float copy of the baseline, to time it interleaved with the variant ...")
            self.reference = copy.deepcopy(model)
        else:
            say(f"timing the baseline now: {self.note} ...")
            self.base = measure_one(model, self.tokens, self.spec)

    def time_variant(self, model, say: Say) -> dict[str, Any]:
        if self.mode is None:
            return {}
        if self.mode == VARIANT_ONLY:
            say("timing the variant (its baseline was not timed) ...")
            return variant_speed_metrics(measure_one(model, self.tokens, self.spec), self.spec, self.note)
        if self.reference is not None:
            say("timing baseline and variant, interleaved ...")
            self.base, variant = measure_pair(self.reference, model, self.tokens, self.spec)
            self.release()
        else:
            say("timing the variant ...")
            variant = measure_one(model, self.tokens, self.spec)
        assert isinstance(self.base, SpeedSamples)
        return speed_metrics(self.base, variant, self.spec, self.mode, self.note)

    def release(self) -> None:
        if self.reference is None:
            return
        self.reference = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def measure_variant_speed(timer: SpeedTimer, model, say: Say) -> dict[str, Any]:
    return timer.time_variant(model, say)


def prediction_metrics(roofline: dict[str, Any], speed: dict[str, Any], on_target: bool) -> dict[str, Any]:
    """The roofline's predictions (predicted_*) and, where the speed was measured on the
    target's own kind of hardware, measured over predicted throughput (1.0: at the roofline)."""
    m = roofline_metrics(roofline)
    if not m or not on_target or M.DECODE_MS_PER_TOKEN not in speed:
        return m
    base = M.baseline_of
    pairs = [(M.DECODE_MEASURED_OVER_PREDICTED, M.PREDICTED_DECODE_MS_PER_TOKEN, M.DECODE_MS_PER_TOKEN),
             (base(M.DECODE_MEASURED_OVER_PREDICTED), base(M.PREDICTED_DECODE_MS_PER_TOKEN),
              M.DECODE_MS_PER_TOKEN_BASELINE)]
    for ratio, predicted, measured in pairs:  # time: predicted over measured is throughput measured over predicted
        if measured in speed:  # a baseline that was not timed (streamed) has no measured figure
            m[ratio] = m[predicted] / speed[measured]
    pairs = [(M.PREFILL_MEASURED_OVER_PREDICTED, M.PREDICTED_PREFILL_TOKENS_PER_S, M.PREFILL_TOKENS_PER_S),
             (base(M.PREFILL_MEASURED_OVER_PREDICTED), base(M.PREDICTED_PREFILL_TOKENS_PER_S),
              M.PREFILL_TOKENS_PER_S_BASELINE)]
    for ratio, predicted, measured in pairs:
        if predicted in m and measured in speed:
            m[ratio] = speed[measured] / m[predicted]
    return m
    for side in ("", "_baseline"):
        m[f"decode_measured_over_predicted{side}"] = (m[f"predicted_decode_ms_per_token{side}"]
                                                      / speed[f"decode_ms_per_token{side}"])
        if f"predicted_prefill_tokens_per_s{side}" in m:
            m[f"prefill_measured_over_predicted{side}"] = (speed[f"prefill_tokens_per_s{side}"]
                                                           / m[f"predicted_prefill_tokens_per_s{side}"])
    return m


def measure_variant_peak(settings: Settings, device: torch.device, model, checkpoint: Path) -> int | None:
    return _peak(settings, device, model, {"checkpoint": str(checkpoint)})
