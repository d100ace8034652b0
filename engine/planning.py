"""Settings -> ModelInfo -> Plan, without loading weights."""

from __future__ import annotations

from pathlib import Path

import torch

from .config.settings import Settings
from .models.describe import ModelInfo, describe
from .models.loading import build_skeleton, load_config, resolve_dtype
from .models.structure_cache import cached_model_info
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
    """The model's structure, from the structure cache when this config was described before
    (engine/models/structure_cache.py), else read off its skeleton on the meta device."""
    cache = Path(settings.paths.cache)

    def read_skeleton() -> ModelInfo:
        config = load_config(settings.model, cache)
        skeleton = build_skeleton(config, settings.model.trust_remote_code)
        return describe(skeleton, config, settings.model.name)

    return cached_model_info(settings.model, cache, read_skeleton)


def check_inputs(settings: Settings, plan: Plan | None, calibrates: bool | None = None) -> None:
    """Every file the run will read, checked before anything is recorded or loaded (by `qrecipe
    plan`, `qrecipe run`, `qrecipe search` and a job's submission alike): the eval texts, the task
    files, the calibration data only where the plan calibrates (an RTN recipe reads none;
    calibrates=True: a search, which always reads its calibration slice, has no plan yet),
    lm-eval's tasks and local files where eval.lm_eval is on; and, for a run that streams, no
    speed timing that needs its (unloaded) baseline."""
    from .data import check_data
    from .evaluate.lm_eval_tasks import check_lm_eval
    from .evaluate.speed import streamed_timing_note
    from .evaluate.tasks import check_task_data
    from .streaming.decide import STREAMED

    if plan is not None and plan.execution.get("mode") == STREAMED:
        streamed_timing_note(settings.eval.speed, plan.execution["reason"])

    for name, data in settings.eval.all_texts().items():
        check_data(data, settings.eval.text_field(name))
    check_task_data(settings.eval.tasks)
    check_lm_eval(settings.eval.lm_eval)
    if plan.calibrates if calibrates is None else calibrates:
        check_data(settings.calib.data, "calib.data")


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
