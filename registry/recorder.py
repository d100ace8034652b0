"""What one `qrecipe run` leaves in the registry and in MLflow, from start to end: the
engine's Recorder (engine/recording.py) that the CLI and job attempts pass to engine.run.

    start      (before the model loads) a tracking server is asked to answer (seconds, not
               MLflow's minutes of retries) and an MLflow run started RUNNING; then the variant
               is found or created and a `running` run row added that names the MLflow run;
               then the MLflow run gets its run number, tags and params
    baseline   the baseline cache it was scored against gets (or keeps) its registry row
    outputs    metrics, the run folder's files and the plots go to the MLflow run
    succeed    (after the run folder is in place) the registry run is marked succeeded and the
               variant shows its metrics; then the MLflow run is ended FINISHED
    fail       the registry run is marked failed and the MLflow run ended FAILED (KILLED when
               the run was stopped: Ctrl-C, SIGTERM, a job's cancel)

The registry is written before MLflow is ended, so a crash in between leaves an MLflow run
still RUNNING, never one FINISHED that the registry does not know as succeeded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

from omegaconf import OmegaConf

from qrecipe.engine import metric_names as M
from qrecipe.engine.config.settings import Settings
from qrecipe.engine.evaluate.protocol import describe_protocol, protocol_hash
from qrecipe.engine.plan import Plan
from qrecipe.engine.process import stopped
from qrecipe.engine.recording import BaselineRecord, RunStart
from qrecipe.engine.schemes import SCHEMES

from . import plots
from .db import open_registry, registry_url
from .protocols import UNRECORDED, select_runs
from .queries import list_variants
from .record import RunHandle, VariantIdentity, begin_run, fail_run, finish_run, record_baseline
from .tracking import MlflowRun, TrackingError, check_reachable, flatten, git_commit, tracking_uri, versions

log = logging.getLogger(__name__)

# The run folder's files that are logged as MLflow artifacts (when present).
RUN_FILES = ("config.yaml", "recipe.yaml", "plan.json", "plan.txt", "metrics.json", "layer_errors.json")


def recipe_hash(settings: Settings, plan: Plan) -> str:
    """The resolved recipe without its description; with the calibration settings when a
    layer's algorithm calibrates (they change the weights, so they are part of the variant)."""
    recipe = OmegaConf.to_container(settings.raw.recipe, resolve=True)
    recipe.pop("description", None)
    payload: dict[str, Any] = {"recipe": recipe}
    if plan.calibrates:
        payload["calib"] = OmegaConf.to_container(settings.raw.calib, resolve=True)
        if not any(lp.kind == "experts" for lp in plan.quantized()):
            # it changes only experts' weights: dense variants keep the identity they had before it
            payload["calib"].pop("min_expert_tokens", None)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def identity(settings: Settings, plan: Plan, model_type: str) -> VariantIdentity:
    requires = sorted({cap for lp in plan.quantized() for cap in SCHEMES[lp.scheme].requires})
    return VariantIdentity(model=plan.model_id, model_source=settings.model.path, model_type=model_type,
                           target=plan.target, recipe_name=plan.recipe, recipe_hash=recipe_hash(settings, plan),
                           plan_hash=plan.plan_hash, scheme_mix=plan.scheme_mix(), requires=tuple(requires))


def run_params(settings: Settings, plan: Plan, ident: VariantIdentity, device: str, dtype: str) -> dict[str, str]:
    raw = settings.raw
    params = flatten(OmegaConf.to_container(raw.recipe, resolve=True), "recipe")
    params.update(flatten(OmegaConf.to_container(raw.eval, resolve=True), "eval"))
    if plan.calibrates:
        params.update(flatten(OmegaConf.to_container(raw.calib, resolve=True), "calib"))
    params.update({"model": plan.model_id, "model.path": settings.model.path, "model.type": ident.model_type,
                   "target": plan.target, "device": device, "dtype": dtype, "plan_hash": plan.plan_hash,
                   "recipe_hash": ident.recipe_hash, "variant_id": ident.variant_id,
                   "git_commit": git_commit() or "unknown"})
    params.update({f"version.{k}": v for k, v in versions().items()})
    return params


def run_name(settings: Settings, plan: Plan, variant_id: str, run_number: int | None) -> str:
    """Unique in the model's experiment and saying what differs: the recipe with how it differs
    from its file (its overrides), the target, the run number of the variant and the variant id,
    e.g. `w8a16[base.group_size=64]@cpu #2 3f9a1c0d`."""
    from qrecipe.engine.config.compose import recipe_changes

    changes = recipe_changes(settings.raw.recipe)
    what = plan.recipe
    if changes is None:  # not a recipe file's name: the plan hash says which plan it is
        what += f"[plan {plan.plan_hash[:8]}]"
    elif changes:
        text = ", ".join(changes)
        what += f"[{text if len(text) <= 120 else text[:117] + '...'}]"
    # without the registry there is no run number: the start time tells re-runs apart
    number = f"#{run_number}" if run_number is not None else time.strftime("%Y-%m-%d %H:%M:%S")
    return f"{what}@{plan.target} {number} {variant_id[:8]}"


