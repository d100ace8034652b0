"""Quantized modules and the swap that puts them into a model per the plan."""

from .experts import UnfusedExperts, route
from .quant_experts import ExpertView, PackedExperts, QuantExperts, concat_rows
from .quant_linear import QuantLinear
from .swap import get_module, set_module

__all__ = ["ExpertView", "PackedExperts", "QuantExperts", "QuantLinear", "UnfusedExperts", "concat_rows",
           "get_module", "route", "set_module"]
