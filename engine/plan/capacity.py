"""What the weight bytes mean on the target: does the model fit one device, the smallest
tensor-parallel degree that fits, and how many tokens of KV cache the memory left over holds
(before and after quantization). That last number is the argument for quantizing.

Model: each of `tp` devices holds weights/tp and its share of the KV cache; usable memory
is memory_gib * memory_utilization (as vLLM's gpu_memory_utilization). KV cache is stored
in the target's serving dtype (2 bytes for bf16): per token 2 (K and V) x layers x kv_heads
x head_dim x bytes; with tp > kv_heads the KV heads are replicated (one per device).
Activations and CUDA graphs are not modelled: treat the token counts as upper bounds.

Decode speed follows the bytes read per generated token, not the bytes stored: at batch 1 a
token reads every dense weight (attention, dense MLPs, routers, norms, the head) and, in each
mixture-of-experts layer, only the experts its router picks: num_experts_per_tok of
num_experts, so experts_per_token / num_experts of each expert tensor. The input embedding
table is read one row per token, so it is left out (unless the head is tied to it and reads
it whole). A batch of B tokens reads up to min(num_experts, B x experts_per_token) experts per
layer, so this is the batch-1 figure.
"""

from __future__ import annotations

from typing import Any

from ..models.describe import ModelInfo, dtype_bytes
from ..targets import Target

GIB = 2**30


def tp_divides_heads(tp: int, info: ModelInfo) -> bool:
    if info.num_heads % tp:
        return False
    kv = info.num_kv_heads
    return kv % tp == 0 or tp % kv == 0


def _kv_bytes_per_token(info: ModelInfo, tp: int, elem: int) -> int:
    kv_heads_per_device = max(1, info.num_kv_heads // tp)
    return 2 * info.num_layers * kv_heads_per_device * info.head_dim * elem


def _fit(weight_bytes: int, info: ModelInfo, target: Target, elem: int) -> dict[str, Any]:
    usable = target.memory_gib * GIB * target.memory_utilization
    degrees = [tp for tp in (1, 2, 4, 8, 16, 32, 64)
               if tp <= max(1, target.max_devices) and tp_divides_heads(tp, info)]
    for tp in degrees:
        free = usable - weight_bytes / tp
        if free > 0:
            per_token = _kv_bytes_per_token(info, tp, elem)
            return {"min_tp": tp, "kv_cache_tokens": int(free // per_token) if per_token else None}
    return {"min_tp": None, "kv_cache_tokens": 0}


def kv_tokens_at(weight_bytes: int, tp: int, info: ModelInfo, target: Target, elem: int) -> int:
    free = target.memory_gib * GIB * target.memory_utilization - weight_bytes / tp
    per_token = _kv_bytes_per_token(info, tp, elem)
    return max(0, int(free // per_token)) if per_token else 0


def decode_bytes_per_token(plan, info: ModelInfo, after: bool, tokens: int = 1) -> int:
    """Weight bytes one forward of `tokens` tokens reads (see the module docstring): at batch 1
    what one decoded token reads; a forward of B tokens reads up to min(num_experts, B x
    experts_per_token) experts of each expert tensor (engine/plan/roofline.py uses that)."""
    elem = dtype_bytes(plan.dtype)
    embedding = 0 if info.tied_lm_head else info.input_embedding_params * elem
    total = max(0, plan.other_bytes - embedding)
    for lp in plan.layers:
        size = lp.bytes_after if after else lp.bytes_before
        if lp.kind == "experts" and info.experts_per_token:
            size = size * min(tokens * info.experts_per_token, lp.num_experts) // lp.num_experts
        total += size
    return total


def capacity_report(plan, info: ModelInfo, target: Target) -> dict[str, Any]:
    totals = plan.totals()
    elem = dtype_bytes(target.dtype)
    before = _fit(totals["weight_bytes_before"], info, target, elem)
    after = _fit(totals["weight_bytes_after"], info, target, elem)
    report = {
        "device": target.gpu or target.device,
        "memory_gib_per_device": target.memory_gib,
        "memory_utilization": target.memory_utilization,
        "max_devices": target.max_devices,
        "fits_one_device_before": before["min_tp"] == 1,
        "fits_one_device_after": after["min_tp"] == 1,
        "min_tp_before": before["min_tp"],
        "min_tp_after": after["min_tp"],
        "kv_cache_tokens_before": before["kv_cache_tokens"],
        "kv_cache_tokens_after": after["kv_cache_tokens"],
        "kv_bytes_per_token": _kv_bytes_per_token(info, 1, elem),
        "decode_bytes_per_token_before": decode_bytes_per_token(plan, info, after=False),
        "decode_bytes_per_token_after": decode_bytes_per_token(plan, info, after=True),
    }
    if before["min_tp"] and after["min_tp"] and after["min_tp"] != before["min_tp"]:
        # Same hardware as the baseline needs: quantization buys that much more KV cache.
        report["kv_cache_tokens_after_at_tp_before"] = kv_tokens_at(
            totals["weight_bytes_after"], before["min_tp"], info, target, elem)
    return report
