"""One recipe run: plan, load, measure the baseline, quantize, measure the variant against it,
write the variant folder. The run returns its result and tells its caller what it is doing
through typed stage events (engine/events.py); it records nothing itself: a caller that keeps
records passes a Recorder (engine/recording.py), e.g. the registry's (registry/recorder.py).

The output folder is staged under a hidden name and renamed into place only when every
file is written, so a failed run leaves nothing half-written behind; the recorder is then
told the run failed.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf

from . import metric_names as M
from .checkpoint import save_checkpoint
from .config import load_settings
from .config.settings import Settings
from .data import check_data
from .evaluate import suite
from .evaluate.layer_error import layer_errors, summarize
from .evaluate.memory import peak_method, weight_bytes
from .evaluate.tasks import check_task_data
from .events import OnEvent, RunEvent, Stage
from .models.loading import load_model, resolve_dtype, resolve_source
from .plan import Plan
from .plan.render import render_plan
from .tables import human_bytes
from .planning import build_plan, local_device
from .quantize import prepare_model, quantize_model
from .recording import BaselineRecord, NullRecorder, Recorder, RunStart

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    output_dir: Path
    plan: Plan
    metrics: dict[str, Any]
    settings: Settings
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"output_dir": str(self.output_dir), "recipe": self.plan.recipe, "model": self.plan.model_id,
                "target": self.plan.target, "plan_hash": self.plan.plan_hash, "metrics": self.metrics, **self.extra}

    def human(self) -> str:
        m, x = self.metrics, self.extra
        lines = [
            f"variant {x.get('variant_id') or self.plan.recipe} ({self.plan.recipe} of {self.plan.model_id} for "
            f"{self.plan.target}, {self.plan.scheme_mix()})",
            f"  perplexity  {m[M.PPL]:.4f} vs baseline {m[M.PPL_BASELINE]:.4f} ({m[M.PPL_DELTA_PCT]:+.2f}%) "
            f"on {m[M.EVAL_TOKENS]:,} tokens of {m[M.EVAL_DATA]}",
            f"  divergence  KL {m[M.KL_MEAN]:.4f} mean, {m[M.KL_P99]:.4f} p99; top-1 agreement "
            f"{100 * m[M.TOP1_AGREEMENT]:.1f}%",
        ]
        families = sorted({k.split(".")[1] for k in m if k.startswith("task.") and k.count(".") == 2})
        if families:
            def task(f: str) -> str:
                valid = M.task_metric(f, M.VALID_RATE)
                return (f"{f} {m[M.task_metric(f, M.GREEDY_MATCH)]:.2f} match, "
                        f"{m[M.task_metric(f, M.LOGLIK_DELTA)]:+.3f} loglik"
                        + (f", {m[valid]:.2f} valid" if valid in m else ""))
            lines.append("  tasks       " + "; ".join(task(f) for f in families))
        if M.DECODE_SPEEDUP in m:
            lines.append(f"  speed       prefill {m[M.PREFILL_TOKENS_PER_S]:,.0f} tok/s ({m[M.PREFILL_SPEEDUP]:.2f}x), "
                         f"decode {m[M.DECODE_MS_PER_TOKEN]:.1f} ms/token ({m[M.DECODE_SPEEDUP]:.2f}x) on "
                         f"{m[M.SPEED_DEVICE]}")
        lines.append(f"  weights     {human_bytes(m[M.WEIGHT_BYTES])} vs {human_bytes(m[M.WEIGHT_BYTES_BASELINE])} "
                     f"({m[M.WEIGHT_REDUCTION]:.2f}x smaller)")
        if M.PEAK_MEMORY_BYTES in m:
            lines.append(f"  peak memory {human_bytes(m[M.PEAK_MEMORY_BYTES])} vs "
                         f"{human_bytes(m[M.PEAK_MEMORY_BYTES_BASELINE])} ({m[M.PEAK_MEMORY_METHOD]})")
        lines += [f"  note        {n}" for n in x.get("notes", [])]
        lines.append(f"  written to  {self.output_dir}")
        if x.get("mlflow_run_id"):
            lines.append(f"  MLflow run  {x['mlflow_run_id']} in {x['tracking_uri']} (browse: qrecipe ui)")
        return "\n".join(lines)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Steps:
    """Progress lines stamped with the seconds since the run started (where the time goes);
    each is also passed to on_event as a RunEvent of the stage the run is in."""

    def __init__(self, on_event: OnEvent | None = None) -> None:
        self.start = time.monotonic()
        self.on_event = on_event
        self.stage = Stage.STARTED

    def __call__(self, msg: str, stage: Stage | None = None) -> None:
        """Print msg; `stage` when the run enters a new stage."""
        self.stage = stage or self.stage
        say(f"[{time.monotonic() - self.start:6.1f}s] {msg}")
        if self.on_event is not None:
            self.on_event(RunEvent(self.stage, msg))


def _output_dir(settings: Settings, plan: Plan) -> Path:
    """Where the variant folder should go (checked before any work; reserved by reserve_output)."""
    if settings.run.output_dir:
        out = Path(settings.run.output_dir)
        if out.exists():
            from .errors import ConfigError

            raise ConfigError(f"run.output_dir: {out} already exists; choose a new folder or leave it null")
        return out
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(settings.paths.root) / "runs" / f"{stamp}-{plan.recipe}-{plan.plan_hash[:8]}"


def reserve_output(out: Path, numbered: bool) -> tuple[Path, Path]:
    """(folder, its staging folder), the staging folder created here and by no one else.

    Runs started in the same second with the same recipe want the same name; creating the
    staging folder is the atomic claim, and a run that loses takes the next number. A fixed
    run.output_dir is not numbered: a concurrent writer is an error.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        candidate = out if n == 1 else out.with_name(f"{out.name}-{n}")
        staging = candidate.parent / f".{candidate.name}.partial"
        if not candidate.exists():
            try:
                staging.mkdir()
                return candidate, staging
            except FileExistsError:
                pass
        if not numbered:
            from .errors import ConfigError

            raise ConfigError(f"run.output_dir: {out} is being written by another run; choose another folder")
    raise RuntimeError(f"no free run folder name next to {out}")


