"""A whole search, as `qrecipe search` and a search job run it:

    1. the engine finds the allocation (sensitivities cached in the registry) and writes the recipe
    2. the found recipe is run and measured like any recipe (registry variant, MLflow run)
    3. the front's other allocations are measured on the eval text
    4. the search is recorded: a `searches` row (its points, the found variant) and an MLflow run
       in the model's experiment with the Pareto plot and table

Progress goes to on_event as ("stage", {stage, progress, message}) in [0, 1] over the whole
search (the run's own steps included), and ("started", {variant_id, run_number}) when the found
recipe's run is recorded.

A job passes a Gate (registry/jobs/attempt.py): at every stage boundary (the search's stages, the
found recipe's run's stages as "run: STAGE", and "recording" before the search is recorded) it
may stop the search by raising; the found recipe's registration and the search's record each
run its check inside their transaction, and the search's record is also the job's success.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from omegaconf import DictConfig, OmegaConf

from qrecipe.engine import metric_names as mn
from qrecipe.engine.config import load_settings
from qrecipe.engine.config.settings import Settings
from qrecipe.engine.events import RunEvent, SearchEvent, Stage
from qrecipe.engine.process import stopped
from qrecipe.engine.search import MemoryCache, SearchResult, find, measure_points, pareto, prepare
from qrecipe.engine.tables import human_bytes, text_table

from .recorder import RunRecorder

log = logging.getLogger(__name__)
OnEvent = Callable[[str, dict], None]
# Shares of the whole search's progress: find, the found recipe's run, the front's measurement.
_FIND, _RUN = 0.55, 0.9
MEASURED_KEYS = (mn.KL_MEAN, mn.KL_P99, mn.PPL, mn.PPL_BASELINE, mn.PPL_DELTA_PCT, mn.TOP1_AGREEMENT, mn.WEIGHT_BYTES)


RECORDING = "recording"  # the search's last stage: its MLflow run and registry row are written


class Gate(Protocol):
    """What a job asks of a search (registry/jobs/attempt.py SearchGate); each may raise to stop it."""

    def boundary(self, stage: str) -> None:
        """At each stage boundary."""

    def hold_in(self, session, result: dict[str, Any]) -> None:
        """Inside the transaction that records the found recipe's run."""

    def complete_in(self, session, outcome: dict[str, Any]) -> None:
        """Inside the transaction that records the search (the job's success)."""


def _stage(on_event: OnEvent | None, gate: Gate | None, stage: str, progress: float, message: str) -> None:
    if on_event is not None:
        on_event("stage", {"stage": stage, "progress": round(progress, 4), "message": message})
    if gate is not None:
        gate.boundary(stage)


def _search_events(on_event: OnEvent | None, gate: Gate | None, lo: float, hi: float):
    """The engine's SearchEvents as the search's stages, their progress scaled into [lo, hi]."""
    if on_event is None and gate is None:
        return None

    def forward(event: SearchEvent) -> None:
        _stage(on_event, gate, event.stage.value, lo + (hi - lo) * event.progress, event.message)

    return forward


def _run_events(on_event: OnEvent | None, gate: Gate | None, recorder: RunRecorder):
    """The found recipe's RunEvents as stages of the search ("run: baseline", ...)."""
    if on_event is None and gate is None:
        return None

    def forward(event: RunEvent) -> None:
        if event.stage is Stage.STARTED and on_event is not None:  # the registry run now exists: say which
            on_event("started", recorder.summary())
        if event.stage is not Stage.DONE:
            _stage(on_event, gate, f"run: {event.stage.value}", _FIND + (_RUN - _FIND) * event.progress, event.message)

    return forward


def run_config(cfg: DictConfig, recipe_path: Path) -> DictConfig:
    """The search's config with the found recipe in place of the composed one and no search section:
    what `qrecipe run recipe=PATH` with the same overrides composes."""
    node = OmegaConf.to_container(cfg, resolve=False)
    node.pop("search", None)
    node["recipe"] = OmegaConf.to_container(OmegaConf.load(recipe_path), resolve=False)
    return OmegaConf.create(node)


def _point_row(result: SearchResult, pt, measured: dict[str, Any] | None) -> dict[str, Any]:
    return {"label": pt.label, "weight_bytes": pt.weight_bytes, "bits_per_weight": pt.bits_per_weight,
            "predicted": result.predicted_figures(pt), "measured": measured, "chosen": pt.chosen, "mix": pt.mix()}


