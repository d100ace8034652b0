"""Round-to-nearest: the floor every other algorithm is measured against, and the last
step of the transforms (AWQ, SmoothQuant) once they have rescaled the weights."""

from __future__ import annotations

import torch

from ...kernels import QuantizedWeight, QuantParams
from ..schemes import Scheme
from .grid import WeightGrid


def rtn_quantize(w: torch.Tensor, scheme: Scheme, p: QuantParams) -> QuantizedWeight:
    """Codes and scales of weight w [N, K] under the scheme (no calibration)."""
    grid = WeightGrid.of(scheme, p)
    return grid.quantized(w, *grid.qparams(w))
