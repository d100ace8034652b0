"""Backends run a QuantLinear's forward. Each answers whether it supports a (format,
parameters, shape, device) and may re-lay out the packed weights when a module is
prepared for inference. The first backend in BACKENDS that supports a layer gets it; the
plan shows which, and `emulated` marks numerics computed without the production kernel.
"""

from .base import EMULATED, FALLBACK, KERNEL, Backend
from .registry import BACKENDS, select_backend

__all__ = ["BACKENDS", "EMULATED", "FALLBACK", "KERNEL", "Backend", "select_backend"]
