"""Plan data: JSON-serializable, hashed, stored with every variant and checkpoint, so nothing
downstream ever re-matches patterns."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from ...kernels import QuantParams

QUANTIZED, KEPT, SKIPPED, FALLBACK = "quantized", "kept", "skipped", "fallback"

# Fields that define the variant; the backend depends on the machine that runs it, not on
# the variant, so it stays out of the hash.
_HASHED = ("name", "status", "scheme", "algorithm", "group_size", "symmetric", "activation", "args")


@dataclass
class LayerPlan:
    name: str
    module_class: str
    in_features: int
    out_features: int
    bias: bool
    status: str  # quantized | kept | skipped | fallback
    reason: str
    scheme: str  # e.g. W4A16, or the float dtype it stays in (BF16)
    rule: str | None = None
    algorithm: str | None = None
    group_size: int | None = None  # None: per-channel
    symmetric: bool | None = None
    activation: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    backend: str = "-"
    emulated: bool = False
    bytes_before: int = 0
    bytes_after: int = 0
    fused_group: str | None = None
    kind: str = "linear"  # linear | experts (a fused 3-D expert tensor) | router (always kept)
    num_experts: int = 1  # experts in the tensor; in_features / out_features are per expert
    # Whether quantizing this layer needs calibration data: its algorithm does (AWQ, GPTQ,
    # SmoothQuant) or its activations use a static calibrated scale. Decided once, at resolve
    # time; the calibration driver, the variant's identity and job submission all read it here.
    calibrates: bool = False

    @property
    def is_quantized(self) -> bool:
        return self.status in (QUANTIZED, FALLBACK)

    def quant_params(self) -> QuantParams:
        return QuantParams(group_size=self.group_size, symmetric=bool(self.symmetric),
                           activation=self.activation or "none")


def _hashed(lp: LayerPlan) -> dict[str, Any]:
    fields = {k: getattr(lp, k) for k in _HASHED}
    if lp.kind != "linear":  # plans of dense models keep the hashes they always had
        fields.update(kind=lp.kind, num_experts=lp.num_experts)
    return fields


@dataclass
class Plan:
    model_id: str
    model_type: str
    recipe: str
    target: str
    dtype: str  # serving dtype of unquantized weights (bytes_before are counted in it)
    device: str  # where this machine runs the model (backends were chosen for it)
    layers: list[LayerPlan]
    other_bytes: int  # parameters outside the units (embeddings, norms): kept in float
    capacity: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    roofline: dict[str, Any] = field(default_factory=dict)  # predictions on the target (plan/roofline.py)
    # How this machine will run it (engine/streaming/decide.py): in memory or streamed, why, and
    # the estimated peak memory. Like the backend, it depends on the machine, not the variant.
    execution: dict[str, Any] = field(default_factory=dict)

    @property
    def plan_hash(self) -> str:
        payload = {"model": self.model_id, "target": self.target, "dtype": self.dtype,
                   "layers": [_hashed(lp) for lp in self.layers]}
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def layer(self, name: str) -> LayerPlan:
        return next(lp for lp in self.layers if lp.name == name)

    def quantized(self) -> list[LayerPlan]:
        return [lp for lp in self.layers if lp.is_quantized]

    def float_bytes(self) -> dict[str, int]:
        """What stays in float, by what it is: embeddings and norms (parameters outside the
        plan's units), MoE routers, and layers the plan keeps or skips."""
        routers = sum(lp.bytes_after for lp in self.layers if lp.kind == "router")
        kept = sum(lp.bytes_after for lp in self.layers if lp.kind != "router" and not lp.is_quantized)
        return {"embeddings_and_norms": self.other_bytes, "routers": routers, "kept_layers": kept}
    @property
    def calibrates(self) -> bool:
        """Whether any layer needs calibration data (then the calibration settings are part of
        the variant)."""
        return any(lp.calibrates for lp in self.quantized())

    def totals(self) -> dict[str, Any]:
        before = self.other_bytes + sum(lp.bytes_before for lp in self.layers)
        after = self.other_bytes + sum(lp.bytes_after for lp in self.layers)
        counts: dict[str, int] = {}
        for lp in self.layers:
            counts[lp.status] = counts.get(lp.status, 0) + 1
        schemes: dict[str, int] = {}
        for lp in self.quantized():
            schemes[lp.scheme] = schemes.get(lp.scheme, 0) + 1
        return {"weight_bytes_before": before, "weight_bytes_after": after,
                "ratio": round(before / after, 4) if after else None,
                "layers": len(self.layers), "by_status": counts, "by_scheme": schemes,
                "emulated_layers": sum(1 for lp in self.layers if lp.emulated), "float_bytes": self.float_bytes()}

    def scheme_mix(self) -> str:
        """e.g. 'W4A16:90+W8A16:120' (tags and summaries)."""
        mix = self.totals()["by_scheme"]
        return "+".join(f"{k}:{v}" for k, v in sorted(mix.items())) or "none"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model_id, "model_type": self.model_type, "recipe": self.recipe, "target": self.target,
                "dtype": self.dtype, "device": self.device, "plan_hash": self.plan_hash,
                "layers": [asdict(lp) for lp in self.layers], "other_bytes": self.other_bytes,
                "totals": self.totals(), "capacity": self.capacity, "roofline": self.roofline,
                "notes": list(self.notes), "execution": self.execution}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=str)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Plan":
        return cls(model_id=d["model"], model_type=d.get("model_type", ""), recipe=d.get("recipe", ""),
                   target=d["target"], dtype=d["dtype"], device=d.get("device", "cpu"),
                   layers=[LayerPlan(**lp) for lp in d["layers"]], other_bytes=d.get("other_bytes", 0),
                   capacity=d.get("capacity", {}), notes=list(d.get("notes", [])), roofline=d.get("roofline", {}),
                   execution=d.get("execution", {}))
