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
from .evaluate import suite
from .evaluate.backends_used import backend_record
from .evaluate.forward import device_label
from .evaluate.layer_error import layer_errors, summarize
from .evaluate.memory import peak_method, weight_bytes
from .evaluate.speed import SEQUENTIAL, VARIANT_ONLY
from .evaluate.protocol import describe_protocol, eval_protocol, protocol_hash
from .events import OnEvent, RunEvent, Stage
from .models.loading import load_model, resolve_dtype, resolve_source
from .plan import Plan
from .plan.render import render_plan
from .tables import human_bytes
from .planning import build_plan, check_inputs, local_device
from .quantize import prepare_model, quantize_model
from .recording import BaselineRecord, NullRecorder, Recorder, RunStart
from .streaming import STREAMED, StreamedRun



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
        lm_tasks = M.lm_eval_tasks(m)
        if lm_tasks:
            lines.append("  lm-eval     " + "; ".join(
                f"{t} acc {m[M.lm_eval_metric(t, M.ACC)]:.3f} (baseline "
                f"{m[M.lm_eval_metric(t, M.baseline_of(M.ACC))]:.3f}), flips "
                f"{100 * m[M.lm_eval_metric(t, M.FLIP_RATE)]:.1f}% of {m[M.lm_eval_metric(t, M.ITEMS)]}"
                for t in lm_tasks))
        lines += _speed_lines(m)
        lines.append(f"  weights     {human_bytes(m[M.WEIGHT_BYTES])} vs {human_bytes(m[M.WEIGHT_BYTES_BASELINE])} "
                     f"({m[M.WEIGHT_REDUCTION]:.2f}x smaller)")
        if M.PEAK_MEMORY_BYTES in m:  # a streamed run's baseline is not measured: the variant's alone
            vs = f" vs {human_bytes(m[M.PEAK_MEMORY_BYTES_BASELINE])}" if M.PEAK_MEMORY_BYTES_BASELINE in m else \
                " (baseline not measured)"
            lines.append(f"  peak memory {human_bytes(m[M.PEAK_MEMORY_BYTES])}{vs} ({m[M.PEAK_MEMORY_METHOD]})")
        if M.EVAL_PROTOCOL in m:
            lines.append(f"  protocol    {m[M.EVAL_PROTOCOL]}: {m[M.EVAL_PROTOCOL_TEXT]}")
        lines += [f"  note        {n}" for n in x.get("notes", [])]
        lines.append(f"  written to  {self.output_dir}")
        if x.get("mlflow_run_id"):
            lines.append(f"  MLflow run  {x['mlflow_run_id']} in {x['tracking_uri']} (browse: qrecipe ui)")
        return "\n".join(lines)


_SIDES = {"prefill": (M.PREFILL_SPEEDUP, M.PREFILL_SPEEDUP_LOW, M.PREFILL_SPEEDUP_HIGH, M.PREFILL_NOISY,
                      M.PREFILL_NOISE),
          "decode": (M.DECODE_SPEEDUP, M.DECODE_SPEEDUP_LOW, M.DECODE_SPEEDUP_HIGH, M.DECODE_NOISY, M.DECODE_NOISE)}


def _speedup(m: dict[str, Any], side: str) -> str:
    value, low, high, noisy, noise = _SIDES[side]
    return f"{m[value]:.2f}x ({m[low]:.2f}-{m[high]:.2f})" + (f" NOISY: {m[noise]}" if m.get(noisy) else "")


