"""Every metric a run records, named once: evaluation writes these keys into metrics.json, and
gates, `variants compare`, the report, the plots and MLflow read them by these names.

`METRICS` says what each means and which direction is better; per-family task metrics, the
lm-evaluation-harness metrics per task and the extra eval texts' metrics are named by
`task_metric`, `lm_eval_metric` and `text_metric` (their kinds: TASK_KINDS, LM_EVAL_KINDS).
"""

from __future__ import annotations

from dataclasses import dataclass

# quality on the primary eval text, against the baseline on the same tokens
PPL = "ppl"
PPL_BASELINE = "ppl_baseline"
PPL_DELTA_PCT = "ppl_delta_pct"
NLL = "nll"
NLL_BASELINE = "nll_baseline"
KL_MEAN = "kl_mean"
KL_P99 = "kl_p99"
TOP1_AGREEMENT = "top1_agreement"
EVAL_TOKENS = "eval_tokens"
EVAL_DATA = "eval_data"
# size, speed and memory
WEIGHT_BYTES = "weight_bytes"
WEIGHT_BYTES_BASELINE = "weight_bytes_baseline"
WEIGHT_REDUCTION = "weight_reduction"
PREFILL_TOKENS_PER_S = "prefill_tokens_per_s"
PREFILL_TOKENS_PER_S_BASELINE = "prefill_tokens_per_s_baseline"
PREFILL_SPEEDUP = "prefill_speedup"
DECODE_MS_PER_TOKEN = "decode_ms_per_token"
DECODE_MS_PER_TOKEN_BASELINE = "decode_ms_per_token_baseline"
DECODE_SPEEDUP = "decode_speedup"
SPEED_DEVICE = "speed_device"
# the speed's spread and how far to trust it (engine/evaluate/spread.py)
PREFILL_SPEEDUP_LOW = "prefill_speedup_low"
PREFILL_SPEEDUP_HIGH = "prefill_speedup_high"
PREFILL_NOISY = "prefill_noisy"
PREFILL_NOISE = "prefill_noise"
PREFILL_REL_IQR = "prefill_rel_iqr"
PREFILL_REL_IQR_BASELINE = "prefill_rel_iqr_baseline"
DECODE_SPEEDUP_LOW = "decode_speedup_low"
DECODE_SPEEDUP_HIGH = "decode_speedup_high"
DECODE_NOISY = "decode_noisy"
DECODE_NOISE = "decode_noise"
DECODE_REL_IQR = "decode_rel_iqr"
DECODE_REL_IQR_BASELINE = "decode_rel_iqr_baseline"
SPEED_DEVICE_NAME = "speed_device_name"
SPEED_REPEATS = "speed_repeats"
SPEED_TIMING = "speed_timing"
SPEED_TIMING_NOTE = "speed_timing_note"
# what ran the quantized layers when the variant was timed (engine/evaluate/backends_used.py)
LAYERS_ON_KERNEL = "layers_on_kernel"
LAYERS_ON_FALLBACK = "layers_on_fallback"
SPEED_ON_TARGET = "speed_on_target"
SPEED_PRODUCTION = "speed_production"
SPEED_CAVEAT = "speed_caveat"
# the target's roofline (engine/plan/roofline.py): predictions, not measurements
PREDICTED_FOR = "predicted_for"
PREDICTED_DECODE_MS_PER_TOKEN = "predicted_decode_ms_per_token"
PREDICTED_DECODE_MS_PER_TOKEN_BASELINE = "predicted_decode_ms_per_token_baseline"
PREDICTED_DECODE_SPEEDUP = "predicted_decode_speedup"
PREDICTED_PREFILL_TOKENS_PER_S = "predicted_prefill_tokens_per_s"
PREDICTED_PREFILL_TOKENS_PER_S_BASELINE = "predicted_prefill_tokens_per_s_baseline"
PREDICTED_PREFILL_SPEEDUP = "predicted_prefill_speedup"
DECODE_MEASURED_OVER_PREDICTED = "decode_measured_over_predicted"
DECODE_MEASURED_OVER_PREDICTED_BASELINE = "decode_measured_over_predicted_baseline"
PREFILL_MEASURED_OVER_PREDICTED = "prefill_measured_over_predicted"
PREFILL_MEASURED_OVER_PREDICTED_BASELINE = "prefill_measured_over_predicted_baseline"
# how the run measured (engine/evaluate/protocol.py)
EVAL_PROTOCOL = "eval_protocol"
EVAL_PROTOCOL_TEXT = "eval_protocol_text"
PEAK_MEMORY_BYTES = "peak_memory_bytes"
PEAK_MEMORY_BYTES_BASELINE = "peak_memory_bytes_baseline"
PEAK_MEMORY_REDUCTION = "peak_memory_reduction"
PEAK_MEMORY_METHOD = "peak_memory_method"
# per-layer weight error
WEIGHT_SQNR_DB_MEAN = "weight_sqnr_db_mean"
WEIGHT_SQNR_DB_MIN = "weight_sqnr_db_min"
# how the run went
BASELINE_CACHED = "baseline_cached"
QUANTIZE_SECONDS = "quantize_seconds"
LAYERS_QUANTIZED = "layers_quantized"
LAYERS_EMULATED = "layers_emulated"
CALIBRATION_TOKENS = "calibration_tokens"
DEVICE = "device"
DTYPE = "dtype"
# task behaviour: the family whose greedy continuations least often equal the baseline's
TASK_WORST_FAMILY = "task.worst_family"
TASK_WORST_GREEDY_MATCH = "task.worst_greedy_match"

