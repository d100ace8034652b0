"""Quantization algorithms, registered explicitly (one file each).

An algorithm turns the layers of one decoder block that a plan assigns to it into
quantized weights. Those that need calibration read input statistics gathered while the
block runs on the calibration batch, may rescale weights, then quantize (see base.py).
Static activation scales (W8A8, FP8 with `activation: static`) are not an algorithm: the
calibration driver measures them for any algorithm (engine/calibration/activation_scales.py).
"""

from __future__ import annotations

from typing import Any

from .awq import AWQ
from .awq_gptq import AWQGPTQ
from .base import Algorithm, BlockContext, LayerTask
from .gptq import GPTQ
from .rtn import RTN
from .smoothquant import SmoothQuant

ALGORITHMS: dict[str, type[Algorithm]] = {cls.name: cls for cls in (RTN, AWQ, GPTQ, AWQGPTQ, SmoothQuant)}


def algorithm_names() -> tuple[str, ...]:
    return tuple(ALGORITHMS)


def get_algorithm(name: str) -> type[Algorithm]:
    return ALGORITHMS[name]


def check_recipe_algorithms(recipe: Any) -> None:
    """Every rule's algorithm arguments and scheme, checked before any model loads."""
    from ..errors import RecipeError
    from ..schemes import SCHEMES

    for rule in recipe.rules:
        policy = rule.policy
        algo = ALGORITHMS[policy.algorithm]
        where = f"recipe.rules.{rule.name}"
        scheme = SCHEMES[policy.scheme]
        if not scheme.keeps_float and not algo.applies_to(scheme.weight_format):
            fits = [name for name, a in ALGORITHMS.items() if a.applies_to(scheme.weight_format)]
            raise RecipeError(f"{where}.algorithm: {algo.name} does not apply to {scheme.name}; algorithms for "
                              f"{scheme.name}: {', '.join(fits)}")
        algo.check_args(policy.args_dict(), f"{where}.args")


__all__ = ["ALGORITHMS", "Algorithm", "BlockContext", "LayerTask", "algorithm_names",
           "check_recipe_algorithms", "get_algorithm"]
