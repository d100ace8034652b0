"""AWQ: activation-aware weight quantization (Lin et al., 2023).

For each set of linears that read one input (families.PAIRINGS), search per-channel
scales s = mean|x|^r / mean|w|^(1-r) over a grid of exponents r, scale the weight columns
by s and fold 1/s into the producing norm or linear, so salient input channels get finer
weight steps. Then, optionally, search per group how far to clip the weight range. The
rule's scheme finally quantizes the scaled, clipped weights (round to nearest).

Both searches score a candidate by the exact mean squared error of the layer's output on
the calibration inputs, E||x (W - Q(W))^T||^2 = tr(dW H dW^T) with H = E[x x^T], which
costs O(N K^2) per candidate instead of a pass over every calibration token. The unscaled
weights are always a candidate, so the search never does worse than RTN on that error.
"""

from __future__ import annotations

import torch

from ..models.families import no_clip
from ..quant.clip import clip_ratios, diagonal_blocks, search_clip
from ..quant.grid import WeightGrid
from ..quant.rtn import rtn_quantize
from .base import FLOAT_TARGETS, Arg, LayerTask, is_bool, number_in, positive_int
from .scaling import InputScaling, ScaleGroup


def output_error(w: torch.Tensor, w_hat: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """E||x (w - w_hat)^T||^2 for inputs with second moment h (overwrites w_hat)."""
    d = w_hat.sub_(w)
    return (d @ h).mul_(d).sum()


def _weight_salience(w: torch.Tensor, grid: WeightGrid) -> torch.Tensor:
    """Mean over output rows of |w| relative to its group's absmax, per input channel."""
    n, k = w.shape
    gl = grid.group_len(k)
    wg = w.abs().reshape(n, k // gl, gl)
    return (wg / (wg.amax(dim=-1, keepdim=True) + 1e-6)).reshape(n, k).mean(dim=0)


class AWQ(InputScaling):
    name = "awq"
    needs_calibration = True
    stats = frozenset({"hessian", "abs_mean"})
    ARGS = {
        "grid": Arg(20, positive_int, "a positive number of exponents to try (e.g. 20)"),
        "duo_scaling": Arg(True, is_bool, "true (scale by activation and weight salience) or false"),
        "clip": Arg(True, is_bool, "true or false (search per-group weight clipping)"),
        "clip_grid": Arg(20, positive_int, "a positive number of clipping steps (e.g. 20)"),
        "max_shrink": Arg(0.5, number_in(0.0, 0.95), "a fraction in [0, 0.95] (how far clipping may shrink a range)"),
        "float_targets": FLOAT_TARGETS,
    }

    @classmethod
    def applies_to(cls, fmt):
        # scales that protect salient weight channels: for weight-only formats, whose error is
        # the weights' rounding (activations stay in float)
        return fmt.weight_only

    def search_scales(self, group: ScaleGroup, stats: list) -> torch.Tensor:
        first = group.tasks[0]
        distinct = list({id(st): st for st in stats}.values())
        if len(distinct) == 1:  # layers that read one tensor
            x_mean, shares = distinct[0].abs_mean, [1.0] * len(stats)
        else:
            # a MoE layer's experts: each saw the tokens routed to it. Salience is the mean over
            # every routed token, and each expert's output error counts by its share of them.
            total = max(sum(st.tokens for st in distinct), 1)
            x_mean = sum(st.abs_mean * st.tokens for st in distinct) / total
            shares = [st.tokens / total for st in stats]
        hessians = [st.hessian for st in stats]
        weights = [t.module.weight.float() for t in group.tasks]
        grids = [t.grid for t in group.tasks]
        w_mean = _weight_salience(torch.cat(weights), grids[0])

        def loss(s: torch.Tensor) -> float:
            total = 0.0
            for w, grid, h, share in zip(weights, grids, hessians, shares):
                if not share:
                    continue
                ws = w * s
                total += share * output_error(w, grid.fake(ws, *grid.qparams(ws)).div_(s), h).item()
            return total

        ones = torch.ones_like(x_mean)
        best_s, best = ones, loss(ones)
        n = self.arg(first, "grid")
        for i in range(n):
            r = i / n
            s = x_mean.pow(r) / (w_mean.pow(1 - r) + 1e-4) if self.arg(first, "duo_scaling") else x_mean.pow(r)
            s = s.clamp_min(1e-4)
            s = s / (s.max() * s.min()).sqrt()
            current = loss(s)
            if current < best:
                best_s, best = s, current
        return best_s

    def _search_clip(self, task: LayerTask, w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Per-group fraction [N, G] of the weight range to keep (engine/quant/clip.py)."""
        grid = task.grid
        ratios = clip_ratios(self.arg(task, "clip_grid"), self.arg(task, "max_shrink"))
        return search_clip(w, diagonal_blocks(h, grid.group_len(w.shape[1])), grid, ratios)

    def quantize(self):
        out = {}
        skip_clip = {self.context.absolute(n) for n in no_clip(self.context.model_type)}
        for task in self.tasks:
            stats = self.context.stats.get(task.name)
            w = task.module.weight.float()
            short = task.too_few_tokens(stats)
            if short:
                self.notes.append(f"awq: {task.name} {short}; quantized with rtn (no clipping search)")
                out[task.name] = rtn_quantize(w, task.scheme, task.params)
                continue
            grid = task.grid
            clip = None
            if self.arg(task, "clip") and task.name not in skip_clip:
                clip = self._search_clip(task, w, self.context.hessian(task.name))
            out[task.name] = grid.quantized(w, *grid.qparams(w, clip=clip))
        return out