# lm-evaluation-harness (eval.lm_eval), over all tasks' items pooled
LM_EVAL_ITEMS = "lm_eval.items"
LM_EVAL_FLIP_RATE = "lm_eval.flip_rate"
LM_EVAL_CORRECT_TO_WRONG = "lm_eval.flips_correct_to_wrong"
LM_EVAL_WRONG_TO_CORRECT = "lm_eval.flips_wrong_to_correct"
LM_EVAL_WORST_TASK = "lm_eval.worst_task"

# per lm-eval task: lm_eval.<task>.<kind>
ITEMS = "items"
ACC = "acc"
ACC_STDERR = "acc_stderr"
ACC_NORM = "acc_norm"
ACC_NORM_STDERR = "acc_norm_stderr"
FLIP_RATE = "flip_rate"
FLIPS_CORRECT_TO_WRONG = "flips_correct_to_wrong"
FLIPS_WRONG_TO_CORRECT = "flips_wrong_to_correct"
LM_EVAL_ACCURACIES = ((ACC, ACC_STDERR), (ACC_NORM, ACC_NORM_STDERR))  # (accuracy, its standard error)

# per task family: task.<family>.<kind>
GREEDY_MATCH = "greedy_match"
PREFIX_MATCH = "prefix_match"
PROMPTS = "prompts"
LOGLIK = "loglik"
LOGLIK_BASELINE = "loglik_baseline"
LOGLIK_DELTA = "loglik_delta"
VALID_RATE = "valid_rate"
VALID_RATE_BASELINE = "valid_rate_baseline"
# a search (`qrecipe search`): the plans it priced (predicted.<metric>, from per-unit
# sensitivities on the calibration slice) and measured (measured.<metric>, on the eval text)
BITS_PER_WEIGHT = "bits_per_weight"
OUTPUT_ERROR = "output_error"
PREDICTED = "predicted"
MEASURED = "measured"
SPEARMAN = "spearman"


def search_metric(side: str, name: str) -> str:
    """e.g. search_metric(PREDICTED, KL_MEAN) == "predicted.kl_mean"; SPEARMAN, "fisher" -> "spearman.fisher"."""
    return f"{side}.{name}"


def baseline_of(name: str) -> str:
    """The baseline's figure beside a variant's, e.g. baseline_of(PPL) == PPL_BASELINE."""
    return f"{name}_baseline"


def delta_of(name: str) -> str:
    """Variant minus baseline, e.g. delta_of(ACC) == "acc_delta"."""
    return f"{name}_delta"


