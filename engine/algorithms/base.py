"""The algorithm contract: prepare hooks on a block, observe calibration data, quantize.

An Algorithm instance is created per decoder block with the tasks (layers) of that block
it owns. The calibration driver calls `attach()` before running the block on calibration
inputs, `detach()` after, then `quantize()`. RTN needs no data and only implements
`quantize`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ...kernels import QuantizedWeight, QuantParams
from ..schemes import Scheme


@dataclass
class LayerTask:
    name: str
    module: nn.Linear
    scheme: Scheme
    params: QuantParams
    args: dict[str, Any] = field(default_factory=dict)


class Algorithm(ABC):
    name: ClassVar[str]
    needs_calibration: ClassVar[bool] = False

    def __init__(self, tasks: list[LayerTask], block: nn.Module | None = None):
        self.tasks = tasks
        self.block = block
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.notes: list[str] = []  # fallbacks taken (recorded in the run)

    def attach(self) -> None:
        """Register observers on the block's modules (calibrating algorithms)."""

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    @abstractmethod
    def quantize(self) -> dict[str, QuantizedWeight]:
        """Quantized weights of every task, by layer name."""
