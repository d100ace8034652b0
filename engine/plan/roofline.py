"""The deployment target's roofline applied to the plan: how fast the baseline and the variant
should decode and prefill on one device of the target. These are predictions from data-sheet
figures (conf/target/), never measurements; the workload is the one `qrecipe run` times
(eval.speed), so a measurement on the target's own GPU can be set against them.

    weight bytes read per forward   plan/capacity.py's decode_bytes_per_token: every linear
                                    layer's bytes (bytes_after for the variant, bytes_before for
                                    the baseline) + the norms; the input embedding only where a
                                    tied lm_head reads it; of an expert tensor, the experts a
                                    forward of that many tokens is routed to
    KV bytes per token              2 (K and V) x layers x kv_heads x head_dim x bytes of the
                                    target's dtype (KV cache is not quantized)
    math per token                  2 x in_features x out_features per linear layer, run in the
                                    layer's math type: the target's float type (bf16) for kept
                                    and weight-only layers (W8A16, W4A16 dequantize into bf16
                                    MMAs), int8 for W8A8, fp8 for FP8; an expert tensor counts
                                    the experts_per_token experts a token is routed to

    decode step   batch B = decode_batch_size sequences, C = context_len tokens each in cache:
                  time = max((weight bytes + B x C x KV bytes per token) / bandwidth,
                             B x math per token / throughput)       ms/token = time of one step
    prefill       T = batch_size x prompt_len tokens in one forward:
                  time = max(weight bytes / bandwidth, T x math per token / throughput)
                  tokens/s = T / time; `bound` says which term is larger

bandwidth is GB/s = 1e9 bytes/s and throughput dense TFLOPS = 1e12 operations/s, as the data
sheets state them. Not modelled: attention's own math (QK^T and softmax-V, small against the
linear layers at these lengths), activations' traffic, kernel launch and communication, so
real figures are slower; one device reads all the weights (with tensor parallel over tp
devices each reads 1/tp: divide the times by tp, communication aside).
"""

from __future__ import annotations

from typing import Any

from .. import metric_names as M
from ..config.settings import SpeedSpec
from ..models.describe import ModelInfo, dtype_bytes
from ..schemes import SCHEMES
from ..targets import Target
from .capacity import _kv_bytes_per_token, decode_bytes_per_token
from .types import Plan

_FLOAT_MATH = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


def _math_type(scheme: str, target: Target) -> str:
    activation = SCHEMES[scheme].activation if scheme in SCHEMES else "float"
    return _FLOAT_MATH.get(target.dtype, "bf16") if activation == "float" else activation


def _macs(plan: Plan, info: ModelInfo, target: Target, variant: bool) -> dict[str, int]:
    """{math type: multiply-accumulates per token}; an expert tensor counts the experts a token
    is routed to (experts_per_token of num_experts)."""
    macs: dict[str, int] = {}
    for lp in plan.layers:
        n = lp.in_features * lp.out_features
        if lp.kind == "experts":
            n *= min(info.experts_per_token, lp.num_experts) if info.experts_per_token else lp.num_experts
        kind = _math_type(lp.scheme, target) if variant and lp.is_quantized else _FLOAT_MATH.get(target.dtype, "bf16")
        macs[kind] = macs.get(kind, 0) + n
    return macs


def _math_seconds(macs: dict[str, int], tokens: int, target: Target) -> float | None:
    """Seconds of 2 x macs x tokens operations at the target's dense throughput; None when the
    target states no throughput for a math type the layers need."""
    if any(kind not in target.dense_tflops for kind in macs):
        return None
    return sum(2 * n * tokens / (target.dense_tflops[kind] * 1e12) for kind, n in macs.items())


def _predict(plan: Plan, info: ModelInfo, target: Target, spec: SpeedSpec, variant: bool) -> dict[str, Any]:
    macs = _macs(plan, info, target, variant)
    kv_per_token = _kv_bytes_per_token(info, 1, dtype_bytes(target.dtype))
    bandwidth = target.bandwidth_gb_s * 1e9
    weight_bytes = decode_bytes_per_token(plan, info, after=variant, tokens=spec.decode_batch_size)
    kv_bytes = spec.decode_batch_size * spec.context_len * kv_per_token
    decode_bytes_s = (weight_bytes + kv_bytes) / bandwidth
    decode_math_s = _math_seconds(macs, spec.decode_batch_size, target)
    decode_s = max(decode_bytes_s, decode_math_s or 0.0)
    tokens = spec.batch_size * spec.prompt_len
    prefill_bytes_s = decode_bytes_per_token(plan, info, after=variant, tokens=tokens) / bandwidth
    prefill_math_s = _math_seconds(macs, tokens, target)
    out: dict[str, Any] = {
        "weight_bytes_read": weight_bytes, "kv_bytes_read": kv_bytes,
        "decode_ms_weights": 1000 * weight_bytes / bandwidth,
        "decode_ms_per_token": 1000 * decode_s,
        "decode_bound": "math" if decode_math_s is not None and decode_math_s > decode_bytes_s else "bytes",
        "macs_per_token": dict(sorted(macs.items())),
    }
    if prefill_math_s is not None:
        out.update({"prefill_tokens_per_s": tokens / max(prefill_bytes_s, prefill_math_s),
                    "prefill_bound": "math" if prefill_math_s > prefill_bytes_s else "bytes"})
    return out