def _speed_lines(m: dict[str, Any]) -> list[str]:
    """Measured speed with its interval and noise flags, what ran it, and the prediction."""
    lines = []
    if M.DECODE_SPEEDUP in m:
        lines += [f"  speed       measured on {m[M.SPEED_DEVICE_NAME]}, {m[M.SPEED_TIMING]}, {m[M.SPEED_REPEATS]} "
                  f"repeats (speedup: median of paired ratios, interquartile range in brackets)",
                  f"              prefill {m[M.PREFILL_TOKENS_PER_S]:,.0f} tok/s, {_speedup(m, 'prefill')}",
                  f"              decode  {m[M.DECODE_MS_PER_TOKEN]:.3g} ms/token, {_speedup(m, 'decode')}"]
        if m.get(M.SPEED_TIMING_NOTE):
            lines.append(f"              timed sequentially: {m[M.SPEED_TIMING_NOTE]}")
        if m.get(M.SPEED_CAVEAT):
            lines.append(f"              {m[M.SPEED_CAVEAT]}")
    elif m.get(M.SPEED_TIMING) == VARIANT_ONLY:  # a streamed run: no baseline timing, no speedup
        lines += [f"  speed       measured on {m[M.SPEED_DEVICE_NAME]}, variant only, {m[M.SPEED_REPEATS]} repeats: "
                  f"prefill {m[M.PREFILL_TOKENS_PER_S]:,.0f} tok/s, decode {m[M.DECODE_MS_PER_TOKEN]:.3g} ms/token",
                  f"              {m[M.SPEED_TIMING_NOTE]}"]
    if M.PREDICTED_DECODE_SPEEDUP in m:
        pred = f"decode {m[M.PREDICTED_DECODE_MS_PER_TOKEN]:.3g} ms/token ({m[M.PREDICTED_DECODE_SPEEDUP]:.2f}x)"
        if M.PREDICTED_PREFILL_SPEEDUP in m:
            pred += (f", prefill {m[M.PREDICTED_PREFILL_TOKENS_PER_S]:,.0f} tok/s "
                     f"({m[M.PREDICTED_PREFILL_SPEEDUP]:.2f}x)")
        lines.append(f"  predicted   on {m[M.PREDICTED_FOR]} (roofline, not measured): {pred}")
        if M.DECODE_MEASURED_OVER_PREDICTED in m:
            ratio = f"decode {m[M.DECODE_MEASURED_OVER_PREDICTED]:.2f}"
            if M.PREFILL_MEASURED_OVER_PREDICTED in m:
                ratio += f", prefill {m[M.PREFILL_MEASURED_OVER_PREDICTED]:.2f}"
            lines.append(f"              measured / predicted throughput on the target's GPU: {ratio}")
    return lines


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Steps:
    """Progress lines stamped with the seconds since the run started (where the time goes);
    each is also passed to on_event as a RunEvent of the stage the run is in."""

    def __init__(self, on_event: OnEvent | None = None) -> None:
        self.start = time.monotonic()
        self.on_event = on_event
        self.stage = Stage.STARTED

    def __call__(self, msg: str, stage: Stage | None = None, **data: Any) -> None:
        """Print msg; `stage` when the run enters a new stage. on_event may raise (e.g. Cancelled)
        to stop the run at this boundary."""
        self.stage = stage or self.stage
        say(f"[{time.monotonic() - self.start:6.1f}s] {msg}")
        if self.on_event is not None:
            self.on_event(RunEvent(self.stage, msg, data))


def run_folder(settings: Settings, plan: Plan) -> Path:
    """Where the variant folder should go (checked before any work; reserved by reserve_output)."""
    if settings.run.output_dir:
        out = Path(settings.run.output_dir)
        if out.exists():
            from .errors import ConfigError

            raise ConfigError(f"run.output_dir: {out} already exists; choose a new folder or leave it null")
        return out
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs = Path(settings.paths.root) / "runs"
    out = runs / f"{stamp}-{plan.recipe}-{plan.plan_hash[:8]}"
    # The recipe name is validated as a name (engine/recipe/schema.py); this is the second line
    # of defence: whatever builds the name, the folder lies inside paths.root/runs.
    if out.resolve().parent != runs.resolve():
        from .errors import ConfigError

        raise ConfigError(f"recipe.name: {plan.recipe!r} would put the run folder outside {runs}; use a plain name")
    return out


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
    peak_method(settings.eval.memory.method, device)  # refuses cuda on a CPU before any work
    plan, info = build_plan(settings, device)
    check_inputs(settings, plan)
    say(render_plan(plan))
    out = run_folder(settings, plan)
    dtype = resolve_dtype(settings.model.dtype, device)
    protocol = eval_protocol(settings, device, dtype)  # how it is measured: compare only runs measured alike
    staging, renamed = None, False
    succeeded: list[Callable[[], None]] = []  # what the run undoes only once it is recorded (a resume folder)
    try:
        where = recorder.start(RunStart(settings, plan, info.model_type, str(device), _dtype_name(dtype), protocol))
        out, staging = reserve_output(out, numbered=not settings.run.output_dir)
        step(where, Stage.STARTED, output_dir=str(out), staging=str(staging))
        metrics, errors, notes = _execute(settings, plan, device, dtype, staging, recorder, step, progress, protocol,
                                          succeeded)
        step("recording ...", Stage.RECORDING)
        recorder.outputs(staging, metrics, errors)
        staging.rename(out)
        renamed = True
        recorder.succeed(out.resolve(), metrics)  # from here the run is recorded: nothing below can undo it
    except BaseException as e:
        recorder.fail(e)
        if staging is not None:
            shutil.rmtree(out if renamed else staging, ignore_errors=True)
        raise
    for then in succeeded:
        then()
    step(f"done: {out.resolve()}", Stage.DONE)
    return RunResult(output_dir=out.resolve(), plan=plan, metrics=metrics, settings=settings,
                     extra={**recorder.summary(), "notes": notes})


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _original_weights(settings: Settings) -> Path | None:
    """The folder of the unquantized safetensors (for per-layer error), if there is one."""
    loc = resolve_source(settings.model, Path(settings.paths.cache), convert=False)
    return Path(loc.source) if loc.local and not loc.gguf_file else None