def run_tags(plan: Plan, ident: VariantIdentity, handle: RunHandle | None) -> dict[str, str]:
    tags = {"qrecipe.variant_id": ident.variant_id, "qrecipe.recipe": plan.recipe, "qrecipe.target": plan.target,
            "qrecipe.plan_hash": plan.plan_hash, "qrecipe.recipe_hash": ident.recipe_hash,
            "qrecipe.scheme_mix": plan.scheme_mix()}
    tags.update({f"qrecipe.scheme.{s}": str(n) for s, n in plan.totals()["by_scheme"].items()})
    if handle is not None:
        tags.update({"qrecipe.run_number": str(handle.run_number), "qrecipe.rerun": str(handle.is_rerun).lower()})
    return tags


def speed_tags(metrics: dict[str, Any]) -> dict[str, str]:
    """How far the measured speed can be trusted, as tags the runs table can filter on."""
    tags = {f"qrecipe.{side}_noisy": str(bool(metrics[f"{side}_noisy"])).lower()
            for side in ("prefill", "decode") if f"{side}_noisy" in metrics}
    for key in (M.SPEED_TIMING, M.SPEED_DEVICE_NAME, M.SPEED_CAVEAT, M.PREFILL_NOISE, M.DECODE_NOISE):
        if metrics.get(key):
            tags[f"qrecipe.{key}"] = str(metrics[key])[:5000]
    if M.SPEED_PRODUCTION in metrics:
        tags["qrecipe.speed_production"] = str(bool(metrics[M.SPEED_PRODUCTION])).lower()
    return tags


def _start_mlflow(settings: Settings, model: str, name: str, tags: dict[str, str]) -> MlflowRun:
    try:
        return MlflowRun(settings, model, name, tags)
    except Exception as e:  # noqa: BLE001 - one line naming the setting, not MLflow's retry traceback
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise TrackingError(f"tracking.uri: cannot start an MLflow run in {tracking_uri(settings)} ({first}); "
                            f"check the URI and that the server answers, or set tracking=off") from e


# What a job's attempt learns of its run (registry/jobs/attempt.py): the keys of RunRecorder.result.
RESULT_KEYS = ("variant_id", "run_number", "output_dir", "plan_hash", "recipe", "model", "target", "mlflow_run_id",
               "tracking_uri", "metrics")
# before_commit(session, result): runs inside the transaction that records the run succeeded.
BeforeCommit = Callable[[Any, dict[str, Any]], None]