def roofline_report(plan: Plan, info: ModelInfo, target: Target, spec: SpeedSpec) -> dict[str, Any]:
    """The predictions for the plan on its target, or why there are none."""
    if not target.bandwidth_gb_s:
        fix = ("set target.bandwidth_gb_s (GB/s) and target.dense_tflops (e.g. "
               "'target.dense_tflops={fp32: 1.5}'; with target=auto add them: +target.bandwidth_gb_s=...) to get one")
        return {"available": False, "target": target.name,
                "reason": f"target {target.name} states no memory bandwidth; {fix}"}
    kv_per_token = _kv_bytes_per_token(info, 1, dtype_bytes(target.dtype))
    baseline = _predict(plan, info, target, spec, variant=False)
    variant = _predict(plan, info, target, spec, variant=True)
    report: dict[str, Any] = {
        "available": True, "target": target.name, "gpu": target.gpu, "bandwidth_gb_s": target.bandwidth_gb_s,
        "dense_tflops": dict(target.dense_tflops), "kv_bytes_per_token": kv_per_token,
        "workload": {"prefill_batch": spec.batch_size, "prompt_len": spec.prompt_len,
                     "decode_batch": spec.decode_batch_size, "context_len": spec.context_len},
        "baseline": baseline, "variant": variant,
        "decode_speedup": baseline["decode_ms_per_token"] / variant["decode_ms_per_token"],
    }
    if "prefill_tokens_per_s" in variant and "prefill_tokens_per_s" in baseline:
        report["prefill_speedup"] = variant["prefill_tokens_per_s"] / baseline["prefill_tokens_per_s"]
    else:
        missing = sorted(set(variant["macs_per_token"]) - set(target.dense_tflops))
        report["prefill_reason"] = (f"target {target.name} states no dense_tflops for {', '.join(missing)}; "
                                    f"set target.dense_tflops.{missing[0]} to predict prefill")
    return report


def roofline_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """The predictions as flat run metrics (all named predicted_*)."""
    if not report.get("available"):
        return {}
    b, v = report["baseline"], report["variant"]
    m: dict[str, Any] = {M.PREDICTED_FOR: report["target"],
                         M.PREDICTED_DECODE_MS_PER_TOKEN: v["decode_ms_per_token"],
                         M.PREDICTED_DECODE_MS_PER_TOKEN_BASELINE: b["decode_ms_per_token"],
                         M.PREDICTED_DECODE_SPEEDUP: report["decode_speedup"]}
    if "prefill_speedup" in report:
        m.update({M.PREDICTED_PREFILL_TOKENS_PER_S: v["prefill_tokens_per_s"],
                  M.PREDICTED_PREFILL_TOKENS_PER_S_BASELINE: b["prefill_tokens_per_s"],
                  M.PREDICTED_PREFILL_SPEEDUP: report["prefill_speedup"]})
    return m


def _ms(ms: float) -> str:
    return f"{ms:.3g} ms" if ms >= 0.1 else f"{1000 * ms:.3g} µs"


def describe_roofline(report: dict[str, Any]) -> list[str]:
    """Lines for the plan and the run summary, labelled as predictions."""
    if not report:
        return []
    if not report.get("available"):
        return [f"predicted on {report['target']}: unavailable ({report['reason']})"]
    w, b, v = report["workload"], report["baseline"], report["variant"]
    tflops = ", ".join(f"{k} {x:g}" for k, x in report["dense_tflops"].items()) or "none stated"
    lines = [f"predicted on {report['target']} (roofline, not a measurement: {report['bandwidth_gb_s']:g} GB/s; "
             f"dense T(FL)OPS {tflops}; one device):",
             f"  decode  {w['decode_batch']} x 1 token per step, {w['context_len']} tokens of KV cache each: "
             f"{_ms(b['decode_ms_per_token'])} -> {_ms(v['decode_ms_per_token'])} per token "
             f"({report['decode_speedup']:.2f}x)"]
    if "prefill_speedup" in report:
        lines.append(f"  prefill {w['prefill_batch']} x {w['prompt_len']} tokens: {b['prefill_tokens_per_s']:,.0f} -> "
                     f"{v['prefill_tokens_per_s']:,.0f} tokens/s ({report['prefill_speedup']:.2f}x; "
                     f"{v['prefill_bound']}-bound)")
    else:
        lines.append(f"  prefill unavailable ({report['prefill_reason']})")
    return lines