def search_and_record(cfg: DictConfig, on_event: OnEvent | None = None, progress: bool = True,
                      gate: Gate | None = None) -> dict[str, Any]:
    """Run a search (config composed with the search group) end to end; the outcome as plain data."""
    from qrecipe.engine.run import run

    start = time.monotonic()
    settings = load_settings(cfg)
    prepared = prepare(settings)  # a bad budget, candidate or output fails before any weights load
    engine = None
    if settings.registry.enabled:
        from .db import open_registry
        from .recorder import registry_url

        engine = open_registry(registry_url(settings))
    from .sensitivity_cache import RegistrySensitivityCache

    cache = RegistrySensitivityCache(engine) if engine is not None else MemoryCache()
    result = find(settings, cache, _search_events(on_event, gate, 0.0, _FIND), prepared)
    t_find = time.monotonic() - start

    run_result, t_run = None, 0.0
    if prepared.spec.run:
        t0 = time.monotonic()
        recorder = RunRecorder(before_commit=gate.hold_in if gate is not None else None)
        run_result = run(run_config(cfg, prepared.output), recorder=recorder, progress=progress,
                         on_event=_run_events(on_event, gate, recorder))
        t_run = time.monotonic() - t0
        result.chosen.measured = {k: run_result.metrics[k] for k in MEASURED_KEYS if k in run_result.metrics}
    t0 = time.monotonic()
    measure_points(settings, prepared, result.front + ([] if run_result else [result.chosen]),
                   _search_events(on_event, gate, _RUN, 1.0))
    t_front = time.monotonic() - t0

    points = [_point_row(result, pt, pt.measured) for pt in sorted([*result.front, result.chosen],
                                                                    key=lambda pt: pt.weight_bytes)]
    flat = [{"weight_bytes": p["weight_bytes"], **{k: (p["measured"] or {}).get(k) for k in (mn.KL_MEAN,
                                                                                             mn.PPL_DELTA_PCT)}}
            for p in points]
    for p, on_kl, on_ppl in zip(points, pareto(flat, mn.KL_MEAN), pareto(flat, mn.PPL_DELTA_PCT)):
        p["pareto_kl"], p["pareto_ppl"] = on_kl, on_ppl
    seconds = {"find": round(t_find, 2), "sensitivity": round(result.sensitivity_seconds, 2),
               "allocation": round(result.allocation_seconds, 3), "run": round(t_run, 2), "front": round(t_front, 2),
               "total": round(time.monotonic() - start, 2)}
    outcome: dict[str, Any] = {
        "recipe": prepared.name, "recipe_path": str(prepared.output), "model": prepared.info.model_id,
        "target": settings.target.name, "budget": {prepared.spec.budget.kind: prepared.spec.budget.value},
        "measure": prepared.measure, "candidates": [c.label for c in prepared.candidates],
        "predicted": result.predicted_figures(), "measured": result.chosen.measured, "points": points,
        "spearman": result.spearman, "spearman_pairs": result.spearman_pairs,
        "sensitivities": {"measured": result.computed, "cached": result.cached},
        "allocation_exact": result.exact, "seconds": seconds,
        "variant_id": run_result.extra.get("variant_id") if run_result else None,
        "run_number": run_result.extra.get("run_number") if run_result else None,
        "run_output_dir": str(run_result.output_dir) if run_result else None,
    }
    _stage(on_event, gate, RECORDING, 1.0, "recording the search ...")
    mlflow = _log_mlflow(settings, result, outcome) if settings.tracking.enabled else None
    outcome["mlflow_run_id"] = mlflow.run_id if mlflow is not None else None
    try:
        outcome["search_id"] = _record(engine, settings, result, outcome, gate) if engine is not None else None
    except BaseException as e:
        if mlflow is not None:
            mlflow.end("KILLED" if stopped(e) else "FAILED")
        raise
    if mlflow is not None:
        mlflow.end("FINISHED")
    return outcome


