"""Weight/activation formats: one folder per format, each with its packing code, a torch
reference of its numerics and (issue 4) its Triton kernel.

This package imports nothing from the rest of qrecipe, so `bench/kernels.py` can run on a
machine that has only torch and triton. Formats are registered explicitly below.
"""

from .format import QuantParams, QuantizedWeight, WeightFormat
from .fp8 import FORMAT as FP8
from .w4a16 import FORMAT as W4A16
from .w8a8 import FORMAT as W8A8
from .w8a16 import FORMAT as W8A16

FORMATS: dict[str, WeightFormat] = {f.name: f for f in (W4A16, W8A16, W8A8, FP8)}


def get_format(name: str) -> WeightFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise KeyError(f"unknown weight format {name!r}; known: {', '.join(sorted(FORMATS))}") from None


__all__ = ["FORMATS", "QuantParams", "QuantizedWeight", "WeightFormat", "get_format"]
