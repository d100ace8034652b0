"""The algorithm contract: observe calibration data, transform, quantize.

An Algorithm instance is created per decoder block with the tasks (layers) of that block
it owns and the block's `BlockContext`. The calibration driver then
  1. gathers the input statistics each algorithm names in `stats` (shared between layers
     that read one input, see engine/calibration/stats.py) while the float block runs on
     the calibration batch; `attach()`/`detach()` wrap that run for any extra observers;
  2. calls `retarget()` on every algorithm of the block (layers with `float_targets` take
     the weight that best reproduces the float model's output from the quantized model's
     inputs), then `transform()` (AWQ and SmoothQuant rescale weights and fold the inverse
     into the producing norm or linear), before any layer of the block is quantized;
  3. calls `quantize()` and swaps the results in.
An algorithm whose layers need only their own input's statistics (`in_pass_blocker` is None: GPTQ)
instead has each input group quantized by `quantize_group` as soon as that group's statistics
are complete, in the block's one forward pass (calibration/sequential.py).
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
from ..quant.gptq import float_target
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
    # the block's calibration inputs (an iterable of one call per batch of windows, the quantized
    # model's own; a streamed run reads them from disk as it iterates), for an algorithm that
    # reproduces the whole block's output (GPTQ's refine_steps); None outside the blocks
    calls: Any = None
    # the float model's outputs of this block, one per batch, when a float stream runs beside the
    # quantized one (filled while the block runs in float; see wants_float_stream)
    float_outputs: list | None = None
    precision: str = "float32"  # calib.precision of the block's forward passes (calibration/capture.py)

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

    def cross(self, name: str) -> torch.Tensor:
        """E[x x~^T] of the float model's input x against the quantized model's x~, as they are now."""
        c = self.stats[name].cross
        d = self.input_divisors.get(name)
        return c if d is None else c / torch.outer(d, d)

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


def non_negative_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def is_bool(v: Any) -> bool:
    return isinstance(v, bool)


# Shared by the algorithms that take it (AWQ, GPTQ): see Algorithm.retarget.
FLOAT_TARGETS = Arg(False, is_bool, "true (reproduce the float model's outputs from the quantized model's inputs) "
                                    "or false (each layer's own output on those inputs)")


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

    @classmethod
    def stats_for(cls, args: dict[str, Any]) -> frozenset[str]:
        """The input statistics a layer with these arguments needs (stats.STAT_KINDS)."""
        if "float_targets" in cls.ARGS and args.get("float_targets", cls.ARGS["float_targets"].default):
            return cls.stats | {"float_cross"}
        return cls.stats

    @classmethod
    def wants_float_stream(cls, args: dict[str, Any]) -> bool:
        """Whether a layer with these arguments needs the float model's own block inputs run
        beside the quantized model's (the calibration driver's second stream)."""
        return "float_cross" in cls.stats_for(args)

    @classmethod
    def scale_tuning(cls, args: dict[str, Any]) -> tuple[int, float] | None:
        """(epochs, learning rate) of the end-to-end tuning of the group scales (quant/tune.py)
        a layer with these arguments asks for, once the whole model is quantized; None: none."""
        return None

    @torch.no_grad()
    def retarget(self) -> None:
        """Layers with `float_targets`: replace the weight W by the W' that GPTQ and AWQ should
        reproduce on the quantized model's inputs x~ so the output matches the float model's W x
        (quant/gptq.py float_target). Later blocks then also correct the error earlier ones left."""
        for t in self.tasks:
            stats = self.context.stats.get(t.name)
            if "float_targets" not in self.ARGS or not self.arg(t, "float_targets") or t.too_few_tokens(stats):
                continue
            if not stats.cross_paired:
                self.notes.append(f"{self.name}: {t.name} saw other tokens in the float model than in the quantized one "
                                  f"(a routed expert); float_targets not applied to it")
                continue
            damp = self.arg(t, "damp") if "damp" in self.ARGS else 0.01
            w = t.module.weight
            w.copy_(float_target(w.float(), self.context.hessian(t.name), self.context.cross(t.name), damp)
                    .to(w.dtype))

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

    def in_pass_blocker(self) -> str | None:
        """None where each of its layers can be quantized from its own input's statistics as soon
        as they are complete, inside the block's one forward pass (calibration/sequential.py), by
        `quantize_group` (the driver then runs no second pass); otherwise why not."""
        return f"{self.name} quantizes a block's layers after its float forward"

    def quantize_group(self, names: tuple[str, ...]) -> dict[str, QuantizedWeight]:
        """Quantized weights of the tasks among `names` (one input group), by layer name."""
        raise NotImplementedError(f"{self.name} quantizes no group on its own")

    @abstractmethod
    def quantize(self) -> dict[str, QuantizedWeight]:
        """Quantized weights of every task, by layer name."""
