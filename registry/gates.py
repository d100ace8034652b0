"""Quality gates: the bar a variant's recorded metrics must clear to be promoted.

Declared in the config section `gates` (conf/gates/default.yaml): thresholds at the top
level, then `models.<base model>` and `recipes.<recipe name>` entries with the same keys,
applied on top gate by gate (a recipe's entry wins over its model's, which wins over the
top level). Each gate compares one metric from metrics.json:

    max_ppl_increase_pct        ppl_delta_pct              <=
    max_kl_mean                 kl_mean                    <=
    min_top1_agreement          top1_agreement             >=
    min_task_agreement.FAMILY   task.FAMILY.greedy_match   >=
    min_decode_speedup          decode_speedup             >=
    min_prefill_speedup         prefill_speedup            >=
    max_flip_rate               lm_eval.flip_rate          <=   (lm-eval: all tasks' items pooled)
    max_task_flip_rate.TASK     lm_eval.TASK.flip_rate     <=

A gate whose metric was not measured fails: an unmeasured number cannot clear a bar. A speed
gate also fails on a speedup the run flagged noisy (its interval includes 1.0, or the
baseline's or variant's timings spread too much: engine/evaluate/spread.py): a noisy figure cannot clear a
bar either, whatever its median.

Gates judge a variant's latest successful run under one eval protocol (how it was measured;
registry/protocols.py): `protocol` (top level only) names it by hash; null means the protocol
the promoting command's own config measures under on its machine. A variant with no successful
run under it is refused, unless `any_protocol: true` (or `--any-protocol`) lets its latest run
be judged whatever it was measured under.
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
    "min_decode_speedup": (M.DECODE_SPEEDUP, ">="),
    "min_prefill_speedup": (M.PREFILL_SPEEDUP, ">="),
    "max_flip_rate": (M.LM_EVAL_FLIP_RATE, "<="),
}
_PER_KEY = ("min_task_agreement", "max_task_flip_rate")  # gates per task family / per lm-eval task
_SHARES = ("min_top1_agreement", "max_flip_rate")  # scalar gates on a share between 0 and 1
# speed gates: the run's flag that the figure is noisy, and why
_NOISE = {M.DECODE_SPEEDUP: (M.DECODE_NOISY, M.DECODE_NOISE), M.PREFILL_SPEEDUP: (M.PREFILL_NOISY, M.PREFILL_NOISE)}
_PROTOCOL_KEYS = ("protocol", "any_protocol")  # top level only
_LAYERS = ("models", "recipes")


@dataclass(frozen=True)
class Thresholds:
    """One layer of gates; None (or a family left out) means that gate is off."""

    max_ppl_increase_pct: float | None = None
    max_kl_mean: float | None = None
    min_top1_agreement: float | None = None
    min_decode_speedup: float | None = None
    min_prefill_speedup: float | None = None
    min_task_agreement: dict[str, Any] = field(default_factory=dict)
    max_flip_rate: float | None = None
    max_task_flip_rate: dict[str, Any] = field(default_factory=dict)


def _share_or_none(value: Any) -> bool:
    return value is None or (not isinstance(value, bool) and isinstance(value, (int, float)) and 0 <= value <= 1)


@dataclass(frozen=True)
class GateCheck:
    """One gate judged against one variant."""

    gate: str  # e.g. max_kl_mean, min_task_agreement.prose
    metric: str  # e.g. kl_mean, task.prose.greedy_match
    op: str  # "<=" or ">="
    threshold: float
    value: float | None  # None: not measured
    noise: str | None = None  # why the measured value is noisy (speed gates), None: it is not

    @property
    def passed(self) -> bool:
        if self.value is None or math.isnan(self.value) or self.noise is not None:
            return False
        return self.value <= self.threshold if self.op == "<=" else self.value >= self.threshold

    def describe(self) -> str:
        """e.g. 'kl_mean 0.081 > max_kl_mean 0.05' (the failing side), or '... <= ...' when it passes."""
        if self.value is None:
            return f"{self.metric} not measured ({self.gate} {self.threshold:g})"
        if self.noise is not None:
            return (f"{self.metric} {self.value:.4g} is noisy ({self.noise}), so {self.gate} {self.threshold:g} "
                    f"cannot be judged on it; time it again on a quieter machine")
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
        if not _share_or_none(value):
            raise ConfigError(f"{where}.min_task_agreement.{family}: expected a share between 0 and 1 or null, "
                              f"got {value!r}")
    for task, value in layer.max_task_flip_rate.items():
        if not _share_or_none(value):
            raise ConfigError(f"{where}.max_task_flip_rate.{task}: expected a share between 0 and 1 or null, "
                              f"got {value!r}")
    for name in _SHARES:
        if not _share_or_none(getattr(layer, name)):
            raise ConfigError(f"{where}.{name}: expected a share between 0 and 1 or null, got {getattr(layer, name)}")
    return dict(node)


@dataclass(frozen=True)
class GatePolicy:
    """The gates of every model and recipe, as configured (validated on construction)."""

    base: dict[str, Any] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    recipes: dict[str, dict[str, Any]] = field(default_factory=dict)
    protocol: str | None = None  # the eval protocol (hash) the gates were written for; None: the default
    any_protocol: bool = False  # judge the latest run whatever its protocol

    @classmethod
    def from_section(cls, node: Mapping[str, Any] | None) -> "GatePolicy":
        """From the resolved `gates` config section (None or {}: no gates at all)."""
        node = dict(node or {})
        protocol, any_protocol = node.pop("protocol", None), node.pop("any_protocol", False)
        if protocol is not None and (not isinstance(protocol, str) or not protocol.strip()):
            raise ConfigError(f"gates.protocol: expected an eval protocol hash (as `qrecipe variants show` lists) or "
                              f"null, got {protocol!r}")
        if not isinstance(any_protocol, bool):
            raise ConfigError(f"gates.any_protocol: expected true or false, got {any_protocol!r}")
        layers: dict[str, dict[str, dict[str, Any]]] = {}
        for name in _LAYERS:
            entries = node.pop(name, None) or {}
            if not isinstance(entries, Mapping):
                raise ConfigError(f"gates.{name}: expected a mapping of name -> gates, got {entries!r}")
            layers[name] = {str(k): _check_layer(v or {}, f"gates.{name}.{k}") for k, v in entries.items()}
        try:
            base = _check_layer(node, "gates")
        except ConfigError as e:  # name the per-model/per-recipe keys too in the list of allowed keys
            raise ConfigError(str(e).replace(
                "allowed keys are ", f"allowed keys are {', '.join(_LAYERS + _PROTOCOL_KEYS)}, ")) from None
        return cls(base=base, **layers, protocol=protocol, any_protocol=any_protocol)

    @classmethod
    def from_settings(cls, settings) -> "GatePolicy":
        return cls.from_section(settings.sections.get("gates"))

    def required_protocol(self, default: str | None, any_protocol: bool = False) -> str | None:
        """The eval protocol a judged run must have: None (any) with any_protocol here or in
        the config, else the configured one, else `default` (the caller's own)."""
        if any_protocol or self.any_protocol:
            return None
        return self.protocol or default

    def thresholds_for(self, model: str, recipe: str) -> Thresholds:
        merged: dict[str, Any] = {}
        per_key: dict[str, dict[str, Any]] = {k: {} for k in _PER_KEY}
        for layer in (self.base, self.models.get(model, {}), self.recipes.get(recipe, {})):
            for key in _PER_KEY:
                per_key[key].update(layer.get(key) or {})
            merged.update({k: v for k, v in layer.items() if k not in _PER_KEY})
        return Thresholds(**merged, **per_key)


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
            flag, why = _NOISE.get(metric, (None, None))
            noise = (str(metrics.get(why) or "flagged noisy") if flag and metrics.get(flag) else None)
            checks.append(GateCheck(gate, metric, op, float(threshold), _number(metrics.get(metric)), noise))
    # gates with one threshold per task family or lm-eval task: (gate, its thresholds, metric of a key, op)
    keyed = [("min_task_agreement", thresholds.min_task_agreement, lambda k: M.task_metric(k, M.GREEDY_MATCH), ">="),
             ("max_task_flip_rate", thresholds.max_task_flip_rate, lambda k: M.lm_eval_metric(k, M.FLIP_RATE), "<=")]
    for gate, by_key, metric_of, op in keyed:
        for key in sorted(by_key):
            if by_key[key] is not None:
                metric = metric_of(key)
                checks.append(GateCheck(f"{gate}.{key}", metric, op, float(by_key[key]), _number(metrics.get(metric))))
    return checks