def lm_eval_metric(task: str, kind: str) -> str:
    """e.g. lm_eval_metric("piqa", FLIP_RATE) == "lm_eval.piqa.flip_rate"."""
    return f"lm_eval.{task}.{kind}"


def lm_eval_tasks(metrics) -> list[str]:
    """The lm-eval tasks a metrics dict holds, in their recorded order."""
    return [key.split(".")[1] for key in metrics if key.count(".") == 2 and key == lm_eval_metric(key.split(".")[1], ITEMS)]


def task_metric(family: str, kind: str) -> str:
    """e.g. task_metric("math", GREEDY_MATCH) == "task.math.greedy_match"."""
    return f"task.{family}.{kind}"


def backend_metric(backend: str) -> str:
    """Quantized layers that ran on a backend when the variant was timed, e.g. "backend.torch"."""
    return f"backend.{backend}"


def text_metric(text: str, name: str) -> str:
    """A metric of an extra eval text (eval.texts.<text>), e.g. "text.c4.ppl"."""
    return f"text.{text}.{name}"


@dataclass(frozen=True)
class Metric:
    name: str
    meaning: str
    better: str | None = None  # "lower", "higher", or None (a count, a label, a setting)


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric(PPL, "perplexity of the variant on the primary eval text", "lower"),
    Metric(PPL_BASELINE, "perplexity of the baseline on the same tokens", "lower"),
    Metric(PPL_DELTA_PCT, "perplexity change vs the baseline (%)", "lower"),
    Metric(NLL, "mean negative log-likelihood per predicted token (nats)", "lower"),
    Metric(NLL_BASELINE, "the baseline's mean negative log-likelihood (nats)", "lower"),
    Metric(KL_MEAN, "mean KL(baseline || variant) per token over the baseline's top-k (nats)", "lower"),
    Metric(KL_P99, "99th percentile of the per-token KL (nats)", "lower"),
    Metric(TOP1_AGREEMENT, "share of tokens where the variant's top-1 equals the baseline's", "higher"),
    Metric(EVAL_TOKENS, "predicted tokens the quality metrics are measured on"),
    Metric(EVAL_DATA, "the primary eval text"),
    Metric(WEIGHT_BYTES, "bytes of the variant's weights", "lower"),
    Metric(WEIGHT_BYTES_BASELINE, "bytes of the baseline's weights"),
    Metric(WEIGHT_REDUCTION, "baseline weight bytes / variant weight bytes (x)", "higher"),
    Metric(PREFILL_TOKENS_PER_S, "prefill throughput of the variant (tokens/s)", "higher"),
    Metric(PREFILL_TOKENS_PER_S_BASELINE, "prefill throughput of the baseline (tokens/s)", "higher"),
    Metric(PREFILL_SPEEDUP, "variant prefill tokens/s / baseline's, same process and device (x)", "higher"),
    Metric(DECODE_MS_PER_TOKEN, "decode latency of the variant at batch 1 (ms/token)", "lower"),
    Metric(DECODE_MS_PER_TOKEN_BASELINE, "decode latency of the baseline (ms/token)", "lower"),
    Metric(DECODE_SPEEDUP, "baseline decode ms/token / variant's, same process and device (x)", "higher"),
    Metric(SPEED_DEVICE, "the device speed was measured on"),
    Metric(PREFILL_SPEEDUP_LOW, "25th percentile of the repeats' paired prefill speedups (x)"),
    Metric(PREFILL_SPEEDUP_HIGH, "75th percentile of the repeats' paired prefill speedups (x)"),
    Metric(PREFILL_NOISY, "the prefill speedup's interval includes 1.0 or either model's repeats spread too much"),
    Metric(PREFILL_NOISE, "why the prefill speedup is noisy"),
    Metric(PREFILL_REL_IQR, "interquartile range / median of the variant's prefill repeats", "lower"),
    Metric(PREFILL_REL_IQR_BASELINE, "interquartile range / median of the baseline's prefill repeats", "lower"),
    Metric(DECODE_SPEEDUP_LOW, "25th percentile of the repeats' paired decode speedups (x)"),
    Metric(DECODE_SPEEDUP_HIGH, "75th percentile of the repeats' paired decode speedups (x)"),
    Metric(DECODE_NOISY, "the decode speedup's interval includes 1.0 or either model's repeats spread too much"),
    Metric(DECODE_NOISE, "why the decode speedup is noisy"),
    Metric(DECODE_REL_IQR, "interquartile range / median of the variant's decode repeats", "lower"),
    Metric(DECODE_REL_IQR_BASELINE, "interquartile range / median of the baseline's decode repeats", "lower"),
    Metric(SPEED_DEVICE_NAME, "what timed the speed: cpu, or the GPU's name"),
    Metric(SPEED_REPEATS, "timed repeats per model and measurement"),
    Metric(SPEED_TIMING, "interleaved (B V B V ...), sequential (baseline before quantization) or variant only "
                         "(a streamed baseline is not timed)"),
    Metric(SPEED_TIMING_NOTE, "why the timing was sequential, or why the variant was timed alone"),
    Metric(LAYERS_ON_KERNEL, "quantized layers that ran a kernel of their format"),
    Metric(LAYERS_ON_FALLBACK, "quantized layers that ran a fallback (dequantize, then matmul)"),
    Metric(SPEED_ON_TARGET, "the speed was measured on the target's kind of hardware"),
    Metric(SPEED_PRODUCTION, "measured on the target with every quantized layer on a kernel of its format"),
    Metric(SPEED_CAVEAT, "why the measured speed is not the production kernel's"),
    Metric(PREDICTED_FOR, "the target the roofline predictions are for"),
    Metric(PREDICTED_DECODE_MS_PER_TOKEN, "predicted decode time of the variant on the target (ms/token)", "lower"),
    Metric(PREDICTED_DECODE_MS_PER_TOKEN_BASELINE, "predicted decode time of the baseline (ms/token)", "lower"),
    Metric(PREDICTED_DECODE_SPEEDUP, "predicted decode speedup on the target (x)", "higher"),
    Metric(PREDICTED_PREFILL_TOKENS_PER_S, "predicted prefill throughput of the variant (tokens/s)", "higher"),
    Metric(PREDICTED_PREFILL_TOKENS_PER_S_BASELINE, "predicted prefill throughput of the baseline (tokens/s)",
           "higher"),
    Metric(PREDICTED_PREFILL_SPEEDUP, "predicted prefill speedup on the target (x)", "higher"),
    Metric(DECODE_MEASURED_OVER_PREDICTED, "measured / predicted decode throughput of the variant (1 = roofline)",
           "higher"),
    Metric(DECODE_MEASURED_OVER_PREDICTED_BASELINE, "the same for the baseline", "higher"),
    Metric(PREFILL_MEASURED_OVER_PREDICTED, "measured / predicted prefill throughput of the variant (1 = roofline)",
           "higher"),
    Metric(PREFILL_MEASURED_OVER_PREDICTED_BASELINE, "the same for the baseline", "higher"),
    Metric(EVAL_PROTOCOL, "hash of how the run measured (texts, windows, tasks, speed workload, device, dtype)"),
    Metric(EVAL_PROTOCOL_TEXT, "that protocol in words"),
    Metric(PEAK_MEMORY_BYTES, "peak memory of the variant running one eval batch", "lower"),
    Metric(PEAK_MEMORY_BYTES_BASELINE, "peak memory of the baseline running one eval batch", "lower"),
    Metric(PEAK_MEMORY_REDUCTION, "baseline peak memory / variant peak memory (x)", "higher"),
    Metric(PEAK_MEMORY_METHOD, "how peak memory was measured (child, cuda)"),
    Metric(WEIGHT_SQNR_DB_MEAN, "mean SQNR of the quantized layers' weights (dB)", "higher"),
    Metric(WEIGHT_SQNR_DB_MIN, "lowest SQNR of a quantized layer's weights (dB)", "higher"),
    Metric(BASELINE_CACHED, "the baseline's outputs came from the cache"),
    Metric(QUANTIZE_SECONDS, "wall time of quantization, calibration included (s)"),
    Metric(LAYERS_QUANTIZED, "layers the plan quantized"),
    Metric(LAYERS_EMULATED, "quantized layers that ran emulated numerics when the variant was timed"),
    Metric(CALIBRATION_TOKENS, "calibration tokens the calibrated layers saw"),
    Metric(DEVICE, "the device the run measured on"),
    Metric(DTYPE, "the activation dtype the run measured in"),
    Metric(TASK_WORST_FAMILY, "the task family whose greedy continuations least often match the baseline's"),
    Metric(TASK_WORST_GREEDY_MATCH, "that family's greedy match rate", "higher"),
    Metric(LM_EVAL_ITEMS, "lm-eval items scored, all tasks"),
    Metric(LM_EVAL_FLIP_RATE, "share of all lm-eval items whose chosen answer differs from the baseline's", "lower"),
    Metric(LM_EVAL_CORRECT_TO_WRONG, "share of all lm-eval items the baseline got right and the variant wrong",
           "lower"),
    Metric(LM_EVAL_WRONG_TO_CORRECT, "share of all lm-eval items the baseline got wrong and the variant right"),
    Metric(LM_EVAL_WORST_TASK, "the lm-eval task with the highest flip rate"),
    Metric(BITS_PER_WEIGHT, "stored bits per weight of the searched layers, scales and zeros included", "lower"),
    Metric(OUTPUT_ERROR, "a search's hessian proxy: sum over units of tr(dW H dW^T)", "lower"),
)}

