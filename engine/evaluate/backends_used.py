"""Which backend ran each quantized layer's forward when the variant was timed, and whether the
measured speed is therefore the production kernel's on the deployment target.

A speed is the production kernel's when every quantized layer ran a kernel made for its format
(not a fallback such as dequantize-then-matmul, not emulation) and the measurement ran on the
target's kind of hardware (the same GPU model, or a CPU for target=cpu). Otherwise the run says
so in `speed_caveat`, and only the roofline prediction speaks for the target.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .. import metric_names as M
from ..backends import EMULATED, FALLBACK, KERNEL
from ..modules import QuantLinear
from ..targets import Target


def backend_record(model: nn.Module, target: Target, device_type: str, device_name: str) -> dict[str, Any]:
    counts: dict[str, int] = {}
    kinds = {KERNEL: 0, FALLBACK: 0, EMULATED: 0}
    how: dict[str, str] = {}
    for _, module in model.named_modules():
        if not isinstance(module, QuantLinear):
            continue
        backend = module.backend or module.prepare()
        kind = backend.kind(module.format)
        counts[backend.name] = counts.get(backend.name, 0) + 1
        kinds[kind] += 1
        if kind != KERNEL:
            how[f"{backend.name}: {backend.describe(module.format)}"] = kind
    on_target = target.is_device(device_type, device_name)
    total = sum(kinds.values())
    m: dict[str, Any] = {M.backend_metric(name): n for name, n in sorted(counts.items())}
    m.update({M.LAYERS_ON_KERNEL: kinds[KERNEL], M.LAYERS_ON_FALLBACK: kinds[FALLBACK],
              M.LAYERS_EMULATED: kinds[EMULATED], M.SPEED_ON_TARGET: on_target,
              M.SPEED_PRODUCTION: on_target and kinds[KERNEL] == total})
    reasons = []
    if kinds[FALLBACK] or kinds[EMULATED]:
        off = kinds[FALLBACK] + kinds[EMULATED]
        reasons.append(f"{off} of {total} quantized layers ran no kernel of their format ({'; '.join(sorted(how))})")
    if not on_target:
        where = target.gpu or target.device
        reasons.append(f"it was measured on {device_name}, not on target {target.name}'s {where}")
    if reasons:
        m[M.SPEED_CAVEAT] = "not the production kernel's speed: " + "; ".join(reasons)
    return m