def _settings_record(settings: Settings, result: SearchResult) -> dict[str, Any]:
    p, c = result.prepared, settings.calib
    return {"candidates": [x.label for x in p.candidates], "measure": p.measure, "sensitivity": p.spec.sensitivity,
            "proxy": p.spec.proxy, "samples": p.spec.samples, "seq_len": p.spec.seq_len, "calib_data": c.data.name,
            "calib_seed": c.seed, "scope": result.scope_key, "units": len(p.units), "weights": p.numel,
            "eval_data": settings.eval.data.name, "eval_windows": settings.eval.windows,
            "eval_seq_len": settings.eval.seq_len}


def _record(engine, settings: Settings, result: SearchResult, outcome: dict[str, Any], gate: Gate | None) -> int:
    from .models import Search
    from .record import write_with_retry

    p = result.prepared

    def step(session) -> int:
        from sqlalchemy import select

        from .models import BaseModelRecord

        model = session.scalar(select(BaseModelRecord).where(BaseModelRecord.name == p.info.model_id))
        if model is None:
            model = BaseModelRecord(name=p.info.model_id, source=settings.model.path, model_type=p.info.model_type)
            session.add(model)
            session.flush()
        row = Search(base_model_id=model.id, target=settings.target.name, recipe_name=p.name,
                     recipe_path=str(p.output), budget=outcome["budget"], settings=_settings_record(settings, result),
                     predicted=outcome["predicted"], points=json.loads(json.dumps(outcome["points"], default=str)),
                     spearman=outcome["spearman"], seconds=outcome["seconds"], variant_id=outcome["variant_id"],
                     mlflow_run_id=outcome["mlflow_run_id"])
        session.add(row)
        session.flush()
        if gate is not None:  # a job: its success and this record in one transaction
            gate.complete_in(session, {**outcome, "search_id": row.id})
        return row.id

    return write_with_retry(engine, step)


def _table(points: list[dict[str, Any]]) -> dict[str, list]:
    cols: dict[str, list] = {k: [] for k in ("label", "chosen", "weight_bytes", "bits_per_weight", "predicted_kl",
                                             "measured_kl", "measured_ppl_delta_pct", "pareto_kl", "pareto_ppl", "mix")}
    for p in points:
        m = p["measured"] or {}
        for k, v in (("label", p["label"]), ("chosen", p["chosen"]), ("weight_bytes", p["weight_bytes"]),
                     ("bits_per_weight", p["bits_per_weight"]), ("predicted_kl", p["predicted"].get(mn.KL_MEAN)),
                     ("measured_kl", m.get(mn.KL_MEAN)), ("measured_ppl_delta_pct", m.get(mn.PPL_DELTA_PCT)),
                     ("pareto_kl", p["pareto_kl"]), ("pareto_ppl", p["pareto_ppl"]),
                     ("mix", ", ".join(f"{k2} x{v2}" for k2, v2 in p["mix"].items()))):
            cols[k].append(v)
    return cols


def _log_mlflow(settings: Settings, result: SearchResult, outcome: dict[str, Any]):
    """An MLflow run for the search in the model's experiment: its settings, predicted and
    measured figures, the Pareto plot and table, the recipe and the sensitivities. Left running:
    the caller ends it once the search is recorded (KILLED if a cancel stops that)."""
    from . import plots
    from .recorder import _start_mlflow
    from .tracking import flatten

    p = result.prepared
    tags = {"qrecipe.kind": "search", "qrecipe.recipe": p.name, "qrecipe.target": settings.target.name,
            "qrecipe.budget": p.spec.budget.describe()}
    if outcome["variant_id"]:
        tags["qrecipe.variant_id"] = outcome["variant_id"]
    mlflow = _start_mlflow(settings, p.info.model_id, f"search {p.name}", tags)
    try:
        mlflow.log_params({**flatten(_settings_record(settings, result), "search"),
                           **flatten(outcome["budget"], "search.budget"), "recipe_path": outcome["recipe_path"]})
        metrics = {mn.search_metric(mn.PREDICTED, k): v for k, v in outcome["predicted"].items()}
        metrics.update({mn.search_metric(mn.MEASURED, k): v for k, v in (outcome["measured"] or {}).items()})
        metrics.update({mn.search_metric(mn.SPEARMAN, k): v for k, v in outcome["spearman"].items()})
        metrics.update({f"seconds.{k}": v for k, v in outcome["seconds"].items()})
        metrics.update({"sensitivities.measured": result.computed, "sensitivities.cached": result.cached})
        mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            (folder / "recipe.yaml").write_text(result.recipe_text)
            (folder / "points.json").write_text(json.dumps(outcome["points"], indent=2, default=str))
            (folder / "sensitivities.json").write_text(json.dumps(
                [{"measure": m, "unit": u, "candidate": c, "value": v}
                 for (m, u, c), v in sorted(result.values.items())],
                indent=1))
            png = plots.pareto_front(outcome["points"], folder / "pareto.png",
                                     f"{p.info.model_id}: plans measured by search {p.name}")
            for f in (folder / "recipe.yaml", folder / "points.json", folder / "sensitivities.json"):
                mlflow.log_artifact(f, "search")
            mlflow.log_artifact(png, "plots")
        mlflow.client.log_table(mlflow.run_id, data=_table(outcome["points"]), artifact_file="search/pareto_table.json")
    except BaseException as e:
        mlflow.end("KILLED" if stopped(e) else "FAILED")
        raise
    return mlflow


