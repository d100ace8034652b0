"""SmoothQuant (Xiao et al., 2023): migrate activation outliers into the weights.

For each set of linears that read one input (families.PAIRINGS), per input channel
s = max|x|^alpha / max|w|^(1 - alpha) (max|w| over all the set's weights); the input is
divided by s (folded into the producing norm or linear) and the weight columns multiplied
by it. Activations become flatter and easier to quantize per tensor, weights a little
harder. The rule's scheme then quantizes the weights (round to nearest); with static
activations the driver measures the input scale on the smoothed input.
"""

from __future__ import annotations

import torch

from ..quant.rtn import rtn_quantize
from .base import Arg, number_in
from .scaling import InputScaling, ScaleGroup

_FLOOR = 1e-5  # keeps s finite and positive for channels that never fire or weights that are zero


class SmoothQuant(InputScaling):
    name = "smoothquant"
    needs_calibration = True
    stats = frozenset({"absmax"})
    FORMATS = ("w8a8", "fp8")
    ARGS = {"alpha": Arg(0.5, number_in(0.0, 1.0), "a migration strength in [0, 1] (e.g. 0.5)")}

    def search_scales(self, group: ScaleGroup, stats) -> torch.Tensor:
        alpha = self.arg(group.tasks[0], "alpha")
        x_max = stats.absmax.clamp_min(_FLOOR)
        w_max = torch.cat([t.module.weight.float() for t in group.tasks]).abs().amax(dim=0).clamp_min(_FLOOR)
        return (x_max.pow(alpha) / w_max.pow(1 - alpha)).clamp_min(_FLOOR)

    def quantize(self):
        return {t.name: rtn_quantize(t.module.weight.float(), t.scheme, t.params) for t in self.tasks}