def run(cfg: DictConfig, recorder: Recorder | None = None, progress: bool = True,
        on_event: OnEvent | None = None) -> RunResult:
    """Run the recipe in `cfg`. `recorder` keeps the record of the run (none by default);
    `on_event` hears a RunEvent at each step (how a job reports its stage and progress)."""
    recorder = recorder if recorder is not None else NullRecorder()
    step = Steps(on_event)
    settings = load_settings(cfg)
    device = local_device(settings)
    for name, data in settings.eval.all_texts().items():
        check_data(data, settings.eval.text_field(name))
    check_task_data(settings.eval.tasks)
    peak_method(settings.eval.memory.method, device)  # refuses cuda on a CPU before any work
    plan, info = build_plan(settings, device)
    say(render_plan(plan))
    out = _output_dir(settings, plan)
    dtype = resolve_dtype(settings.model.dtype, device)
    step(recorder.start(RunStart(settings, plan, info.model_type, str(device), _dtype_name(dtype))), Stage.STARTED)
    staging, renamed = None, False
    try:
        out, staging = reserve_output(out, numbered=not settings.run.output_dir)
        metrics, errors = _execute(settings, plan, device, dtype, staging, recorder, step, progress)
        recorder.outputs(staging, metrics, errors)
        staging.rename(out)
        renamed = True
        recorder.succeed(out.resolve(), metrics)
    except BaseException as e:
        recorder.fail(e)
        if staging is not None:
            shutil.rmtree(out if renamed else staging, ignore_errors=True)
        raise
    step(f"done: {out.resolve()}", Stage.DONE)
    return RunResult(output_dir=out.resolve(), plan=plan, metrics=metrics, settings=settings,
                     extra=recorder.summary())


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _original_weights(settings: Settings) -> Path | None:
    """The folder of the unquantized safetensors (for per-layer error), if there is one."""
    loc = resolve_source(settings.model, Path(settings.paths.cache), convert=False)
    return Path(loc.source) if loc.local and not loc.gguf_file else None