# per lm-eval task: kind -> (meaning, better). With more than two choices an item can flip between
# two wrong answers, so the two directions need not add up to the flip rate.
LM_EVAL_KINDS: dict[str, Metric] = {m.name: m for m in (
    Metric(ITEMS, "items scored (the first eval.lm_eval.limit of the task)"),
    Metric(ACC, "zero-shot accuracy of the variant (lm-eval's acc)", "higher"),
    Metric(ACC_STDERR, "lm-eval's standard error of that accuracy"),
    Metric(baseline_of(ACC), "the baseline's accuracy on the same items", "higher"),
    Metric(baseline_of(ACC_STDERR), "its standard error"),
    Metric(delta_of(ACC), "variant minus baseline accuracy", "higher"),
    Metric(ACC_NORM, "length-normalized accuracy of the variant, where the task defines it", "higher"),
    Metric(ACC_NORM_STDERR, "lm-eval's standard error of that accuracy"),
    Metric(baseline_of(ACC_NORM), "the baseline's length-normalized accuracy", "higher"),
    Metric(baseline_of(ACC_NORM_STDERR), "its standard error"),
    Metric(delta_of(ACC_NORM), "variant minus baseline length-normalized accuracy", "higher"),
    Metric(FLIP_RATE, "share of items whose chosen answer (the one acc scores) differs from the baseline's", "lower"),
    Metric(FLIPS_CORRECT_TO_WRONG, "share of items the baseline got right and the variant wrong", "lower"),
    Metric(FLIPS_WRONG_TO_CORRECT, "share of items the baseline got wrong and the variant right"),
)}

# per-family task metrics: kind -> (meaning, better)
TASK_KINDS: dict[str, Metric] = {m.name: m for m in (
    Metric(PROMPTS, "prompts of the family"),
    Metric(GREEDY_MATCH, "share of prompts whose greedy continuation equals the baseline's", "higher"),
    Metric(PREFIX_MATCH, "mean share of the baseline's continuation reproduced before the first difference", "higher"),
    Metric(LOGLIK, "mean log-likelihood of the reference answers under the variant", "higher"),
    Metric(LOGLIK_BASELINE, "the same under the baseline", "higher"),
    Metric(LOGLIK_DELTA, "variant minus baseline log-likelihood of the reference answers", "higher"),
    Metric(VALID_RATE, "share of outputs that are valid JSON matching the schema", "higher"),
    Metric(VALID_RATE_BASELINE, "the same for the baseline", "higher"),
)}
