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

    tunings: dict[str, tuple[int, float]] = {}
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
        tuning = algo.scale_tuning(policy.args_dict())
        if tuning is not None:
            tunings[rule.name] = tuning
    if len(set(tunings.values())) > 1:
        seen = "; ".join(f"{name}: tune_epochs={e}, tune_lr={lr}" for name, (e, lr) in tunings.items())
        raise RecipeError(f"recipe.rules: the rules ask for different scale tunings ({seen}); the scales are tuned "
                          f"in one pass over the whole model: set tune_epochs and tune_lr once, in recipe.base.args")


def scale_tuning_of(layers: list) -> tuple[list[str], int, float] | None:
    """(layer names, epochs, lr) of the end-to-end scale tuning that planned `layers` ask for
    (GPTQ's tune_epochs > 0; one setting for all, check_recipe_algorithms); None: none."""
    asks = {lp.name: ALGORITHMS[lp.algorithm].scale_tuning(dict(lp.args)) for lp in layers}
    asks = {name: ask for name, ask in asks.items() if ask is not None}
    if not asks:
        return None
    epochs, lr = max(asks.values())
    return list(asks), epochs, lr


__all__ = ["ALGORITHMS", "Algorithm", "BlockContext", "LayerTask", "algorithm_names",
           "check_recipe_algorithms", "get_algorithm", "scale_tuning_of"]
