"""calib.precision: the dtype the calibration's forward passes run in.

float32 runs them as the model is (a float32 model in float32). bfloat16 runs them under
torch.autocast, so the linears' and attention's matmuls take bf16 inputs (float32 accumulate),
while the statistics (engine/calibration/stats.py), the solvers and the block inputs handed
from block to block stay float32. On hardware with bf16 matrix units (a CPU with AMX, any
recent GPU) those passes are most of GPTQ's time: on a 2-core AMX CPU GPTQ on SmolLM2-135M ran
2x faster at the same perplexity (bench/ALGORITHMS.md).
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16}  # name -> autocast dtype


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context a calibration forward pass on `device` runs in for `precision`."""
    dtype = PRECISIONS[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype)