class RunRecorder:
    """Registry rows and an MLflow run for one engine run (engine.recording.Recorder).

    `before_commit(session, result)`, when given, runs inside the transaction that marks the run
    succeeded and may refuse it by raising: a job uses it to decide its cancel and its success in
    that one transaction (registry/jobs/attempt.py)."""

    def __init__(self, before_commit: BeforeCommit | None = None) -> None:
        self.settings: Settings | None = None
        self.plan: Plan | None = None
        self.ident: VariantIdentity | None = None
        self.engine = None
        self.handle: RunHandle | None = None
        self.mlflow: MlflowRun | None = None
        self.baseline_id: int | None = None
        self.before_commit = before_commit
        self.succeeded = self.failed = False

    def start(self, run: RunStart) -> str:
        """MLflow first (a tracking server that does not answer fails the run in seconds, before the
        registry holds anything), then the registry run, which names its MLflow run."""
        settings, plan = self.settings, self.plan = run.settings, run.plan
        self.ident = identity(settings, plan, run.model_type)
        protocol = protocol_hash(run.eval_protocol) if run.eval_protocol is not None else None
        try:
            if settings.tracking.enabled:
                check_reachable(settings)
                tags = run_tags(plan, self.ident, None)
                if protocol is not None:
                    tags["qrecipe.eval_protocol"] = protocol
                self.mlflow = _start_mlflow(settings, plan.model_id, run_name(settings, plan, self.variant_id, None),
                                            tags)
            if settings.registry.enabled:
                self.engine = open_registry(registry_url(settings))
                self.handle = begin_run(self.engine, self.ident, run.device, versions()["qrecipe"], git_commit(),
                                        run.eval_protocol, self.mlflow.run_id if self.mlflow else None)
            if self.mlflow is not None:
                if self.handle is not None:  # now its run number is known
                    self.mlflow.rename(run_name(settings, plan, self.variant_id, self.handle.run_number))
                    self.mlflow.set_tags(run_tags(plan, self.ident, self.handle))
                params = run_params(settings, plan, self.ident, run.device, run.dtype)
                if protocol is not None:
                    params["eval_protocol"] = protocol
                    params["eval_protocol.text"] = describe_protocol(run.eval_protocol)
                self.mlflow.log_params(params)
        except BaseException as e:
            self.fail(e)
            raise
        return self.describe_start()

    @property
    def variant_id(self) -> str:
        return self.ident.variant_id

    def describe_start(self) -> str:
        where = []
        if self.handle:
            again = f"re-run #{self.handle.run_number} of" if self.handle.is_rerun else "new"
            where.append(f"registry: {again} variant {self.variant_id}")
        if self.mlflow:
            where.append(f"MLflow run {self.mlflow.run_id} ({tracking_uri(self.settings)})")
        return "; ".join(where) or "tracking and registry are off"

    def baseline(self, b: BaselineRecord) -> None:
        if self.engine is not None:
            self.baseline_id = record_baseline(self.engine, self.plan.model_id, b.key, b.device, b.dtype,
                                               b.key_parts, b.metrics, b.cache_path)

    def outputs(self, staging: Path, metrics: dict[str, Any], layer_errors: list[dict]) -> None:
        """Metrics, the run folder's files and the plots, while the MLflow run is still RUNNING."""
        if self.mlflow is None:
            return
        self.mlflow.log_metrics(metrics)
        self.mlflow.set_tags({"qrecipe.device": str(metrics.get(M.DEVICE, "")),
                              "qrecipe.peak_memory_method": str(metrics.get(M.PEAK_MEMORY_METHOD, "-")),
                              "qrecipe.worst_family": str(metrics.get(M.TASK_WORST_FAMILY, "-")),
                              **speed_tags(metrics)})
        for name in RUN_FILES:
            if (staging / name).is_file():
                self.mlflow.log_artifact(staging / name)
        for png in self._plots(staging, metrics, layer_errors):
            self.mlflow.log_artifact(png, "plots")

    def _plots(self, staging: Path, metrics: dict[str, Any], layer_errors: list[dict]) -> list[Path]:
        folder = staging / "plots"
        out = []
        points = [plots.point(self.plan.recipe, metrics, highlight=True)]
        if self.engine is not None:  # the model's other variants, measured under this run's protocol
            others = [v for v in list_variants(self.engine, self.plan.model_id, measured_only=True)
                      if v.id != self.variant_id]
            chosen = select_runs(self.engine, others, metrics.get(M.EVAL_PROTOCOL) or UNRECORDED).rows
            points += [plots.point(f"{r.variant.recipe_name}@{r.variant.target} {r.variant.id[:6]}", r.metrics)
                       for r in chosen]
        out.append(plots.quality_vs_memory(points, metrics.get(M.WEIGHT_BYTES_BASELINE),
                                           folder / "quality_vs_memory.png",
                                           f"{self.plan.model_id}: quality vs weight memory"))
        if layer_errors:
            out.append(plots.layer_error(layer_errors, folder / "layer_error.png",
                                         f"{self.plan.model_id} {self.plan.recipe}: per-layer weight error"))
        return out

    def result(self, output_dir: Path, metrics: dict[str, Any]) -> dict[str, Any]:
        """What the run is, once recorded (RESULT_KEYS): a job's result."""
        return {**self.summary(), "output_dir": str(output_dir), "plan_hash": self.plan.plan_hash,
                "recipe": self.plan.recipe, "model": self.plan.model_id, "target": self.plan.target,
                "metrics": metrics}

    def succeed(self, output_dir: Path, metrics: dict[str, Any]) -> None:
        if self.engine is not None and self.handle is not None:
            hook = self.before_commit
            result = self.result(output_dir, metrics)
            finish_run(self.engine, self.handle, metrics, str(output_dir),
                       self.mlflow.run_id if self.mlflow else None, self.baseline_id,
                       before_commit=None if hook is None else lambda session: hook(session, result))
        self.succeeded = True  # recorded: a signal from here on must not mark it failed
        if self.mlflow is not None:
            try:
                self.mlflow.set_tags({"qrecipe.output_dir": str(output_dir)})
                self.mlflow.end("FINISHED")
            except BaseException as e:  # noqa: BLE001 - even SIGTERM: the variant is recorded; MLflow shows RUNNING
                log.warning("the run is recorded in the registry, but ending its MLflow run failed: %r", e)

    def fail(self, error: BaseException) -> None:
        """Record the failure (once; a run stopped from outside is KILLED in MLflow, one that failed
        FAILED); never raises (the original error is what the user must see)."""
        if self.failed or self.succeeded:
            return
        self.failed = True
        text = f"{type(error).__name__}: {error}"
        if self.mlflow is not None:
            try:
                self.mlflow.set_tags({"qrecipe.error": text[:5000]})
                self.mlflow.end("KILLED" if stopped(error) else "FAILED")
            except Exception as e:  # noqa: BLE001
                log.warning("could not mark MLflow run %s failed: %s", self.mlflow.run_id, e)
        if self.engine is not None and self.handle is not None:
            try:
                fail_run(self.engine, self.handle, text, self.mlflow.run_id if self.mlflow else None)
            except Exception as e:  # noqa: BLE001
                log.warning("could not mark registry run %s failed: %s", self.handle.run_id, e)

    def summary(self) -> dict[str, Any]:
        if self.ident is None:  # not started
            return {}
        return {"variant_id": self.variant_id, "run_number": self.handle.run_number if self.handle else None,
                "mlflow_run_id": self.mlflow.run_id if self.mlflow else None,
                "tracking_uri": tracking_uri(self.settings) if self.settings.tracking.enabled else None}
