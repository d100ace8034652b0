"""Static activation scales (W8A8, FP8 with `activation: static`) from calibration.

One scale per tensor: the layer input's max |x| (after any SmoothQuant/AWQ division) in a
typical calibration window, i.e. the mean over windows of each window's max, over the
format's largest code (127 for int8, 448 for E4M3). The max over all windows would let
the rarest outlier of the whole calibration set coarsen every step; the typical window's
max keeps what each text window reaches. Measured for every algorithm, RTN included.
"""

from __future__ import annotations

import re

import torch

from ...kernels import QuantizedWeight
from ..algorithms import BlockContext, LayerTask
from ..models.families import EXPERT
from ..quant.activations import static_scale


def needs_static_scale(task: LayerTask) -> bool:
    return task.params.activation == "static"


def assign_static_scales(tasks: list[LayerTask], results: dict[str, QuantizedWeight],
                         context: BlockContext) -> list[str]:
    """Set `input_scale` on the results of static-activation tasks; notes for fallbacks.

    A layer no calibration token reached (an expert: fewer than calib.min_expert_tokens) takes
    the largest scale measured for the same projection of its layer's other experts, else of
    the block's other static layers (their inputs live at the same depth), or 1.0 if there is
    none."""
    notes, unseen, measured = [], [], {}
    for t in tasks:
        if not needs_static_scale(t):
            continue
        stats = context.stats.get(t.name)
        if t.too_few_tokens(stats):
            unseen.append(t)
            continue
        typical = context.window_absmax(t.name).amax(dim=1).mean()
        scale = static_scale(typical, t.scheme.weight_format)
        results[t.name].input_scale = scale
        measured[t.name] = scale
    for t in unseen:
        # an expert's projection reads what the same projection of its layer's other experts reads
        peers = [v for n, v in measured.items() if _any_expert(n) == _any_expert(t.name) != t.name]
        pool, where = (peers, "largest of its layer's other experts") if peers else \
            (list(measured.values()), "largest of its block")
        scale = torch.stack(pool).max().reshape(1) if pool else torch.ones(1)
        results[t.name].input_scale = scale
        notes.append(f"static activation scale: {t.name} {t.too_few_tokens(context.stats.get(t.name))}; "
                     f"input_scale={scale.item():.4g} "
                     f"({where if pool else 'default'}); set activation=dynamic for it "
                     f"if its inputs may be larger")
    return notes


def _any_expert(name: str) -> str:
    """experts.3.down_proj -> experts.*.down_proj (names of unfused experts, families.EXPERT)."""
    return re.sub(r"\.experts\.\d+\.", f".experts.{EXPERT}.", name)