def _execute(settings: Settings, plan: Plan, device: torch.device, dtype: torch.dtype, staging: Path,
             recorder: Recorder, step: Steps, progress: bool) -> tuple[dict[str, Any], list[dict]]:
    torch.manual_seed(settings.run.seed)
    dtype_name = _dtype_name(dtype)
    step(f"loading {settings.model.name} ({dtype}, {device}) ...", Stage.LOADING)
    model, tokenizer = load_model(settings.model, Path(settings.paths.cache), device, dtype)
    inputs = suite.prepare_inputs(settings, tokenizer)
    step("measuring (sizes and the settings that change them):\n" + suite.describe_sizes(settings, inputs, device),
         Stage.BASELINE)
    base = suite.measure_baseline(model, tokenizer, settings, inputs, device, dtype, step, progress)
    recorder.baseline(BaselineRecord(base.key, str(device), dtype_name, base.key_parts,
                                     {"ppl": {n: r.ppl for n, r in base.outputs.texts.items()},
                                      "nll": {n: r.nll for n, r in base.outputs.texts.items()}}, str(base.folder)))
    step(f"baseline perplexity {base.outputs.texts[settings.eval.data.name].ppl:.4f}; quantizing ...",
         Stage.QUANTIZING)
    report = quantize_model(model, plan, calibration=settings.calib, tokenizer=tokenizer, progress=progress)
    backends = prepare_model(model)
    step(f"quantized {report.layers} layers in {report.seconds:.1f}s; scoring the variant against the baseline ...",
         Stage.SCORING)
    metrics: dict[str, Any] = suite.measure_variant_quality(model, tokenizer, settings, inputs, base, progress)
    step("timing the variant ...", Stage.TIMING)
    speed = suite.measure_variant_speed(model, settings, inputs)
    method = peak_method(settings.eval.memory.method, device)
    if settings.run.save_checkpoint or method == "child":  # the child process loads the variant from it
        step("writing checkpoint ...", Stage.CHECKPOINT)
        save_checkpoint(model, tokenizer, plan, staging / "model")
    if method != "off":
        step("peak memory of the variant ...", Stage.PEAK_MEMORY)
    peak = suite.measure_variant_peak(settings, device, model, staging / "model")
    if not settings.run.save_checkpoint:
        shutil.rmtree(staging / "model", ignore_errors=True)
    step("per-layer error ...", Stage.LAYER_ERROR)
    errors = layer_errors(model, _original_weights(settings))
    metrics.update(suite.speed_and_memory_metrics(base, speed, peak, weight_bytes(model), method))
    metrics.update(summarize(errors))
    metrics.update({
        M.BASELINE_CACHED: base.cached, M.QUANTIZE_SECONDS: report.seconds, M.LAYERS_QUANTIZED: report.layers,
        M.LAYERS_EMULATED: sum(1 for lp in plan.layers if lp.emulated), M.DEVICE: str(device), M.DTYPE: dtype_name,
    })
    mismatched = {n: b for n, b in backends.items() if plan.layer(n).backend != b}
    if mismatched:  # the plan promised a backend; say so if the loaded model disagrees
        log.warning("backends differ from the plan for %d layers (e.g. %s)", len(mismatched), next(iter(mismatched)))
    if report.calibration_tokens:
        metrics[M.CALIBRATION_TOKENS] = report.calibration_tokens
    _write(settings, plan, metrics, report.notes, errors, staging, calibrated=bool(report.calibration_tokens))
    return metrics, errors


def _write(settings: Settings, plan: Plan, metrics: dict, notes: list[str], errors: list[dict], staging: Path,
           calibrated: bool = False) -> None:
    (staging / "config.yaml").write_text(settings.resolved_yaml())
    (staging / "recipe.yaml").write_text(OmegaConf.to_yaml(settings.raw.recipe, resolve=True))
    (staging / "plan.json").write_text(plan.to_json())
    (staging / "plan.txt").write_text(render_plan(plan, expand=True) + "\n")
    record: dict[str, Any] = {"metrics": metrics, "notes": notes}
    if calibrated:  # which data the calibrated layers saw: part of what makes the variant
        c = settings.calib
        record["calibration"] = {"data": c.data.name, "path": c.data.path, "split": c.data.split,
                                 "samples": c.samples, "seq_len": c.seq_len, "seed": c.seed}
    (staging / "metrics.json").write_text(json.dumps(record, indent=2))
    (staging / "layer_errors.json").write_text(json.dumps(errors, indent=2))
