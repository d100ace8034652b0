"""Quantize a loaded model per its plan: each planned layer goes through its algorithm and
is swapped for a QuantLinear holding packed weights, one layer at a time so the float
weight is freed as soon as its quantized copy exists.

When any planned layer needs calibration data (AWQ, GPTQ, SmoothQuant, or static
activation scales), every planned layer goes through the block-by-block calibration
driver, RTN layers included, so each block is calibrated on the inputs the quantized
blocks before it really produce.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from .algorithms import LayerTask, get_algorithm
from .config.settings import CalibSpec
from .modules import QuantLinear, get_module, set_module
from .plan import Plan
from .schemes import SCHEMES

log = logging.getLogger(__name__)


@dataclass
class QuantReport:
    seconds: float
    layers: int
    notes: list[str] = field(default_factory=list)
    calibration_tokens: int = 0  # 0: no layer needed calibration data


def layer_task(model: nn.Module, lp) -> LayerTask:
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


def _windows(calibration: CalibSpec | torch.Tensor | None, tokenizer) -> tuple[torch.Tensor, int]:
    """(token windows, batch size); prepared windows run in batches of the default 8."""
    from .data import calibration_windows

    if isinstance(calibration, torch.Tensor):
        return calibration, CalibSpec.batch_size
    if calibration is None or tokenizer is None:
        raise ValueError("the plan has layers that need calibration: pass calibration (a CalibSpec) and tokenizer")
    return calibration_windows(tokenizer, calibration), calibration.batch_size


@torch.no_grad()
def quantize_model(model: nn.Module, plan: Plan, calibration: CalibSpec | torch.Tensor | None = None,
                   tokenizer=None, progress: bool = True) -> QuantReport:
    """Quantize the plan's layers in place. `calibration` is the calib spec (windows are
    sampled with `tokenizer`) or the token windows themselves [samples, seq_len]."""
    from .calibration import calibrate_and_quantize

    start = time.perf_counter()
    planned = plan.quantized()
    notes: list[str] = []
    tokens = 0
    if plan.calibrates:
        windows, batch_size = _windows(calibration, tokenizer)
        tokens = windows.numel()
        notes += calibrate_and_quantize(model, plan, planned, windows, batch_size, layer_task,
                                        lambda task, qw: swap_in(model, task, qw), progress=progress)
    else:
        for lp in tqdm(planned, desc="quantize", unit="layer", disable=not progress, leave=False):
            task = layer_task(model, lp)
            algo = get_algorithm(lp.algorithm)([task])
            swap_in(model, task, algo.quantize()[lp.name])
            notes += algo.notes
    untie_quantized_head(model, plan)
    return QuantReport(seconds=time.perf_counter() - start, layers=len(planned), notes=notes,
                       calibration_tokens=tokens)


def prepare_model(model: nn.Module) -> dict[str, str]:
    """Bind every QuantLinear to its backend on its current device; name -> backend."""
    return {name: m.prepare().name for name, m in model.named_modules() if isinstance(m, QuantLinear)}
