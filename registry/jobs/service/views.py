"""Jobs and variants as the JSON the service answers with."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from ..models import Job, JobAttempt


def _utc(value: datetime | None) -> datetime | None:
    """SQLite hands timestamps back without their zone; they were written in UTC."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _iso(value: datetime | None) -> str | None:
    value = _utc(value)
    return value.isoformat() if value else None


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None:
        return None
    return round(((_utc(end) or datetime.now(timezone.utc)) - _utc(start)).total_seconds(), 3)


def job_view(job: Job, attempts: list[JobAttempt] | None = None) -> dict[str, Any]:
    view = {
        "id": job.id, "status": job.status, "kind": job.kind, "priority": job.priority,
        "recipe": job.recipe, "model": job.model, "target": job.target, "overrides": job.overrides,
        "params": job.params, "stage": job.stage, "progress": round(job.progress or 0.0, 4),
        "attempts": job.attempts, "max_attempts": job.max_attempts, "cancel_requested": job.cancel_requested,
        "worker": job.worker_id, "error": job.error, "plan_hash": job.plan_hash,
        "expected_variant_id": job.expected_variant_id, "variant_id": job.variant_id, "run_number": job.run_number,
        "result": job.result, "submission": job.submission_id,
        "timings": {"created_at": _iso(job.created_at), "started_at": _iso(job.started_at),
                    "finished_at": _iso(job.finished_at), "heartbeat_at": _iso(job.heartbeat_at),
                    "queued_seconds": _seconds(job.created_at, job.started_at or job.finished_at),
                    "running_seconds": _seconds(job.started_at, job.finished_at)},
    }
    if attempts is not None:
        view["attempt_history"] = [{"number": a.number, "worker": a.worker_id, "outcome": a.outcome, "error": a.error,
                                    "started_at": _iso(a.started_at), "finished_at": _iso(a.finished_at)}
                                   for a in attempts]
    return view


def variant_view(v, runs: list | None = None) -> dict[str, Any]:
    view = {"id": v.id, "model": v.base_model.name, "recipe": v.recipe_name, "target": v.target,
            "recipe_hash": v.recipe_hash, "plan_hash": v.plan_hash, "scheme_mix": v.scheme_mix,
            "requires": v.requires, "status": v.status, "device": v.device, "runs_count": v.runs_count,
            "output_dir": v.output_dir, "mlflow_run_id": v.mlflow_run_id, "metrics": v.metrics,
            "created_at": _iso(v.created_at), "updated_at": _iso(v.updated_at)}
    if runs is not None:
        view["runs"] = [{"number": r.run_number, "status": r.status, "device": r.device, "output_dir": r.output_dir,
                         "mlflow_run_id": r.mlflow_run_id, "error": r.error, "started_at": _iso(r.started_at),
                         "finished_at": _iso(r.finished_at)} for r in runs]
    return view
