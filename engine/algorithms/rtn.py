"""RTN: round each weight to the nearest point of its scheme's grid. No calibration."""

from __future__ import annotations

from ..quant.rtn import rtn_quantize
from .base import Algorithm


class RTN(Algorithm):
    name = "rtn"

    def quantize(self):
        return {t.name: rtn_quantize(t.module.weight.data, t.scheme, t.params) for t in self.tasks}