def _execute(settings: Settings, plan: Plan, device: torch.device, dtype: torch.dtype, staging: Path,
             recorder: Recorder, step: Steps, progress: bool, protocol: dict[str, Any],
             succeeded: list[Callable[[], None]]) -> tuple[dict[str, Any], list[dict], list[str]]:
    """(metrics, per-layer errors, notes): the notes say every fallback the run took. What to do
    once the run is recorded goes into `succeeded`."""
    torch.manual_seed(settings.run.seed)
    stream = None  # a model bigger than memory streams from its checkpoint (engine/streaming/)
    if plan.execution.get("mode") == STREAMED:
        step(f"loading {settings.model.name} as a skeleton ({dtype}, {device}): its float weights stream block by "
             f"block from the checkpoint ({plan.execution['reason']}) ...", Stage.LOADING)
        stream = StreamedRun(settings, plan, device, dtype, step)
        model, tokenizer = None, stream.tokenizer
    else:
        step(f"loading {settings.model.name} ({dtype}, {device}) ...", Stage.LOADING)
        model, tokenizer = load_model(settings.model, Path(settings.paths.cache), device, dtype)
    try:
        result = _measure(settings, plan, device, dtype, staging, recorder, step, progress, protocol, model,
                          tokenizer, stream)
        if stream is not None:  # its finished blocks are kept until the run is recorded (a cancel may come first)
            succeeded.append(stream.finish)
        return result
    finally:
        if stream is not None:
            stream.abandon()


