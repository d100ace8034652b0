"""One recipe run: plan, record its start, load, measure the baseline, quantize, measure the
variant against it, write the variant folder, record the result (MLflow and the registry).

The output folder is staged under a hidden name and renamed into place only when every
file is written, so a failed run leaves nothing half-written behind; the registry then
marks the run failed and its MLflow run is ended FAILED (registry/recorder.py).
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

from .checkpoint import save_checkpoint
from .config import load_settings
from .config.settings import Settings
from .data import check_data
from .evaluate import suite
from .evaluate.layer_error import layer_errors, summarize
from .evaluate.memory import peak_method, weight_bytes
from .evaluate.tasks import check_task_data
from .models.loading import load_model, resolve_dtype, resolve_source
from .plan import Plan
from .plan.render import human_bytes, render_plan
from .planning import build_plan, local_device
from .quantize import prepare_model, quantize_model
from .streaming import STREAMED, StreamedRun

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
            f"  perplexity  {m['ppl']:.4f} vs baseline {m['ppl_baseline']:.4f} ({m['ppl_delta_pct']:+.2f}%) "
            f"on {m['eval_tokens']:,} tokens of {m['eval_data']}",
            f"  divergence  KL {m['kl_mean']:.4f} mean, {m['kl_p99']:.4f} p99; top-1 agreement "
            f"{100 * m['top1_agreement']:.1f}%",
        ]
        families = sorted({k.split(".")[1] for k in m if k.startswith("task.") and k.count(".") == 2})
        if families:
            lines.append("  tasks       " + "; ".join(
                f"{f} {m[f'task.{f}.greedy_match']:.2f} match, {m[f'task.{f}.loglik_delta']:+.3f} loglik"
                + (f", {m[f'task.{f}.valid_rate']:.2f} valid" if f"task.{f}.valid_rate" in m else "")
                for f in families))
        if "decode_speedup" in m:
            lines.append(f"  speed       prefill {m['prefill_tokens_per_s']:,.0f} tok/s ({m['prefill_speedup']:.2f}x), "
                         f"decode {m['decode_ms_per_token']:.1f} ms/token ({m['decode_speedup']:.2f}x) on "
                         f"{m['speed_device']}")
        lines.append(f"  weights     {human_bytes(m['weight_bytes'])} vs {human_bytes(m['weight_bytes_baseline'])} "
                     f"({m['weight_reduction']:.2f}x smaller)")
        if "peak_memory_bytes_baseline" in m:
            lines.append(f"  peak memory {human_bytes(m['peak_memory_bytes'])} vs "
                         f"{human_bytes(m['peak_memory_bytes_baseline'])} ({m['peak_memory_method']})")
        lines.append(f"  written to  {self.output_dir}")
        if x.get("mlflow_run_id"):
            lines.append(f"  MLflow run  {x['mlflow_run_id']} in {x['tracking_uri']} (browse: qrecipe ui)")
        return "\n".join(lines)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Steps:
    """Progress lines stamped with the seconds since the run started (where the time goes);
    each is also passed to on_event("step", {"message": ...}) when a caller listens (a job)."""

    def __init__(self, on_event: Callable[[str, dict], None] | None = None) -> None:
        self.start = time.monotonic()
        self.on_event = on_event

    def __call__(self, msg: str) -> None:
        say(f"[{time.monotonic() - self.start:6.1f}s] {msg}")
        if self.on_event is not None:
            self.on_event("step", {"message": msg})


def _output_dir(settings: Settings, plan: Plan) -> Path:
    """Where the variant folder should go (checked before any work; reserved by _reserve)."""
    if settings.run.output_dir:
        out = Path(settings.run.output_dir)
        if out.exists():
            from .errors import ConfigError

            raise ConfigError(f"run.output_dir: {out} already exists; choose a new folder or leave it null")
        return out
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(settings.paths.root) / "runs" / f"{stamp}-{plan.recipe}-{plan.plan_hash[:8]}"


def _reserve(out: Path, numbered: bool) -> tuple[Path, Path]:
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


def run(cfg: DictConfig, progress: bool = True, on_event: Callable[[str, dict], None] | None = None) -> RunResult:
    """on_event(name, data), when given, hears "started" (the registry run: variant_id,
    run_number) and each "step" of the run: how a job reports its progress."""
    from ..registry.recorder import RunRecorder

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
    recorder = RunRecorder(settings, plan, info.model_type, str(device), str(dtype).replace("torch.", ""))
    if on_event is not None:
        on_event("started", recorder.summary())
    step(recorder.describe_start())
    staging, renamed = None, False
    try:
        out, staging = _reserve(out, numbered=not settings.run.output_dir)
        metrics, errors = _execute(settings, plan, device, dtype, staging, recorder, step, progress)
        recorder.log_outputs(staging, metrics, errors)
        staging.rename(out)
        renamed = True
        recorder.succeed(out.resolve(), metrics)
    except BaseException as e:
        recorder.fail(e)
        if staging is not None:
            shutil.rmtree(out if renamed else staging, ignore_errors=True)
        raise
    return RunResult(output_dir=out.resolve(), plan=plan, metrics=metrics, settings=settings,
                     extra=recorder.summary())


def _original_weights(settings: Settings) -> Path | None:
    """The folder of the unquantized safetensors (for per-layer error), if there is one."""
    loc = resolve_source(settings.model, Path(settings.paths.cache), convert=False)
    return Path(loc.source) if loc.local and not loc.gguf_file else None


def _execute(settings: Settings, plan: Plan, device: torch.device, dtype: torch.dtype, staging: Path, recorder,
             step: Steps, progress: bool) -> tuple[dict[str, Any], list[dict]]:
    torch.manual_seed(settings.run.seed)
    dtype_name = str(dtype).replace("torch.", "")
    stream = None  # a model bigger than memory streams from its checkpoint (engine/streaming/)
    if plan.execution.get("mode") == STREAMED:
        step(f"loading {settings.model.name} as a skeleton ({dtype}, {device}): its float weights stream block by "
             f"block from the checkpoint ({plan.execution['reason']}) ...")
        stream = StreamedRun(settings, plan, device, dtype, step)
        model, tokenizer = None, stream.tokenizer
    else:
        step(f"loading {settings.model.name} ({dtype}, {device}) ...")
        model, tokenizer = load_model(settings.model, Path(settings.paths.cache), device, dtype)
    try:
        return _measure(settings, plan, device, dtype, dtype_name, staging, recorder, step, progress, model,
                        tokenizer, stream)
    finally:
        if stream is not None:
            stream.abandon()


def _measure(settings, plan, device, dtype, dtype_name, staging, recorder, step, progress, model, tokenizer, stream):
    inputs = suite.prepare_inputs(settings, tokenizer)
    step("measuring (sizes and the settings that change them):\n" + suite.describe_sizes(settings, inputs, device))
    base = stream.measure_baseline(inputs) if stream else \
        suite.measure_baseline(model, tokenizer, settings, inputs, device, dtype, step, progress)
    recorder.record_baseline(base.key, str(device), dtype_name, base.key_parts,
                             {"ppl": {n: r.ppl for n, r in base.outputs.texts.items()},
                              "nll": {n: r.nll for n, r in base.outputs.texts.items()}}, str(base.folder))
    step(f"baseline perplexity {base.outputs.texts[settings.eval.data.name].ppl:.4f}")
    if stream:
        report = stream.quantize(staging / "model", progress)
        model = stream.load_variant(staging / "model")
    else:
        report = quantize_model(model, plan, calibration=settings.calib, tokenizer=tokenizer, progress=progress)
    backends = prepare_model(model)
    step(f"quantized {report.layers} layers in {report.seconds:.1f}s; scoring the variant against the baseline ...")
    metrics: dict[str, Any] = suite.measure_variant_quality(model, tokenizer, settings, inputs, base, progress)
    step("timing the variant ...")
    speed = suite.measure_variant_speed(model, settings, inputs)
    method = peak_method(settings.eval.memory.method, device)
    if (settings.run.save_checkpoint or method == "child") and not stream:  # the child loads the variant from it
        step("writing checkpoint ...")
        save_checkpoint(model, tokenizer, plan, staging / "model")
    if method != "off":
        step("peak memory of the variant ...")
    peak = suite.measure_variant_peak(settings, device, model, staging / "model")
    if not settings.run.save_checkpoint:
        shutil.rmtree(staging / "model", ignore_errors=True)
    step("per-layer error ...")
    errors = layer_errors(model, _original_weights(settings))
    metrics.update(suite.speed_and_memory_metrics(base, speed, peak, weight_bytes(model), method))
    metrics.update(summarize(errors))
    metrics.update({
        "baseline_cached": base.cached, "quantize_seconds": report.seconds, "layers_quantized": report.layers,
        "layers_emulated": sum(1 for lp in plan.layers if lp.emulated), "device": str(device), "dtype": dtype_name,
    })
    mismatched = {n: b for n, b in backends.items() if plan.layer(n).backend != b}
    if mismatched:  # the plan promised a backend; say so if the loaded model disagrees
        log.warning("backends differ from the plan for %d layers (e.g. %s)", len(mismatched), next(iter(mismatched)))
    if report.calibration_tokens:
        metrics["calibration_tokens"] = report.calibration_tokens
    _write(settings, plan, metrics, report.notes, errors, staging, calibrated=bool(report.calibration_tokens))
    if stream:
        stream.finish()
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
