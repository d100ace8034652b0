"""Quality gates: the bar a variant's recorded metrics must clear to be promoted.

Declared in the config section `gates` (conf/gates/default.yaml): thresholds at the top
level, then `models.<base model>` and `recipes.<recipe name>` entries with the same keys,
applied on top gate by gate (a recipe's entry wins over its model's, which wins over the
top level). Each gate compares one metric from metrics.json:

    max_ppl_increase_pct        ppl_delta_pct              <=
    max_kl_mean                 kl_mean                    <=
    min_top1_agreement          top1_agreement             >=
    min_task_agreement.FAMILY   task.FAMILY.greedy_match   >=

A gate whose metric was not measured fails: an unmeasured number cannot clear a bar.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from qrecipe.engine import metric_names as M
from qrecipe.engine.errors import ConfigError

# gate -> (metric, comparison)
_SCALAR_GATES = {
    "max_ppl_increase_pct": (M.PPL_DELTA_PCT, "<="),
    "max_kl_mean": (M.KL_MEAN, "<="),
    "min_top1_agreement": (M.TOP1_AGREEMENT, ">="),
}
_LAYERS = ("models", "recipes")


@dataclass(frozen=True)
class Thresholds:
    """One layer of gates; None (or a family left out) means that gate is off."""

    max_ppl_increase_pct: float | None = None
    max_kl_mean: float | None = None
    min_top1_agreement: float | None = None
    min_task_agreement: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GateCheck:
    """One gate judged against one variant."""

    gate: str  # e.g. max_kl_mean, min_task_agreement.prose
    metric: str  # e.g. kl_mean, task.prose.greedy_match
    op: str  # "<=" or ">="
    threshold: float
    value: float | None  # None: not measured

    @property
    def passed(self) -> bool:
        if self.value is None or math.isnan(self.value):
            return False
        return self.value <= self.threshold if self.op == "<=" else self.value >= self.threshold

    def describe(self) -> str:
        """e.g. 'kl_mean 0.081 > max_kl_mean 0.05' (the failing side), or '... <= ...' when it passes."""
        if self.value is None:
            return f"{self.metric} not measured ({self.gate} {self.threshold:g})"
        op = self.op if self.passed else {"<=": ">", ">=": "<"}[self.op]
        return f"{self.metric} {self.value:.4g} {op} {self.gate} {self.threshold:g}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def _check_layer(node: Any, where: str) -> dict[str, Any]:
    """A validated layer as a plain dict holding only the keys it sets."""
    # Imported here: the engine's config package loads torch, and judging gates (promote(),
    # which worker processes and the job service call) needs none of it.
    from qrecipe.engine.config.settings import TASK_FAMILIES
    from qrecipe.engine.config.typed import build

    layer = build(Thresholds, node, where)
    for name in _SCALAR_GATES:
        value = getattr(layer, name)
        if value is not None and not math.isfinite(value):
            raise ConfigError(f"{where}.{name}: must be a finite number or null, got {value}")
    for family, value in layer.min_task_agreement.items():
        if family not in TASK_FAMILIES:
            raise ConfigError(f"{where}.min_task_agreement.{family}: unknown task family; "
                              f"choose from {', '.join(TASK_FAMILIES)}")
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not 0 <= value <= 1):
            raise ConfigError(f"{where}.min_task_agreement.{family}: expected a share between 0 and 1 or null, "
                              f"got {value!r}")
    if layer.min_top1_agreement is not None and not 0 <= layer.min_top1_agreement <= 1:
        raise ConfigError(f"{where}.min_top1_agreement: expected a share between 0 and 1 or null, "
                          f"got {layer.min_top1_agreement}")
    return dict(node)


@dataclass(frozen=True)
class GatePolicy:
    """The gates of every model and recipe, as configured (validated on construction)."""

    base: dict[str, Any] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    recipes: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_section(cls, node: Mapping[str, Any] | None) -> "GatePolicy":
        """From the resolved `gates` config section (None or {}: no gates at all)."""
        node = dict(node or {})
        layers: dict[str, dict[str, dict[str, Any]]] = {}
        for name in _LAYERS:
            entries = node.pop(name, None) or {}
            if not isinstance(entries, Mapping):
                raise ConfigError(f"gates.{name}: expected a mapping of name -> gates, got {entries!r}")
            layers[name] = {str(k): _check_layer(v or {}, f"gates.{name}.{k}") for k, v in entries.items()}
        try:
            base = _check_layer(node, "gates")
        except ConfigError as e:  # name the per-model/per-recipe keys too in the list of allowed keys
            raise ConfigError(str(e).replace("allowed keys are ", f"allowed keys are {', '.join(_LAYERS)}, ")) from None
        return cls(base=base, **layers)

    @classmethod
    def from_settings(cls, settings) -> "GatePolicy":
        return cls.from_section(settings.sections.get("gates"))

    def thresholds_for(self, model: str, recipe: str) -> Thresholds:
        merged: dict[str, Any] = {}
        tasks: dict[str, Any] = {}
        for layer in (self.base, self.models.get(model, {}), self.recipes.get(recipe, {})):
            tasks.update(layer.get("min_task_agreement") or {})
            merged.update({k: v for k, v in layer.items() if k != "min_task_agreement"})
        return Thresholds(**merged, min_task_agreement=tasks)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def check_gates(thresholds: Thresholds, metrics: Mapping[str, Any]) -> list[GateCheck]:
    """Every configured gate judged against metrics (in a fixed order: scalars, then families)."""
    checks = []
    for gate, (metric, op) in _SCALAR_GATES.items():
        threshold = getattr(thresholds, gate)
        if threshold is not None:
            checks.append(GateCheck(gate, metric, op, float(threshold), _number(metrics.get(metric))))
    for family in sorted(thresholds.min_task_agreement):
        threshold = thresholds.min_task_agreement[family]
        if threshold is not None:
            metric = M.task_metric(family, M.GREEDY_MATCH)
            checks.append(GateCheck(f"min_task_agreement.{family}", metric, ">=", float(threshold),
                                    _number(metrics.get(metric))))
    return checks
