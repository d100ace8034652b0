"""Static activation scales (W8A8, FP8 with `activation: static`) from calibration.

One scale per tensor: the layer input's max |x| (after any SmoothQuant/AWQ division) in a
typical calibration window, i.e. the mean over windows of each window's max, over the
format's largest code (127 for int8, 448 for E4M3). The max over all windows would let
the rarest outlier of the whole calibration set coarsen every step; the typical window's
max keeps what each text window reaches. Measured for every algorithm, RTN included.
"""

from __future__ import annotations

import torch

from ...kernels import QuantizedWeight
from ..algorithms import BlockContext, LayerTask
from ..quant.activations import static_scale


def needs_static_scale(task: LayerTask) -> bool:
    return task.params.activation == "static"


def assign_static_scales(tasks: list[LayerTask], results: dict[str, QuantizedWeight],
                         context: BlockContext) -> list[str]:
    """Set `input_scale` on the results of static-activation tasks; notes for fallbacks.

    A layer no calibration token reached takes the largest scale of the block's other
    static layers (their inputs live at the same depth), or 1.0 if there is none."""
    notes, unseen, measured = [], [], []
    for t in tasks:
        if not needs_static_scale(t):
            continue
        stats = context.stats.get(t.name)
        if stats is None or stats.tokens == 0:
            unseen.append(t)
            continue
        typical = context.window_absmax(t.name).amax(dim=1).mean()
        scale = static_scale(typical, t.scheme.weight_format)
        results[t.name].input_scale = scale
        measured.append(scale)
    for t in unseen:
        scale = torch.stack(measured).max().reshape(1) if measured else torch.ones(1)
        results[t.name].input_scale = scale
        notes.append(f"static activation scale: {t.name} saw no calibration tokens; input_scale={scale.item():.4g} "
                     f"({'largest of its block' if measured else 'default'}); set activation=dynamic for it "
                     f"if its inputs may be larger")
    return notes
