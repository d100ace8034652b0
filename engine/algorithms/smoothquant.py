"""SmoothQuant (Xiao et al., 2023): migrate activation outliers into the weights.

For each set of linears that read one input (families.PAIRINGS), per input channel
s = max|x|^alpha / max|w|^(1 - alpha) (max|w| over all the set's weights); the input is
divided by s (folded into the producing norm or linear) and the weight columns multiplied
by it. Activations become flatter and easier to quantize per tensor, weights a little
harder. The rule's scheme then quantizes the weights (round to nearest); with static
activations the driver measures the input scale on the smoothed input.

`alpha` is one strength, or a list of them: then each pairing takes the strength (or no
smoothing at all) whose quantized layers best reproduce the float outputs on a sample of
calibration tokens, with activations quantized as the scheme will (per tensor with the
calibrated static scale, or per token).
"""

from __future__ import annotations

import torch

from ..quant.activations import fake_quantize_activations
from ..quant.rtn import rtn_quantize
from .base import Arg, number_in
from .scaling import InputScaling, ScaleGroup

_FLOOR = 1e-5  # keeps s finite and positive for channels that never fire or weights that are zero


def _alpha(v) -> bool:
    check = number_in(0.0, 1.0)
    return check(v) or isinstance(v, (list, tuple)) and len(v) > 0 and all(map(check, v))


class SmoothQuant(InputScaling):
    name = "smoothquant"
    needs_calibration = True
    stats = frozenset({"absmax", "sample"})
    ARGS = {"alpha": Arg(0.5, _alpha, "a migration strength in [0, 1] (e.g. 0.5) or a list of them to search")}

    @classmethod
    def applies_to(cls, fmt):
        # moves activation outliers into the weights: for formats that quantize activations
        return not fmt.weight_only

    def search_scales(self, group: ScaleGroup, stats: list) -> torch.Tensor:
        alpha = self.arg(group.tasks[0], "alpha")
        # a MoE layer's experts each saw their routed tokens: the input's max is over all of them
        x_max = torch.stack([st.absmax for st in stats]).amax(dim=0).clamp_min(_FLOOR)
        weights = [t.module.weight.float() for t in group.tasks]
        w_max = torch.cat(weights).abs().amax(dim=0).clamp_min(_FLOOR)

        def scales(a: float) -> torch.Tensor:
            return (x_max.pow(a) / w_max.pow(1 - a)).clamp_min(_FLOOR)

        if not isinstance(alpha, (list, tuple)):
            return scales(alpha)
        samples = [st.sample for st in stats]  # each layer on its own inputs
        reference = [x @ w.T for x, w in zip(samples, weights)]

        def error(s: torch.Tensor) -> float:
            total = 0.0
            for t, w, y, x, st in zip(group.tasks, weights, reference, samples, stats):
                static = None
                if t.params.activation == "static":  # the scale the driver will measure, after smoothing
                    static = (st.window_absmax / s).amax(dim=1).mean()
                xq = fake_quantize_activations(x / s, t.scheme.weight_format, static)
                wq = t.grid.fake(w * s, *t.grid.qparams(w * s))
                total += (y - xq @ wq.T).pow(2).sum().item()
            return total

        candidates = [torch.ones_like(x_max)] + [scales(a) for a in alpha]
        errors = [error(s) for s in candidates]
        return candidates[min(range(len(errors)), key=errors.__getitem__)]

    def quantize(self):
        return {t.name: rtn_quantize(t.module.weight.float(), t.scheme, t.params) for t in self.tasks}
