"""The `search` section (conf/search/default.yaml), typed and checked before any weights load."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..config.typed import build
from ..errors import ConfigError

BUDGETS = ("bits_per_weight", "weight_bytes", "max_kl", "max_ppl_increase_pct")
SENSITIVITIES = ("exact", "proxy")
PROXIES = ("fisher", "hessian")
SIZE_BUDGETS = ("bits_per_weight", "weight_bytes")


@dataclass(frozen=True)
class BudgetSpec:
    bits_per_weight: float | None = None
    weight_bytes: int | None = None
    max_kl: float | None = None
    max_ppl_increase_pct: float | None = None

    @property
    def kind(self) -> str:
        return next(k for k in BUDGETS if getattr(self, k) is not None)

    @property
    def value(self) -> float:
        return getattr(self, self.kind)

    def describe(self) -> str:
        k, v = self.kind, self.value
        return {"bits_per_weight": f"bits_per_weight <= {v:g}", "weight_bytes": f"weight_bytes <= {int(v):,}",
                "max_kl": f"predicted KL <= {v:g}",
                "max_ppl_increase_pct": f"predicted perplexity increase <= {v:g}%"}[k]

    @property
    def tag(self) -> str:
        """For file names: bpw4.5, bytes88000000, kl0.05, ppl5."""
        short = {"bits_per_weight": "bpw", "weight_bytes": "bytes", "max_kl": "kl", "max_ppl_increase_pct": "ppl"}
        return f"{short[self.kind]}{self.value:g}"

    def max_kl_value(self) -> float | None:
        """The KL bound of a quality budget. A perplexity increase p% is KL <= ln(1 + p/100):
        the mean NLL increase on text drawn from the baseline is its KL to the variant."""
        if self.kind == "max_kl":
            return self.value
        if self.kind == "max_ppl_increase_pct":
            return math.log1p(self.value / 100)
        return None


@dataclass(frozen=True)
class SearchSpec:
    budget: BudgetSpec = field(default_factory=BudgetSpec)
    candidates: tuple[str, ...] | None = None
    algorithm: str = "rtn"
    args: dict[str, Any] = field(default_factory=dict)
    sensitivity: str = "proxy"
    proxy: str = "fisher"
    samples: int = 8
    seq_len: int = 256
    batch_size: int = 4
    front_points: int = 4
    output: str | None = None
    run: bool = True


def search_spec(sections: dict[str, Any]) -> SearchSpec:
    """The typed `search` section; one sentence naming the field for anything wrong."""
    from ..algorithms import ALGORITHMS

    node = sections.get("search")
    if node is None:
        raise ConfigError("search: no search section in the config; run it as `qrecipe search` "
                          "(which composes conf/search/default.yaml)")
    spec = build(SearchSpec, node, "search")
    set_ = [k for k in BUDGETS if getattr(spec.budget, k) is not None]
    if len(set_) != 1:
        got = "none" if not set_ else " and ".join(f"search.budget.{k}" for k in set_)
        raise ConfigError(f"search.budget: set exactly one of {', '.join(BUDGETS)} (e.g. "
                          f"search.budget.bits_per_weight=4.5); got {got}")
    kind, value = set_[0], getattr(spec.budget, set_[0])
    if not value > 0 or (kind == "bits_per_weight" and value > 32):
        most = " and at most 32" if kind == "bits_per_weight" else ""
        raise ConfigError(f"search.budget.{kind}: must be positive{most}, got {value}")
    if spec.sensitivity not in SENSITIVITIES:
        raise ConfigError(f"search.sensitivity: expected exact or proxy, got {spec.sensitivity!r}")
    if spec.proxy not in PROXIES:
        raise ConfigError(f"search.proxy: expected fisher or hessian, got {spec.proxy!r}")
    if spec.sensitivity == "proxy" and spec.proxy == "hessian" and kind not in SIZE_BUDGETS:
        raise ConfigError(f"search.budget.{kind}: the hessian proxy is an output error, not a KL, so it cannot "
                          f"meet a quality budget; use search.proxy=fisher, search.sensitivity=exact, or a size "
                          f"budget (bits_per_weight, weight_bytes)")
    if spec.algorithm not in ALGORITHMS:
        raise ConfigError(f"search.algorithm: unknown algorithm {spec.algorithm!r}; choose one of "
                          f"{', '.join(ALGORITHMS)}")
    for name in ("samples", "seq_len", "batch_size"):
        if getattr(spec, name) <= 0:
            raise ConfigError(f"search.{name}: must be a positive integer, got {getattr(spec, name)}")
    if spec.front_points < 0:
        raise ConfigError(f"search.front_points: must be 0 or more, got {spec.front_points}")
    return spec


def with_search_group(overrides: list[str]) -> list[str]:
    """`+search=default` in front of the user's overrides (conf/search/ is composed only for a
    search), unless they chose the group themselves."""
    chosen = any(o.lstrip("+").split("=", 1)[0] == "search" for o in overrides)
    return list(overrides) if chosen else ["+search=default", *overrides]
