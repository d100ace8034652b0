"""The algorithm contract: observe calibration data, transform, quantize.

An Algorithm instance is created per decoder block with the tasks (layers) of that block
it owns and the block's `BlockContext`. The calibration driver then
  1. gathers the input statistics each algorithm names in `stats` (shared between layers
     that read one input, see engine/calibration/stats.py) while the float block runs on
     the calibration batch; `attach()`/`detach()` wrap that run for any extra observers;
  2. calls `transform()` on every algorithm of the block (AWQ and SmoothQuant rescale
     weights and fold the inverse into the producing norm or linear), before any layer of
     the block is quantized;
  3. calls `quantize()` and swaps the results in.
RTN needs no data and only implements `quantize`.

Arguments come from the rule's `args`; `ARGS` declares each one with its default and a
check, so a typo or a bad value fails before the model loads (`check_args`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from ...kernels import QuantizedWeight, QuantParams, WeightFormat
from ..errors import RecipeError
from ..models.families import expand_pairings, pairings
from ..modules import UnfusedExperts
from ..quant.grid import WeightGrid
from ..schemes import Scheme


@dataclass
class LayerTask:
    name: str
    module: nn.Linear  # for an expert: one projection of one expert (engine/modules/experts.py)
    scheme: Scheme
    params: QuantParams
    args: dict[str, Any] = field(default_factory=dict)
    # Fewer calibration tokens than this and the algorithm quantizes the layer with RTN: 1 for
    # linears (no tokens at all), calib.min_expert_tokens for experts (a rarely routed expert).
    min_tokens: int = 1
    tokens_seen: int | None = None  # calibration tokens its input statistics saw (set by the driver)

    @property
    def grid(self) -> WeightGrid:
        return WeightGrid.of(self.scheme, self.params)

    def too_few_tokens(self, stats) -> str | None:
        """Why its statistics are too thin to calibrate on (for the notes), or None."""
        tokens = 0 if stats is None else stats.tokens
        if tokens >= self.min_tokens:
            return None
        if tokens == 0:
            return "saw no calibration tokens"
        return f"saw {tokens} calibration tokens (fewer than calib.min_expert_tokens={self.min_tokens})"


@dataclass
class BlockContext:
    """What the driver knows about the block being calibrated."""

    prefix: str  # the block's module name, e.g. "model.layers.3" ("" for layers outside blocks)
    block: nn.Module
    model_type: str
    stats: dict = field(default_factory=dict)  # layer name -> InputStats
    # layer name -> per-channel divisor a transform applied to that layer's input (its
    # static activation scale is measured on the divided input)
    input_divisors: dict[str, torch.Tensor] = field(default_factory=dict)

    def pairings(self):
        """(pairings of this block, groups of layers that read one tensor), with each of its
        unfused experts modules expanded per expert (families.expand_pairings)."""
        experts_in = {name: len(m) for name, m in self.block.named_modules() if isinstance(m, UnfusedExperts)}
        return expand_pairings(pairings(self.model_type), experts_in)

    def relative(self, name: str) -> str:
        return name[len(self.prefix) + 1:] if self.prefix else name

    def absolute(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def hessian(self, name: str) -> torch.Tensor:
        """E[x x^T] of the layer's input as it is now, after any division by a transform."""
        h = self.stats[name].hessian
        d = self.input_divisors.get(name)
        return h if d is None else h / torch.outer(d, d)

    def window_absmax(self, name: str) -> torch.Tensor:
        """Per-channel max |x| of each calibration window [W, K] of the layer's input as it is now."""
        m = self.stats[name].window_absmax
        d = self.input_divisors.get(name)
        return m if d is None else m / d


@dataclass(frozen=True)
class Arg:
    default: Any
    check: Callable[[Any], bool]
    expect: str  # what a valid value looks like, for the error


def number_in(lo: float, hi: float) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v <= hi


def positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def is_bool(v: Any) -> bool:
    return isinstance(v, bool)


class Algorithm(ABC):
    name: ClassVar[str]
    needs_calibration: ClassVar[bool] = False
    stats: ClassVar[frozenset[str]] = frozenset()  # input statistics it reads (stats.STAT_KINDS)
    ARGS: ClassVar[dict[str, Arg]] = {}

    def __init__(self, tasks: list[LayerTask], context: BlockContext | None = None):
        self.tasks = tasks
        self.context = context
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.notes: list[str] = []  # fallbacks taken (recorded in the run)

    @classmethod
    def check_args(cls, args: dict[str, Any], where: str) -> None:
        """Raise RecipeError naming `where.KEY` for an unknown argument or a bad value."""
        for key, value in args.items():
            spec = cls.ARGS.get(key)
            if spec is None:
                known = ", ".join(cls.ARGS) or "none"
                raise RecipeError(f"{where}.{key}: {cls.name} takes no argument {key!r}; its arguments are {known}")
            if not spec.check(value):
                raise RecipeError(f"{where}.{key}: expected {spec.expect}, got {value!r}")

    @classmethod
    def applies_to(cls, fmt: WeightFormat) -> bool:
        """Whether it makes sense for layers stored in this format (a rule pairing it with a
        scheme of another format fails before any weight loads)."""
        return True

    def arg(self, task: LayerTask, key: str) -> Any:
        return task.args.get(key, self.ARGS[key].default)

    def attach(self) -> None:
        """Register observers beyond the shared input statistics (none by default)."""

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def transform(self) -> None:
        """Rescale weights before the block is quantized (AWQ, SmoothQuant)."""

    @abstractmethod
    def quantize(self) -> dict[str, QuantizedWeight]:
        """Quantized weights of every task, by layer name."""