def _measure(settings: Settings, plan: Plan, device: torch.device, dtype: torch.dtype, staging: Path,
             recorder: Recorder, step: Steps, progress: bool, protocol: dict[str, Any], model, tokenizer,
             stream: StreamedRun | None) -> tuple[dict[str, Any], list[dict], list[str]]:
    """_execute's measurements, on a model loaded whole or (stream) one streamed from disk."""
    dtype_name = _dtype_name(dtype)
    inputs = suite.prepare_inputs(settings, tokenizer)
    step("measuring (sizes and the settings that change them):\n" + suite.describe_sizes(settings, inputs, device),
         Stage.BASELINE)
    base = stream.measure_baseline(inputs) if stream else \
        suite.measure_baseline(model, tokenizer, settings, inputs, device, dtype, step, progress)
    recorder.baseline(BaselineRecord(base.key, str(device), dtype_name, base.key_parts,
                                     {"ppl": {n: r.ppl for n, r in base.outputs.texts.items()},
                                      "nll": {n: r.nll for n, r in base.outputs.texts.items()}}, str(base.folder)))
    step(f"baseline perplexity {base.outputs.texts[settings.eval.data.name].ppl:.4f}", Stage.BASELINE)
    # before quantizing: keeps a float copy of the baseline (interleaved timing) or times it now
    timer = suite.SpeedTimer(settings, inputs, model, device, step,
                             streamed=plan.execution["reason"] if stream else None)
    try:
        step("quantizing ...", Stage.QUANTIZING)
        if stream:  # writes the checkpoint as it goes; the variant fits: it is loaded and measured normally
            report = stream.quantize(staging / "model", progress)
            model = stream.load_variant(staging / "model")
        else:
            report = quantize_model(model, plan, calibration=settings.calib, tokenizer=tokenizer, progress=progress)
        backends = prepare_model(model)
        step(f"quantized {report.layers} layers in {report.seconds:.1f}s; scoring the variant against the "
             f"baseline ...", Stage.SCORING)
        metrics: dict[str, Any] = suite.measure_variant_quality(model, tokenizer, settings, inputs, base, progress)
        step("timing ...", Stage.TIMING)
        speed = suite.measure_variant_speed(timer, model, step)
    finally:
        timer.release()
    used = backend_record(model, settings.target, device.type, device_label(device))
    method = peak_method(settings.eval.memory.method, device)
    if (settings.run.save_checkpoint or method == "child") and not stream:  # the child loads the variant from it
        step("writing checkpoint ...", Stage.CHECKPOINT)
        save_checkpoint(model, tokenizer, plan, staging / "model")
    if method != "off":
        step("peak memory of the variant ...", Stage.PEAK_MEMORY)
    peak = suite.measure_variant_peak(settings, device, model, staging / "model")
    if not settings.run.save_checkpoint:
        shutil.rmtree(staging / "model", ignore_errors=True)
    step("per-layer error ...", Stage.LAYER_ERROR)
    errors = layer_errors(model, _original_weights(settings))
    metrics.update(suite.memory_metrics(base, peak, weight_bytes(model), method))
    metrics.update(speed)
    metrics.update(used)
    metrics.update(suite.prediction_metrics(plan.roofline, speed, bool(used[M.SPEED_ON_TARGET])))
    metrics.update(summarize(errors))
    metrics.update({
        M.BASELINE_CACHED: base.cached, M.QUANTIZE_SECONDS: report.seconds, M.LAYERS_QUANTIZED: report.layers,
        M.DEVICE: str(device), M.DTYPE: dtype_name, M.EVAL_PROTOCOL: protocol_hash(protocol),
        M.EVAL_PROTOCOL_TEXT: describe_protocol(protocol),
    })
    mismatched = {n: b for n, b in backends.items() if plan.layer(n).backend != b}
    if mismatched:  # the plan promised a backend; say so if the loaded model disagrees
        name, got = next(iter(mismatched.items()))
        report.notes.append(f"{len(mismatched)} layers run on another backend than the plan says (e.g. {name}: "
                            f"{got}, planned {plan.layer(name).backend})")
    if report.calibration_tokens:
        metrics[M.CALIBRATION_TOKENS] = report.calibration_tokens
    # a streamed run's variant timed alone: base.notes already say why its baseline was not timed
    sequential = speed.get(M.SPEED_TIMING) == SEQUENTIAL and M.SPEED_TIMING_NOTE in speed
    speed_notes = [f"speed timed sequentially: {speed[M.SPEED_TIMING_NOTE]}"] if sequential else []
    notes = list(dict.fromkeys(plan.notes + base.notes + report.notes + speed_notes))
    for note in report.notes + speed_notes:
        step(f"note: {note}")
    _write(settings, plan, metrics, notes, errors, staging, protocol, calibrated=bool(report.calibration_tokens),
           expert_tokens=report.expert_tokens)
    return metrics, errors, notes


def _write(settings: Settings, plan: Plan, metrics: dict, notes: list[str], errors: list[dict], staging: Path,
           protocol: dict[str, Any], calibrated: bool = False,
           expert_tokens: dict[str, list[int]] | None = None) -> None:
    (staging / "config.yaml").write_text(settings.resolved_yaml())
    (staging / "recipe.yaml").write_text(OmegaConf.to_yaml(settings.raw.recipe, resolve=True))
    (staging / "plan.json").write_text(plan.to_json())
    (staging / "plan.txt").write_text(render_plan(plan, expand=True) + "\n")
    record: dict[str, Any] = {"metrics": metrics, "notes": notes, "eval_protocol": protocol}
    if calibrated:  # which data the calibrated layers saw: part of what makes the variant
        c = settings.calib
        record["calibration"] = {"data": c.data.name, "path": c.data.path, "split": c.data.split,
                                 "samples": c.samples, "seq_len": c.seq_len, "seed": c.seed}
        if expert_tokens:  # tokens the router sent each calibrated expert, per experts module
            record["calibration"].update(min_expert_tokens=c.min_expert_tokens, expert_tokens=expert_tokens)
    (staging / "metrics.json").write_text(json.dumps(record, indent=2))
    (staging / "layer_errors.json").write_text(json.dumps(errors, indent=2))
