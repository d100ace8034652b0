"""GPTQ: second-order error compensation from the calibration inputs' Hessian.

Layers that read one input (q/k/v, gate/up) share one Hessian; GPTQ treats weight rows
independently given the Hessian, so such layers with the same grid and arguments are
solved as one stacked matrix (one factorization, one column loop).

Fallbacks, recorded in the run's notes: a layer that saw no calibration tokens (an expert:
fewer than calib.min_expert_tokens) is quantized with RTN; a Hessian that stays singular after dampening is retried with ten
and a hundred times the dampening, then the layer is quantized with RTN.
"""

from __future__ import annotations

import torch

from ..quant.clip import clip_ratios
from ..quant.gptq import SingularHessian, gptq_quantize
from ..quant.rtn import rtn_quantize
from .base import FLOAT_TARGETS, Algorithm, Arg, is_bool, number_in, positive_int

RETRY_DAMP_FACTORS = (1, 10, 100)


class GPTQ(Algorithm):
    name = "gptq"
    needs_calibration = True
    stats = frozenset({"hessian"})
    ARGS = {
        "damp": Arg(0.01, number_in(0.0, 1.0), "a fraction in [0, 1] of the mean Hessian diagonal (e.g. 0.01)"),
        "block_size": Arg(128, positive_int, "a positive number of columns per lazy update (e.g. 128)"),
        "act_order": Arg(True, is_bool, "true (visit columns by decreasing activation energy) or false"),
        "clip": Arg(False, is_bool, "true or false (search each group's clipping when its scale is fixed)"),
        "clip_grid": Arg(20, positive_int, "a positive number of clipping steps (e.g. 20)"),
        "max_shrink": Arg(0.5, number_in(0.0, 0.95), "a fraction in [0, 0.95] (how far clipping may shrink a range)"),
        "float_targets": FLOAT_TARGETS,
    }

    def _batches(self):
        """Tasks grouped by (shared input, grid, arguments): each group is solved at once."""
        batches: dict[tuple, list] = {}
        for t in self.tasks:
            stats = self.context.stats.get(t.name)
            key = (id(stats), t.grid, t.module.in_features, tuple(sorted(t.args.items())),
                   id(self.context.input_divisors.get(t.name)))
            batches.setdefault(key, []).append(t)
        return list(batches.values())

    def quantize(self):
        out = {}
        for tasks in self._batches():
            first = tasks[0]
            names = "+".join(t.name for t in tasks)
            stats = self.context.stats.get(first.name)
            short = first.too_few_tokens(stats)
            if short:
                self.notes.append(f"gptq: {names} {short}; quantized with rtn")
                out.update({t.name: rtn_quantize(t.module.weight.float(), t.scheme, t.params) for t in tasks})
                continue
            w = torch.cat([t.module.weight.float() for t in tasks])
            h = self.context.hessian(first.name)
            damp = self.arg(first, "damp")
            clip = clip_ratios(self.arg(first, "clip_grid"), self.arg(first, "max_shrink")) \
                if self.arg(first, "clip") else None
            solved = None
            for factor in RETRY_DAMP_FACTORS:
                try:
                    solved = gptq_quantize(w, h, first.grid, damp * factor if damp else 0.0,
                                           self.arg(first, "block_size"), self.arg(first, "act_order"), clip)
                except SingularHessian:
                    if not damp:
                        break  # no dampening to raise: a zero damp asks for the exact Hessian
                    continue
                if factor != 1:
                    self.notes.append(f"gptq: {names} needed damp {damp * factor:g} (x{factor}) for a "
                                      f"positive definite Hessian")
                break
            if solved is None:
                self.notes.append(f"gptq: {names} has a singular Hessian (damp {damp:g}, "
                                  f"{stats.tokens} tokens); quantized with rtn")
                out.update({t.name: rtn_quantize(t.module.weight.float(), t.scheme, t.params) for t in tasks})
                continue
            w_q, scale, zero = solved
            row = 0
            for t in tasks:
                rows = slice(row, row + t.module.out_features)
                out[t.name] = first.grid.quantized(w_q[rows], scale[rows], zero[rows])
                row = rows.stop
        return out

