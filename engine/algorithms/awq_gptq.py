"""AWQ scales, then GPTQ rounding.

AWQ's transform searches per-channel input scales and folds them into the producing norm or
linear (awq.py); GPTQ then rounds the scaled weights with error compensation through the
Hessian of the scaled inputs (gptq.py), searching each group's clipping when it fixes the
group's scale. The two fix different errors: AWQ which input channels get fine steps, GPTQ
how each rounding error is spread over the columns not yet rounded.
"""

from __future__ import annotations

from .awq import AWQ
from .base import Arg, is_bool
from .gptq import GPTQ


class AWQGPTQ(AWQ, GPTQ):
    name = "awq_gptq"
    needs_calibration = True
    stats = AWQ.stats | GPTQ.stats
    # AWQ's scale search reads the float block's outputs: no one-pass quantization (true_sequential)
    ARGS = {"grid": AWQ.ARGS["grid"], "duo_scaling": AWQ.ARGS["duo_scaling"],
            **{k: v for k, v in GPTQ.ARGS.items() if k != "true_sequential"},
            "clip": Arg(True, is_bool, "true or false (search each group's clipping when its scale is fixed)")}

    def in_pass_blocker(self):
        return "AWQ's scale search reads the float block's outputs"

    quantize = GPTQ.quantize  # AWQ's transform (InputScaling) runs first; its own rounding is replaced
