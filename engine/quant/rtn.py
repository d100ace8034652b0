"""Round-to-nearest: the floor every other algorithm is measured against, and the last
step of the transforms (AWQ, SmoothQuant) once they have rescaled the weights."""

from __future__ import annotations

import torch

from ...kernels import QuantizedWeight, QuantParams
from ..schemes import Scheme
from .grid import WeightGrid


# Rows are rounded in slices of about this many weights (64 MiB of float32 temporaries): every
# row has its own scales, so slicing changes no bit, and a 128k-vocabulary head (525M weights)
# needs a slice's temporaries instead of 2 GB of them several times over.
SLICE_WEIGHTS = 1 << 24


def rtn_quantize(w: torch.Tensor, scheme: Scheme, p: QuantParams) -> QuantizedWeight:
    """Codes and scales of weight w [N, K] under the scheme (no calibration)."""
    grid = WeightGrid.of(scheme, p)
    rows = max(1, SLICE_WEIGHTS // max(1, w.shape[1]))
    if w.shape[0] <= rows:
        return grid.quantized(w, *grid.qparams(w))
    parts = [grid.quantized(piece, *grid.qparams(piece)) for piece in w.split(rows)]
    zeros = [q.zero for q in parts]
    return QuantizedWeight(q=torch.cat([q.q for q in parts]), scale=torch.cat([q.scale for q in parts]),
                           zero=None if zeros[0] is None else torch.cat(zeros))
