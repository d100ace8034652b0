"""Where measured sensitivities are kept between searches: a protocol the engine calls and the
registry implements (registry/sensitivity_cache.py), so a second search of the same model with
another budget costs only the allocation. The engine never imports the registry.

An entry is one number: (measure, unit, candidate) -> value, inside a scope that fixes
everything else the number depends on (the model's weights, the calibration slice, the KL's
top-k, the numerics' device and dtype).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Protocol

# Measures (one fact each, named once)
EXACT_KL = "exact_kl"  # KL(baseline || unit quantized) per token on the slice (nats)
EXACT_NLL = "exact_dnll"  # mean NLL change on the slice text, same pass
FISHER = "fisher"  # 0.5 * sum_j F_jj * E[dy_j^2]: predicted KL (nats)
HESSIAN = "hessian"  # sum_j E[dy_j^2] = tr(dW H dW^T): output error
MEASURES = (EXACT_KL, EXACT_NLL, FISHER, HESSIAN)

Key = tuple[str, str, str]  # (measure, unit name, candidate label)


@dataclass(frozen=True)
class CacheScope:
    model: str
    fingerprint: dict[str, Any]  # engine/evaluate/baseline_cache.model_fingerprint
    settings: dict[str, Any] = field(default_factory=dict)  # slice, top-k, device, dtype

    @property
    def key(self) -> str:
        blob = json.dumps({"model": self.fingerprint, "settings": self.settings}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]


class SensitivityCache(Protocol):
    def load(self, scope: CacheScope) -> dict[Key, float]:
        """Every entry stored for this scope."""

    def store(self, scope: CacheScope, entries: dict[Key, float]) -> None:
        """Add entries (an entry already stored keeps its first value)."""


class MemoryCache:
    """A cache in this process only (registry=off, and tests of the engine alone)."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[Key, float]] = {}

    def load(self, scope: CacheScope) -> dict[Key, float]:
        return dict(self.entries.get(scope.key, {}))

    def store(self, scope: CacheScope, entries: dict[Key, float]) -> None:
        kept = self.entries.setdefault(scope.key, {})
        for k, v in entries.items():
            kept.setdefault(k, v)
