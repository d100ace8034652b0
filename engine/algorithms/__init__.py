"""Quantization algorithms, registered explicitly (one file each).

An algorithm turns the layers of one decoder block that a plan assigns to it into
quantized weights. Those that need calibration attach observers to the block's layers,
see the calibration batch flow through the block, then quantize (see base.py).
"""

from __future__ import annotations

from .base import Algorithm, LayerTask
from .rtn import RTN

ALGORITHMS: dict[str, type[Algorithm]] = {cls.name: cls for cls in (RTN,)}


def algorithm_names() -> tuple[str, ...]:
    return tuple(ALGORITHMS)


def get_algorithm(name: str) -> type[Algorithm]:
    return ALGORITHMS[name]


__all__ = ["ALGORITHMS", "Algorithm", "LayerTask", "algorithm_names", "get_algorithm"]
