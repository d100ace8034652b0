"""The plan as a table a person reads: layers that differ only in their block index are
folded into one row (`model.layers.{0-29}.mlp.up_proj x30`) unless `expand` is set."""

from __future__ import annotations

import re

from ..schemes import SCHEMES
from ..tables import human_bytes, text_table
from .roofline import describe_roofline
from .types import Plan

_INDEX = re.compile(r"\.(\d+)\.")


def _ranges(indices: list[int]) -> str:
    out, start, prev = [], indices[0], indices[0]
    for i in indices[1:] + [None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ",".join(out)


def _float_parts(parts: dict[str, int]) -> str:
    """'embeddings and norms 1.16 GiB, routers 12.00 MiB, kept layers 0 B' (zero parts left out,
    embeddings and norms always named)."""
    labels = {"embeddings_and_norms": "embeddings and norms", "routers": "routers", "kept_layers": "kept layers"}
    shown = [f"{labels[k]} {human_bytes(v)}" for k, v in parts.items() if v or k == "embeddings_and_norms"]
    return ", ".join(shown) + " stay"


def _rows(plan: Plan, expand: bool) -> list[list[str]]:
    groups: dict[tuple, list] = {}
    for lp in plan.layers:
        m = _INDEX.search(lp.name)
        key_name = lp.name if expand or not m else _INDEX.sub(".*.", lp.name, count=1)
        group = "channel" if lp.group_size is None else f"g{lp.group_size}"
        scheme = f"{lp.scheme}" + (f" {group}" if lp.is_quantized and SCHEMES[lp.scheme].group_sizes else "") + \
            ("" if lp.symmetric in (None, True) else " asym") + \
            (f" {lp.activation}" if lp.activation not in (None, "none") else "")
        shape = f"{lp.out_features} x {lp.in_features}" if lp.kind != "experts" else \
            f"{lp.num_experts} x {lp.out_features} x {lp.in_features}"
        key = (key_name, shape, scheme, lp.algorithm or "-",
               "emulated" if lp.emulated else lp.backend, lp.status, lp.reason)
        groups.setdefault(key, []).append((int(m.group(1)) if m else None, lp))
    rows = []
    for key, members in groups.items():
        name = key[0]
        idx = sorted(i for i, _ in members if i is not None)
        if len(members) > 1 and idx:
            name = name.replace(".*.", f".{{{_ranges(idx)}}}.", 1) + f" x{len(members)}"
        before = sum(lp.bytes_before for _, lp in members)
        after = sum(lp.bytes_after for _, lp in members)
        rows.append([name, *key[1:], human_bytes(before), human_bytes(after)])
    return rows


def render_plan(plan: Plan, expand: bool = False) -> str:
    header = ["module", "shape ([experts x] out x in)", "scheme", "algorithm", "backend", "status", "reason", "before", "after"]
    t = plan.totals()
    c = plan.capacity
    ratio = f"{t['ratio']:.2f}x" if t["ratio"] else "-"
    lines = [
        f"plan {plan.plan_hash}  model={plan.model_id}  recipe={plan.recipe}  target={plan.target}  "
        f"runs on={plan.device}",
        "",
        text_table(header, _rows(plan, expand)),
        "",
        f"weights: {human_bytes(t['weight_bytes_before'])} -> {human_bytes(t['weight_bytes_after'])} ({ratio} smaller; "
        f"in {plan.dtype}: {_float_parts(t['float_bytes'])})",
        "layers: " + ", ".join(f"{v} {k}" for k, v in sorted(t["by_status"].items())) +
        (f"  schemes: {plan.scheme_mix()}" if t["by_scheme"] else ""),
    ]
    any_experts = any(lp.kind == "experts" for lp in plan.layers)
    if c:
        def fit(tp, tokens):
            if tp is None:
                return f"does not fit on {c['max_devices']} x {c['memory_gib_per_device']} GiB"
            where = "one device" if tp == 1 else f"tensor parallel {tp}"
            return f"fits {where}, KV cache ~{tokens:,} tokens"
        lines.append(f"on {plan.target} ({c['device']}, {c['memory_gib_per_device']} GiB x{c['max_devices']}, "
                     f"{int(c['memory_utilization'] * 100)}% usable):")
        lines.append(f"  before: {fit(c['min_tp_before'], c['kv_cache_tokens_before'])}")
        lines.append(f"  after:  {fit(c['min_tp_after'], c['kv_cache_tokens_after'])}")
        if "kv_cache_tokens_after_at_tp_before" in c:
            lines.append(f"  after, on the baseline's {c['min_tp_before']} devices: KV cache "
                         f"~{c['kv_cache_tokens_after_at_tp_before']:,} tokens")
        if "decode_bytes_per_token_after" in c:
            lines.append(f"  weight bytes read per decoded token (batch 1{', active experts only' if any_experts else ''}): "
                         f"{human_bytes(c['decode_bytes_per_token_before'])} -> "
                         f"{human_bytes(c['decode_bytes_per_token_after'])}")
    lines += describe_roofline(plan.roofline)
    x = plan.execution  # engine/streaming/decide.py
    if x:
        lines.append(f"execution: {x['mode']} ({x['reason']})")
        lines.append(f"  estimated peak: device {human_bytes(x['peak_device_bytes'])}, host "
                     f"{human_bytes(x['peak_host_bytes'])} (largest block {human_bytes(x['terms']['largest_block'])}; "
                     f"README \"Models bigger than memory\")")
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)
