"""Settings -> ModelInfo -> Plan, without loading weights."""

from __future__ import annotations

from pathlib import Path

import torch

from .config.settings import Settings
from .models.describe import ModelInfo, describe
from .models.loading import build_skeleton, load_config, resolve_dtype
from .plan import Plan, resolve_plan
from .plan.roofline import roofline_report


def local_device(settings: Settings) -> torch.device:
    if settings.run.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if settings.run.device.startswith("cuda") and not torch.cuda.is_available():
        from .errors import ConfigError

        raise ConfigError("run.device: cuda requested but this machine has no CUDA device; set run.device=cpu")
    return torch.device(settings.run.device)


def model_info(settings: Settings) -> ModelInfo:
    config = load_config(settings.model, Path(settings.paths.cache))
    skeleton = build_skeleton(config, settings.model.trust_remote_code)
    return describe(skeleton, config, settings.model.name)


def build_plan(settings: Settings, device: torch.device | None = None) -> tuple[Plan, ModelInfo]:
    """The plan, with how this machine would run it (in memory or streamed, and its peak memory)."""
    from .streaming.decide import execution_plan

    info = model_info(settings)
    device = device or local_device(settings)
    dtype = resolve_dtype(settings.model.dtype, device)
    plan = resolve_plan(settings.recipe, info, settings.target, device, dtype)
    # predicted for the workload `qrecipe run` times (eval.speed), so the two can be set side by side
    plan.roofline = roofline_report(plan, info, settings.target, settings.eval.speed)
    plan.execution = execution_plan(settings, plan, info, device, dtype)
    return plan, info