def render(outcome: dict[str, Any]) -> str:
    """Predicted beside measured, then every plan the search measured."""
    pred, meas = outcome["predicted"], outcome["measured"] or {}
    budget = ", ".join(f"{k} {v:g}" for k, v in outcome["budget"].items())
    lines = [f"search {outcome['recipe']} for {outcome['model']} ({budget}): recipe {outcome['recipe_path']}",
             f"  {'':<22}{'predicted':>14}{'measured':>14}"]

    def row(name, a, b, spec):
        fa = "-" if a is None else format(a, spec)
        fb = "-" if b is None else format(b, spec)
        lines.append(f"  {name:<22}{fa:>14}{fb:>14}")

    row("bits per weight", pred.get(mn.BITS_PER_WEIGHT), None, ".4f")
    row("weight bytes (plan)", pred.get(mn.WEIGHT_BYTES), meas.get(mn.WEIGHT_BYTES), ",.0f")
    row("KL (mean)", pred.get(mn.KL_MEAN), meas.get(mn.KL_MEAN), ".5f")
    row("perplexity change %", pred.get(mn.PPL_DELTA_PCT), meas.get(mn.PPL_DELTA_PCT), "+.2f")
    if mn.OUTPUT_ERROR in pred:
        row("output error (proxy)", pred[mn.OUTPUT_ERROR], None, ".4g")
    lines.append("  (predicted on the calibration slice from per-unit sensitivities; measured on the eval text; the "
                 "measured weight bytes are the loaded model's, in its run dtype)")
    for k, v in outcome["spearman"].items():
        lines.append(f"  proxy {k}: Spearman {v:.3f} against exact KL over {outcome['spearman_pairs']} "
                     f"(unit, candidate) pairs")
    s = outcome["sensitivities"]
    lines.append(f"  sensitivities: {s['measured']} measured, {s['cached']} from the cache; seconds: " +
                 ", ".join(f"{k} {v:g}" for k, v in outcome["seconds"].items()))
    lines.append("")
    lines.append(points_table(outcome["points"]))
    if outcome.get("variant_id"):
        lines.append(f"\nvariant {outcome['variant_id']} (qrecipe variants show {outcome['variant_id']}); "
                     f"qrecipe variants compare --model {outcome['model']} shows this front")
    return "\n".join(lines)


def points_table(points: list[dict[str, Any]]) -> str:
    rows = []
    for p in points:
        m = p["measured"] or {}
        front = "+".join(x for x, on in (("KL", p.get("pareto_kl")), ("ppl", p.get("pareto_ppl"))) if on) or "-"
        rows.append([p["label"] + (" *" if p["chosen"] else ""), f"{p['bits_per_weight']:.3f}",
                     human_bytes(p["weight_bytes"]), _f(p["predicted"].get(mn.KL_MEAN), ".4f"),
                     _f(m.get(mn.KL_MEAN), ".4f"), _f(m.get(mn.PPL_DELTA_PCT), "+.2f"), front,
                     ", ".join(f"{k} x{v}" for k, v in p["mix"].items())])
    return text_table(["plan", "bits/w", "weights", "pred. KL", "KL", "ppl %", "front", "mix (units)"], rows)


def _f(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


__all__ = ["points_table", "render", "run_config", "search_and_record"]
