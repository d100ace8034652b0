"""Calibration: walk the model block by block, gather input statistics, let the
algorithms quantize each block (see driver.py)."""

from .driver import calibrate_and_quantize

__all__ = ["calibrate_and_quantize"]
