"""Quantize a loaded model per its plan: each planned layer goes through its algorithm and
is swapped for a QuantLinear holding packed weights, one layer at a time so the float
weight is freed as soon as its quantized copy exists."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from .algorithms import LayerTask, get_algorithm
from .modules import QuantLinear, get_module, set_module
from .plan import Plan
from .schemes import SCHEMES

log = logging.getLogger(__name__)


@dataclass
class QuantReport:
    seconds: float
    layers: int
    notes: list[str] = field(default_factory=list)


def _task(model: nn.Module, lp) -> LayerTask:
    module = get_module(model, lp.name)
    if not isinstance(module, nn.Linear):
        raise TypeError(f"plan layer {lp.name} is a {type(module).__name__} in the loaded model, not nn.Linear")
    return LayerTask(lp.name, module, SCHEMES[lp.scheme], lp.quant_params(), dict(lp.args))


def swap_in(model: nn.Module, task: LayerTask, qw) -> QuantLinear:
    q = QuantLinear.from_quantized(task.module, task.scheme.name, task.params, qw)
    set_module(model, task.name, q)
    return q


def untie_quantized_head(model: nn.Module, plan: Plan) -> None:
    """A quantized lm_head no longer shares the embedding: say so in the config, so loading
    the checkpoint does not tie them back."""
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(out, QuantLinear):
        model.config.tie_word_embeddings = False
        if hasattr(model.config, "get_text_config"):
            model.config.get_text_config().tie_word_embeddings = False


@torch.no_grad()
def quantize_model(model: nn.Module, plan: Plan, calibration=None, progress: bool = True) -> QuantReport:
    start = time.perf_counter()
    planned = plan.quantized()
    notes: list[str] = []
    calibrated = [lp for lp in planned if get_algorithm(lp.algorithm).needs_calibration]
    if calibrated:
        from .calibration import calibrate_and_quantize  # block-by-block driver

        notes += calibrate_and_quantize(model, plan, calibrated, calibration, progress=progress)
    for lp in tqdm([lp for lp in planned if not get_algorithm(lp.algorithm).needs_calibration],
                   desc="quantize", unit="layer", disable=not progress, leave=False):
        task = _task(model, lp)
        algo = get_algorithm(lp.algorithm)([task])
        swap_in(model, task, algo.quantize()[lp.name])
        notes += algo.notes
    untie_quantized_head(model, plan)
    return QuantReport(seconds=time.perf_counter() - start, layers=len(planned), notes=notes)


def prepare_model(model: nn.Module) -> dict[str, str]:
    """Bind every QuantLinear to its backend on its current device; name -> backend."""
    return {name: m.prepare().name for name, m in model.named_modules() if isinstance(m, QuantLinear)}
