"""Quantized modules and the swap that puts them into a model per the plan."""

from .quant_linear import QuantLinear
from .swap import get_module, set_module

__all__ = ["QuantLinear", "get_module", "set_module"]
